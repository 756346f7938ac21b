"""Garbage collection: unreferenced builds, build debris, unused package-cache entries, and the
packs of builds that are gone.

What is live:

* every build prefix a registry record references (all versions, not just the current one:
  rollback needs them), and every conda env found in the site's ``envs_dirs`` (name symlinks
  followed), hpcenv-made or not;
* a package-cache entry (``pkgs_dir/<name-version-build>/``) is in use when a live env's
  ``conda-meta`` record names it, or when one of its files has a hard link outside what this gc
  removes.  The records catch packages whose files were copied rather than linked (prefix
  rewriting, metapackages); the link count catches envs hpcenv does not know about, e.g. a
  user's own conda env sharing the cache through ``hpcenv site condarc`` (``conda clean``
  keeps those for the same reason).

Bytes freed are counted per inode, as ``du`` would: a file is freed only when every hard link
to it is among the paths removed, so removing a cache entry whose files still live in an env
frees nothing and is reported as such.  Only the first (hpcenv-written) ``pkgs_dir`` is cleaned.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hpcenv.engine.base import ARCHIVE_SUFFIXES
from hpcenv.records import JsonRecord, json_meta
from hpcenv.scheduler.build_use import BuildJob, BuildUseLookup
from hpcenv.store.debris import (
    builder_alive,
    clean_lock_places,
    find_debris,
    force_rmtree,
)
from hpcenv.store.layout import builds_dir, cache_lock, is_complete
from hpcenv.store.lifecycle import ask_build_use
from hpcenv.store.pack import orphan_packs

if TYPE_CHECKING:
    from hpcenv.store.layout import Store

ItemKind = Literal["build", "debris", "package", "pack"]


@dataclass(frozen=True)
class GcItem(JsonRecord):
    kind: ItemKind
    path: Path
    bytes: int   # disk bytes freed by removing this item (0 if its inodes live on elsewhere)
    files: int   # non-directory entries removed


@dataclass(frozen=True)
class RetiredRecord(JsonRecord):
    """A registry record of a build that never finished (failed, or its builder died), which
    gc retires so the name stops showing up as an environment."""

    name: str
    version: int
    status: str = field(metadata=json_meta(key="was"))   # what it was: "failed" or "building"
    error: str | None = None   # the failed build's one-line reason, when it recorded one


@dataclass(frozen=True)
class KeptBuild(JsonRecord):
    """An unreferenced build gc leaves because pending or running jobs still run in it."""

    path: Path
    jobs: tuple[BuildJob, ...]


@dataclass
class GcReport(JsonRecord):
    dry_run: bool
    removed: list[GcItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    retired: list[RetiredRecord] = field(default_factory=list)
    kept: list[KeptBuild] = field(default_factory=list)

    JSON_PROPERTIES = ("bytes_freed", "files_freed")

    @property
    def bytes_freed(self) -> int:
        return sum(item.bytes for item in self.removed)

    @property
    def files_freed(self) -> int:
        return sum(item.files for item in self.removed)



@dataclass(frozen=True)
class _Inode:
    nlink: int
    blocks: int


def _walk_files(path: Path) -> Iterable[tuple[tuple[int, int], _Inode]]:
    """(dev, ino) and link info of every non-directory entry under ``path`` (or ``path`` itself)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        yield (st.st_dev, st.st_ino), _Inode(st.st_nlink, st.st_blocks * 512)
        return
    for root, dirs, files in os.walk(path):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            yield (st.st_dev, st.st_ino), _Inode(st.st_nlink, st.st_blocks * 512)


class _LinkCounter:
    """Counts, per inode, how many of its links lie inside the set of paths to remove."""

    def __init__(self) -> None:
        self.inside: dict[tuple[int, int], int] = {}
        self.info: dict[tuple[int, int], _Inode] = {}

    def files_of(self, paths: Iterable[Path]) -> list[tuple[tuple[int, int], _Inode]]:
        return [entry for p in paths for entry in _walk_files(p)]

    def add(self, files: list[tuple[tuple[int, int], _Inode]]) -> None:
        for key, inode in files:
            self.inside[key] = self.inside.get(key, 0) + 1
            self.info[key] = inode

    def linked_outside(self, files: list[tuple[tuple[int, int], _Inode]]) -> bool:
        """True if some file would keep a link outside the removal set plus ``files``."""
        extra: dict[tuple[int, int], int] = {}
        for key, _ in files:
            extra[key] = extra.get(key, 0) + 1
        return any(inode.nlink > self.inside.get(key, 0) + extra[key] for key, inode in files)

    def freed_bytes(self, files: list[tuple[tuple[int, int], _Inode]],
                    counted: set[tuple[int, int]]) -> int:
        total = 0
        for key, inode in files:
            if key not in counted and self.inside.get(key, 0) >= inode.nlink:
                counted.add(key)
                total += inode.blocks
        return total


def _records(prefix: Path) -> Iterable[dict]:
    meta = prefix / "conda-meta"
    if not meta.is_dir():
        return
    for path in meta.glob("*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            yield data


def used_package_names(prefixes: Iterable[Path]) -> set[str]:
    """Cache-entry names (``name-version-build``) the conda-meta records of ``prefixes`` use."""
    names: set[str] = set()
    for prefix in prefixes:
        for record in _records(prefix):
            for source in (record.get("extracted_package_dir"),
                           (record.get("link") or {}).get("source")):
                if source:
                    names.add(Path(source).name)
            fn = record.get("fn") or ""
            for suffix in ARCHIVE_SUFFIXES:
                if fn.endswith(suffix):
                    names.add(fn[: -len(suffix)])
    return names


def conda_envs_in(envs_dirs: Iterable[Path]) -> set[Path]:
    """Resolved prefixes of the conda envs directly inside ``envs_dirs`` (symlinks followed)."""
    found: set[Path] = set()
    for envs_dir in envs_dirs:
        try:
            entries = list(Path(envs_dir).iterdir())
        except OSError:
            continue
        for entry in entries:
            if (entry / "conda-meta").is_dir():
                found.add(entry.resolve())
    return found


def cache_entries(pkgs_dir: Path) -> dict[str, list[Path]]:
    """Package-cache entries by name: the extracted dir plus its ``.lock`` and archives.

    Orphaned locks and archives (no extracted dir) are entries of their own.
    """
    entries: dict[str, list[Path]] = {}
    try:
        children = sorted(Path(pkgs_dir).iterdir())
    except OSError:
        return entries
    for child in children:
        name = child.name
        if name.startswith("."):
            continue  # rattler's .cache.lock and other bookkeeping
        if child.is_dir() and not child.is_symlink():
            if (child / "info").is_dir():
                entries.setdefault(name, []).append(child)
            continue
        for suffix in (".lock", *ARCHIVE_SUFFIXES):
            if name.endswith(suffix):
                entries.setdefault(name[: -len(suffix)], []).append(child)
                break
    return entries


def plan_and_collect(*, builds: Iterable[Path], debris: Iterable[Path], keep: Iterable[Path],
                     envs_dirs: Iterable[Path], pkgs_dir: Path | None,
                     dry_run: bool = False) -> GcReport:
    """Remove ``builds`` (unreferenced build prefixes) and ``debris``, then unused cache entries.

    ``keep`` are prefixes that stay live whatever else happens (the registry's).  Conda envs in
    ``envs_dirs`` other than the builds being removed are live too.
    """
    report = GcReport(dry_run=dry_run)
    kept = {Path(k).resolve() for k in keep}
    # A build that is also kept (a caller's race with a publish) is never removed.
    builds = [Path(b) for b in builds if Path(b).resolve() not in kept]
    debris = [Path(d) for d in debris if Path(d).resolve() not in kept]
    doomed = {p.resolve() for p in [*builds, *debris]}
    live = kept | (conda_envs_in(envs_dirs) - doomed)
    counter = _LinkCounter()
    plan: list[tuple[ItemKind, list[Path], list]] = []
    groups: tuple[tuple[ItemKind, list[Path]], ...] = (("build", builds), ("debris", debris))
    for kind, paths in groups:
        for path in paths:
            files = counter.files_of([path])
            counter.add(files)
            plan.append((kind, [path], files))
    if pkgs_dir is not None:
        used = used_package_names(live)
        for name, paths in cache_entries(pkgs_dir).items():
            if name in used:
                continue
            files = counter.files_of(paths)
            if counter.linked_outside(files):
                continue
            counter.add(files)
            plan.append(("package", paths, files))
    counted: set[tuple[int, int]] = set()
    for kind, paths, files in plan:
        item = GcItem(kind, paths[0], counter.freed_bytes(files, counted), len(files))
        if not dry_run:
            try:
                for path in paths:
                    if path.is_dir() and not path.is_symlink():
                        force_rmtree(path)
                    else:
                        path.unlink(missing_ok=True)
            except OSError as exc:
                report.errors.append(f"{paths[0]}: not removed ({exc.strerror or exc})")
                continue
        report.removed.append(item)
    return report


def collect_garbage(store: Store, *, dry_run: bool = False,
                    on_wait: Callable[[str], None] | None = None,
                    jobs_using: BuildUseLookup | None = None, force: bool = False,
                    on_warning: Callable[[str], None] | None = None) -> GcReport:
    """``hpcenv env gc``: what :func:`plan_and_collect` does, for a site's builds and cache.

    Live builds are those a ``ready`` or ``building`` registry record names (a build between
    its completion marker and its record turning ``ready`` is not garbage), except incomplete
    ones :func:`hpcenv.store.debris.find_debris` finds abandoned (their builder no longer holds its
    key lock): those are removed.  Records of builds that never finished (``failed``, or
    ``building`` with a dead builder and no complete prefix) are retired: they are history, not
    environments.  The package cache's :class:`~hpcenv.store.locking.CacheLock` is held exclusive
    throughout: installs hold it shared, so no install is linking from entries that no
    ``conda-meta`` record names yet (``on_wait(who)`` is called if gc has to wait, naming
    the holders).

    An unreferenced build a pending or running job (anyone's) runs in, as ``jobs_using`` says,
    stays with its packs and packages (``report.kept``); a later gc removes it once the jobs
    ended.  The scheduler is asked only when there are builds to remove; when it cannot be
    asked gc refuses before removing anything, unless ``force`` (``on_warning`` hears the risk).
    """
    pkgs_dir = store.pkgs_dir
    guard = (cache_lock(store, pkgs_dir, on_wait=on_wait).hold(
        exclusive=True, doing=f"env gc: cleaning the package cache {pkgs_dir}")
             if pkgs_dir is not None and pkgs_dir.is_dir() else nullcontext())
    with guard:
        registry = store.registry()
        records = list(registry.records())
        debris = find_debris(store, registry=registry)
        # A "building" record is live unless find_debris judged its builder dead.
        dead = {os.path.realpath(p) for p, _ in debris}
        keep = {Path(os.path.realpath(r.prefix)) for r in records
                if r.status == "ready" or (r.status == "building"
                                           and os.path.realpath(r.prefix) not in dead)}
        builds_root = builds_dir(store)
        builds = []
        if builds_root.is_dir():
            builds = [p for p in sorted(builds_root.iterdir()) if not p.name.startswith(".")
                      and is_complete(p) and Path(os.path.realpath(p)) not in keep]
        # Asked before anything is removed: a refusal leaves everything as it was.
        use = ask_build_use(jobs_using, force=force, what="unreferenced builds",
                            on_warning=on_warning) if builds else None
        kept = [KeptBuild(p, jobs) for p in builds if use is not None and (jobs := use.of(p))]
        keep |= {Path(os.path.realpath(k.path)) for k in kept}
        builds = [p for p in builds if Path(os.path.realpath(p)) not in keep]
        if not dry_run:
            clean_lock_places(store)
        report = plan_and_collect(builds=builds, debris=[p for p, _ in debris], keep=keep,
                                  envs_dirs=store.envs_dirs, pkgs_dir=pkgs_dir, dry_run=dry_run)
        report.kept = kept
        # Packs (``env pack``) of builds no live record names: the build is gone or going.
        for pack in orphan_packs(store, keep):
            item = GcItem("pack", pack, pack.stat().st_blocks * 512, 1)
            if not dry_run:
                try:
                    pack.unlink()
                except OSError as exc:
                    report.errors.append(f"{pack}: not removed ({exc.strerror or exc})")
                    continue
            report.removed.append(item)
        removed = {os.path.realpath(i.path) for i in report.removed}
        for record in records:
            unfinished = record.status == "failed" or (
                record.status == "building" and not is_complete(record.prefix)
                and not builder_alive(store, record))
            # A debris prefix gc could not remove keeps its record as the pointer to it.
            if not unfinished or (os.path.lexists(record.prefix)
                                  and os.path.realpath(record.prefix) not in removed):
                continue
            if not dry_run:
                registry.set_status(record.name, record.version, "retired")
            report.retired.append(RetiredRecord(record.name, record.version, record.status,
                                                record.error))
    return report
