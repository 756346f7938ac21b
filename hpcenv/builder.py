"""The locked builder: each environment is built once, verified, and published atomically.

Layout under the first ``envs_dir`` (``E``)::

    E/NAME -> .hpcenv/builds/NAME-V-KEY12        symlink: the current version (conda-activatable)
    E/.hpcenv/builds/NAME-V-KEY12/               one prefix per build (prefixes are not
                                                 relocatable, so each is installed in place)
    E/.hpcenv/builds/NAME-V-KEY12/.hpcenv-complete   completion marker, written last
    E/.hpcenv/locks/KEY.lock                     one build lock per key

**Key.**  sha256 of the env name, the normalised spec (:meth:`EnvSpec.normalized`), the platform,
the resolved channel URLs, the channel priority and the ``__cuda`` value the solve uses.  The
``__cuda`` value is always explicit (inferred from the spec, or ``--cuda X.Y``, or none with
``--no-cuda``), never detected, so the same spec resolves the same way on a GPU login node and a
GPU-less one; ``--cuda 12.4`` on a spec that infers 12.4 is the same build.  A ``--from-lock``
build keys on the lockfile's bytes instead of the spec.

**Build once.**  A ready build with the key in the registry is returned as ``reused`` without
taking any lock (the fast path: no rattler import, a few file reads).  Otherwise the builder
takes the key's :class:`~hpcenv.locking.BuildLock`; late arrivals wait (``on_progress`` gets a
``wait`` :class:`BuildEvent` "waiting for USER@HOST pid N since T") and then find the ready
build.  The lock holder:

1. cleans debris: builds without a completion marker whose key lock nobody holds (a crashed
   builder), marking their records ``failed``; a crashed builder's complete build (killed
   between the marker and the registry update) is marked ``ready`` and reused;
2. allocates a version in the registry (record status ``building``);
3. solves (or reads ``--from-lock``, converting an ``@EXPLICIT`` list to a lockfile first: the
   locked packages then say which CUDA the env needs),
   writes the lockfile into the registry, installs from it into the build prefix with the
   site's first ``pkgs_dir`` as package cache (hardlinks), holding the cache's
   :class:`~hpcenv.locking.CacheLock` shared so ``env gc`` cannot clean entries mid-install;
4. writes ``conda-meta/state`` (the spec's ``variables``), runs the ``pip:`` section with the
   env's own ``python -m pip`` and the site's pip settings;
5. verifies: every ``conda-meta`` record's files exist and the env's python runs from the prefix;
6. fixes modes: everything readable (rattler writes ``conda-meta/*.json`` 0600), nothing
   writable (an edit in a hardlinked env would corrupt the shared cache), group and setgid dirs
   per site ``permissions``; rattler's ``CACHEDIR.TAG`` is kept on purpose: prefixes are
   rebuilt from their lockfile, and backing up hardlinked prefixes would copy the cache;
7. writes the completion marker, marks the record ``ready``, and publishes: registry ``current``
   first (the source of truth), then the ``E/NAME`` symlink (a temp symlink renamed over it).

A crash at any step leaves the previous version current and its symlink untouched; the half
build is cleaned by the next builder (or ``env gc``).  A crash between the two publish steps
leaves ``current`` ahead of the symlink, both pointing at complete builds; the next build of
either spec (``reused`` checks the symlink too), a rollback or :func:`sync_link` repairs it,
and ``hpcenv run -n`` follows the registry meanwhile.  :func:`rollback`, :func:`remove_version`
and :func:`remove_env` change ``current`` the same way (:func:`_switch_current`), under the
registry's per-name lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hpcenv.engine.base import (
    CHANNEL_ERRORS,
    ChannelPriority,
    LockedPackage,
    channel_url,
    current_platform,
)
from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.fsutil import atomic_write_json, chgrp, ensure_shared_dir, group_id, user_at_host
from hpcenv.locking import BuildLock, CacheLock, LockHolder
from hpcenv.registry import EnvRecord, Registry
from hpcenv.spec import EnvSpec, validate_env_name

if TYPE_CHECKING:
    from hpcenv.engine.base import Engine
    from hpcenv.site import SiteConfig

MARKER = ".hpcenv-complete"
CACHE_LOCK = ".hpcenv-cache.lock"
KEY_SCHEMA = 1
_CUDA_RE = re.compile(r"^\d+(\.\d+){0,2}$")
_CUDA_DEP_RE = re.compile(r"^__cuda\s*>=\s*(\d+(?:\.\d+)?)")
_CUDA_DEP_NAME_RE = re.compile(r"^__cuda(?![\w.-])")



@dataclass(frozen=True)
class BuildEvent:
    """One progress report of a build: ``step`` (what it is doing now; a spinner may replace
    it with the next), ``wait`` (blocked on another process) or ``warning`` (the user should
    read it).  ``str()`` is the text, so callers that only print keep working."""

    kind: Literal["step", "wait", "warning"]
    text: str

    def __str__(self) -> str:
        return self.text


Progress = Callable[[BuildEvent], None]


@dataclass(frozen=True)
class _Reporter:
    """``on_progress`` with one method per event kind."""

    callback: Progress | None

    def step(self, text: str) -> None:
        if self.callback is not None:
            self.callback(BuildEvent("step", text))

    def wait(self, text: str) -> None:
        if self.callback is not None:
            self.callback(BuildEvent("wait", text))

    def warn(self, text: str) -> None:
        if self.callback is not None:
            self.callback(BuildEvent("warning", text))


@dataclass(frozen=True)
class BuildResult:
    record: EnvRecord
    status: Literal["built", "reused"]
    waited: bool = False                  # waited for another builder's lock
    seconds: float = 0.0
    warnings: tuple[str, ...] = field(default=())
    # Whether this call moved the name's ``current`` to this version, and what was current
    # before (None: nothing): a reuse of an older spec silently undoing a rollback would be a
    # surprise, so callers report it.
    made_current: bool = False
    previous_current: int | None = None

    @property
    def prefix(self) -> Path:
        return Path(self.record.prefix)

    @property
    def current_note(self) -> str | None:
        """"current version is now V (was P)" when this call moved ``current`` off another
        version; None otherwise."""
        if not self.made_current or self.previous_current in (None, self.record.version):
            return None
        return (f"current version is now {self.record.version} "
                f"(was {self.previous_current})")

    def to_dict(self) -> dict[str, object]:
        """The ``env build --json`` object."""
        r = self.record
        return {"name": r.name, "version": r.version, "key": r.key, "prefix": r.prefix,
                "status": self.status, "cuda": r.cuda, "cuda_override": r.cuda_override,
                "lock": r.lock_path, "waited": self.waited, "seconds": round(self.seconds, 3),
                "warnings": list(self.warnings), "made_current": self.made_current,
                "previous_current": self.previous_current}


@dataclass(frozen=True)
class BuildPlan:
    """What a build would be, computed without touching anything."""

    name: str
    key: str
    platform: str
    channels: tuple[str, ...]
    channel_priority: ChannelPriority
    cuda: str            # the __cuda value for the solve; "" = none
    cuda_override: str | None
    notes: tuple[str, ...] = ()
    gpu_required: bool | None = None   # see resolve_cuda


# --- paths ------------------------------------------------------------------------------------

def envs_dir(site: SiteConfig) -> Path:
    return Path(site.envs_dirs[0])


def builds_dir(site: SiteConfig) -> Path:
    return envs_dir(site) / ".hpcenv" / "builds"


def locks_dir(site: SiteConfig) -> Path:
    return envs_dir(site) / ".hpcenv" / "locks"


def env_link(site: SiteConfig, name: str) -> Path:
    return envs_dir(site) / name


def key_lock(site: SiteConfig, key: str, *, on_wait: Callable[[LockHolder | None], None] | None = None,
             timeout: float | None = None) -> BuildLock:
    """The build lock of ``key`` with the site's lock settings."""
    return BuildLock(locks_dir(site) / f"{key}.lock", method=site.locks.method,
                     timeout=site.locks.timeout if timeout is None else timeout,
                     stale_after=site.locks.stale_after, on_wait=on_wait,
                     dir_mode=site.permissions.dir_mode, group=site.permissions.group)


def cache_lock(site: SiteConfig, pkgs_dir: Path, *,
               on_wait: Callable[[], None] | None = None) -> CacheLock:
    """The lock that keeps ``env gc`` out of ``pkgs_dir`` while installs link from it."""
    return CacheLock(Path(pkgs_dir) / CACHE_LOCK, method=site.locks.method,
                     timeout=site.locks.timeout, stale_after=site.locks.stale_after,
                     on_wait=on_wait, dir_mode=site.permissions.dir_mode,
                     group=site.permissions.group)


def is_complete(prefix: Path | str) -> bool:
    """Whether ``prefix`` is a finished build (its completion marker exists)."""
    return (Path(prefix) / MARKER).is_file()


# --- planning ---------------------------------------------------------------------------------

def resolve_channels(spec: EnvSpec | None, site: SiteConfig) -> tuple[str, ...]:
    """Channels as conda uses them: the spec's, then the site's (unless the spec says
    ``nodefaults``), each mapped through the site's ``mirrors`` and made a URL; duplicates dropped."""
    from hpcenv.site import resolve_channel

    listed = list(spec.channels) if spec is not None else []
    if "nodefaults" not in listed:
        listed += list(site.channels)
    out: list[str] = []
    for channel in listed:
        if channel == "nodefaults":
            continue
        url = channel_url(resolve_channel(site, channel))
        if url not in out:
            out.append(url)
    if not out:
        where = spec.source if spec is not None and spec.source else "<environment.yml>"
        raise InvalidInput(f"{where}: no channels to solve from; add 'channels:' to the file or "
                           "to the site config")
    return tuple(out)


def resolve_cuda(spec: EnvSpec | None,
                 cuda_override: str | None) -> tuple[str, tuple[str, ...], bool | None]:
    """The ``__cuda`` value for the solve ("" = none), notes explaining the choice, and whether
    the env needs a GPU (``--cuda``: yes, ``--no-cuda``: no, else :func:`infer_cuda`'s
    ``gpu_required``, which is also True for GPU specs naming no CUDA, e.g. ROCm)."""
    if cuda_override is not None:
        if cuda_override and not _CUDA_RE.match(cuda_override):
            raise InvalidInput(f"--cuda {cuda_override!r}: give a CUDA version like 12.4 "
                               "(or --no-cuda)")
        return cuda_override, ((f"CUDA {cuda_override} (--cuda)",) if cuda_override
                               else ("no CUDA (--no-cuda)",)), bool(cuda_override)
    if spec is None:
        return "", (), None
    from hpcenv.cuda import infer_cuda

    req = infer_cuda(spec)
    evidence = f" from {'; '.join(req.evidence[:2])}" if req.evidence else ""
    if req.cuda:
        note = f"CUDA {req.cuda} inferred{evidence}"
        if req.ambiguous and len(req.candidates) > 1:
            note += f" (candidates {', '.join(req.candidates)}; pass --cuda X.Y to choose)"
        return req.cuda, (note,), req.gpu_required
    if req.gpu_required and req.candidates:
        from hpcenv.drivers import version_key

        best = max(req.candidates, key=version_key)
        return best, (f"CUDA {best} chosen among {', '.join(req.candidates)}{evidence}; pass "
                      "--cuda X.Y to choose another",), True
    if req.gpu_required:
        return "", (f"the spec needs a GPU{evidence} but names no CUDA version: building "
                    "without __cuda; pass --cuda X.Y for CUDA builds",), True
    return "", (), req.gpu_required


def build_key(*, name: str, content: dict[str, object], platform: str, channels: Sequence[str],
              channel_priority: str, cuda: str) -> str:
    blob = json.dumps({"schema": KEY_SCHEMA, "name": name, "content": content,
                       "platform": platform, "channels": list(channels),
                       "channel_priority": channel_priority, "cuda": cuda},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def cuda_of_packages(packages: Sequence[LockedPackage]) -> str | None:
    """The CUDA an exact package set is built for, or None when no package needs ``__cuda``.

    Only a dependency on ``__cuda`` makes a package a CUDA build (conda-forge's CUDA variants
    have one; their CPU builds do not): a ``cuda-version`` package alone only constrains
    ``__cuda`` where there is one, so a CPU build of a spec pinning ``cuda-version`` needs no
    GPU.  Given a CUDA build, the version is the ``cuda-version`` package's, else the highest
    ``__cuda >=X.Y`` bound, else None (a bare ``__cuda`` names no version).  What a
    ``--from-lock`` build records instead of a solve's ``__cuda``."""
    from hpcenv.drivers import version_key

    if not any(_CUDA_DEP_NAME_RE.match(dep.strip()) for package in packages
               for dep in package.depends):
        return None
    for package in packages:
        if package.name == "cuda-version":
            return ".".join(package.version.split(".")[:2])
    bounds = [m.group(1) for package in packages for dep in package.depends
              if (m := _CUDA_DEP_RE.match(dep.strip()))]
    return max(bounds, key=version_key) if bounds else None


def plan_build(spec: EnvSpec | None, site: SiteConfig, *, name: str | None = None,
               cuda_override: str | None = None, from_lock: Path | None = None) -> BuildPlan:
    """Name, key, channels and CUDA of a build; validates the name (InvalidInput)."""
    if name is not None:
        try:
            validate_env_name(name)
        except InvalidInput as exc:
            raise InvalidInput(f"--name {name!r}: {exc}") from None
    chosen = name if name is not None else (spec.name if spec is not None else None)
    if not chosen:
        if spec is None:
            raise InvalidInput(f"--from-lock {from_lock}: a lockfile names no env; pass "
                               "--name NAME")
        raise InvalidInput(f"{spec.source or '<environment.yml>'}: no 'name:' in the file; "
                           "pass --name NAME")
    validate_env_name(chosen)
    from hpcenv.site import check_env_name

    check_env_name(site, chosen)
    platform = current_platform()
    if from_lock is not None:
        try:
            lock_digest = hashlib.sha256(Path(from_lock).read_bytes()).hexdigest()
        except OSError as exc:
            raise InvalidInput(f"{from_lock}: cannot read lockfile ({exc.strerror})") from None
        content: dict[str, object] = {"lock": lock_digest,
                                      "pip": spec.normalized()["pip"] if spec else None,
                                      "variables": spec.normalized()["variables"] if spec else None}
        cuda = cuda_override or ""
        notes: tuple[str, ...] = ()
        # The locked packages decide (see _packages_for); only --cuda X says more up front.
        gpu_required: bool | None = True if cuda_override else None
        channels: tuple[str, ...] = ()
    else:
        if spec is None:
            raise InvalidInput("nothing to build: give an environment file or --from-lock LOCK")
        content = spec.normalized()
        channels = resolve_channels(spec, site)
        cuda, notes, gpu_required = resolve_cuda(spec, cuda_override)
    key = build_key(name=chosen, content=content, platform=platform, channels=channels,
                    channel_priority=site.channel_priority, cuda=cuda)
    return BuildPlan(name=chosen, key=key, platform=platform, channels=channels,
                     channel_priority=site.channel_priority, cuda=cuda,
                     cuda_override=cuda_override, notes=notes, gpu_required=gpu_required)


# --- build ------------------------------------------------------------------------------------

def build_env(spec: EnvSpec | None, site: SiteConfig, *, name: str | None = None,
              cuda_override: str | None = None, from_lock: Path | None = None,
              engine: Engine | None = None, on_progress: Progress | None = None,
              make_current: bool = True) -> BuildResult:
    """Build ``spec`` (or recreate ``from_lock``) once, publish it, and return its record.

    ``from_lock``: a lockfile (hpcenv's, conda-lock/pixi) or an ``@EXPLICIT`` list, which is
    first turned into a lockfile (:func:`hpcenv.export.lock_from_explicit`).
    ``cuda_override``: None = infer from the spec, "" = no ``__cuda``, "12.4" = ``__cuda=12.4``.
    ``make_current``: make the built or reused version the current version of ``name``
    (building a spec means "I want this"; the result's ``made_current``/``previous_current``
    say whether that moved ``current``, e.g. undid a rollback).  False only ensures the build
    exists and never moves an existing ``current`` (``submit`` of a shared env); a name's first
    ready build still becomes current then, as there is nothing to move.
    ``on_progress`` receives :class:`BuildEvent` objects.
    """
    started = time.monotonic()
    report = _Reporter(on_progress)
    if from_lock is not None:
        from_lock = _lockfile_for(Path(from_lock), site, cuda_override, engine, report, name)
    plan = plan_build(spec, site, name=name, cuda_override=cuda_override, from_lock=from_lock)
    registry = Registry.for_site(site)
    _check_link_is_ours(site, plan.name)

    def reuse(record: EnvRecord, waited: bool) -> BuildResult | None:
        if not is_complete(record.prefix):
            return None
        previous = registry.current_version(plan.name)
        moved = False
        # The link check heals a builder killed between the two publish steps.
        if (make_current or previous is None) and (
                previous != record.version or not link_points_to(site, plan.name, record.prefix)):
            previous = publish(site, registry, record, only_if_none=not make_current)
            moved = previous != record.version and (make_current or previous is None)
        return BuildResult(record, "reused", waited, time.monotonic() - started,
                           made_current=moved, previous_current=previous)

    found = registry.find_ready(plan.key, plan.name)
    if found is not None and (result := reuse(found, False)) is not None:
        return result

    waited = False

    def on_wait(holder: LockHolder | None) -> None:
        nonlocal waited
        waited = True
        who = holder.describe() if holder else "another builder"
        report.wait(f"waiting for {who} (building {plan.name}, key {plan.key[:12]})")

    with key_lock(site, plan.key, on_wait=on_wait):
        # Debris first: it also adopts a finished build whose builder died before marking it
        # ready, which the lookup below then reuses.
        for path in clean_debris(site, registry=registry, held_key=plan.key):
            report.warn(f"removed debris of a crashed build: {path}")
        found = registry.find_ready(plan.key, plan.name)
        if found is not None:
            if (result := reuse(found, waited)) is not None:
                return result
            registry.set_status(found.name, found.version, "failed")  # marker gone: rebuild
        for note in plan.notes:
            report.step(note)
        engine = engine or _engine_for(site)
        record, warnings = _build_locked(spec, site, plan, registry, engine, from_lock, report)
        previous = publish(site, registry, record, only_if_none=not make_current)
    return BuildResult(record, "built", waited, time.monotonic() - started, tuple(warnings),
                       made_current=make_current or previous is None,
                       previous_current=previous)


def _engine_for(site: SiteConfig) -> Engine:
    from hpcenv.engine.base import get_engine

    return get_engine(site)


def _lockfile_for(path: Path, site: SiteConfig, cuda_override: str | None,
                  engine: Engine | None, report: _Reporter, name: str | None) -> Path:
    """``path`` itself when it is a lockfile; the lockfile made from it when it is an
    ``@EXPLICIT`` list (cached by content under the site's ``state_dir``)."""
    from hpcenv.export import is_explicit_list, lock_from_explicit

    if not path.is_file():
        raise InvalidInput(f"--from-lock {path}: no such file; give a lockfile or an @EXPLICIT "
                           f"list ('hpcenv env export {name or 'NAME'} --lock' or "
                           "'--explicit')")
    if not is_explicit_list(path):
        return path
    report.step(f"reading @EXPLICIT list {path}")
    return lock_from_explicit(path, site, cuda_override=cuda_override, engine=engine)


def _build_locked(spec: EnvSpec | None, site: SiteConfig, plan: BuildPlan, registry: Registry,
                  engine: Engine, from_lock: Path | None,
                  report: _Reporter) -> tuple[EnvRecord, list[str]]:
    # Solve (or read the lock) before allocating a version: a spec that cannot be built leaves
    # nothing behind, not even a failed record.
    packages, channels, cuda, pinned = _packages_for(spec, plan, engine, from_lock, report)
    creator = user_at_host()
    builds = builds_dir(site)
    ensure_shared_dir(builds, mode=site.permissions.dir_mode, group=site.permissions.group)
    recorded = pinned if pinned is not None else spec
    # From a lock, packages built for a CUDA prove the env needs a GPU; a lock without any
    # proves nothing (ROCm, or CPU): keep what the plan knew.
    gpu_required = True if from_lock is not None and cuda else plan.gpu_required
    record = registry.allocate(plan.name, lambda version: EnvRecord(
        name=plan.name, version=version, key=plan.key,
        spec=recorded.normalized() if recorded is not None else {},
        spec_hash=recorded.content_hash() if recorded is not None else "",
        lock_path=str(registry.lock_file(plan.name, version)),
        prefix=str(builds / f"{plan.name}-{version}-{plan.key[:12]}"),
        cuda=cuda, cuda_override=plan.cuda_override, channels=list(channels),
        platform=plan.platform, status="building", creator=creator,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        channel_priority=plan.channel_priority, engine=engine.name,
        source=str(spec.source) if spec is not None and spec.source else None,
        from_lock=str(Path(from_lock).resolve()) if from_lock is not None else None,
        gpu_required=gpu_required))
    prefix = Path(record.prefix)
    warnings: list[str] = []
    try:
        # The engine writes where it likes; the registry stores it with the lab's mode/group.
        with tempfile.TemporaryDirectory(prefix="hpcenv-lock-") as scratch:
            written = Path(scratch) / "lock.yml"
            engine.write_lock(written, plan.name, packages, channels, plan.platform)
            registry.write_lockfile(record.name, record.version, written.read_text())
        report.step(f"installing {len(packages)} packages into {prefix}")
        pkgs_dir = Path(site.pkgs_dirs[0])
        ensure_shared_dir(pkgs_dir, mode=site.permissions.dir_mode, group=site.permissions.group)
        with cache_lock(site, pkgs_dir, on_wait=lambda: report.wait(
                "waiting for 'hpcenv env gc' to finish with the package cache")).hold(
                exclusive=False):
            engine.install(prefix, packages, pkgs_dir=pkgs_dir)
        if spec is not None and spec.variables:
            _write_state(prefix, dict(spec.variables))
        if spec is not None and spec.pip:
            report.step(f"pip: installing {len(spec.pip)} entries with the env's python")
            _pip_install(prefix, spec, site)
        _verify(prefix, packages)
        warning = _same_fs_warning(prefix, pkgs_dir)
        if warning:
            warnings.append(warning)
            report.warn(warning)
        size, count = _usage(prefix)
        _fix_modes(prefix, site)
        _write_marker(prefix, record)
        record = registry.update(replace(record, status="ready", size_bytes=size,
                                         file_count=count, packages=len(packages)))
    except BaseException:
        try:
            registry.set_status(record.name, record.version, "failed")
        finally:
            force_rmtree(prefix)
        raise
    return record, warnings


def _culprit_line(spec: EnvSpec, message: str) -> str:
    """``:LINE`` of the dependency a solver error names ("" when it names none we can tell)."""
    for index, entry in enumerate(spec.conda):
        name = re.split(r"[\s=<>!~\[]", entry.split("::")[-1], maxsplit=1)[0]
        if (f"'{entry}'" in message or re.search(rf"\bfor {re.escape(name)}\b", message)) \
                and index < len(spec.conda_lines):
            return f":{spec.conda_lines[index]}"
    return ""


def _packages_for(spec: EnvSpec | None, plan: BuildPlan, engine: Engine, from_lock: Path | None,
                  report: _Reporter) -> tuple[list[LockedPackage], tuple[str, ...], str | None,
                                          EnvSpec | None]:
    """The exact packages of a build, its channels, the CUDA to record and, for a
    ``--from-lock`` build without a spec, the pinned spec that stands for it."""
    pinned = None
    if from_lock is not None:
        report.step(f"reading {from_lock}")
        packages = engine.read_lock(Path(from_lock), platform=plan.platform)
        channels = tuple(sorted({p.channel.rstrip("/") for p in packages if p.channel}))
        locked_cuda = cuda_of_packages(packages)
        if locked_cuda is not None:
            report.step(f"CUDA {locked_cuda} from the locked packages")
            if plan.cuda_override == "":
                report.warn(f"--no-cuda ignored: {from_lock} holds CUDA {locked_cuda} builds")
        # No solve: the packages, not a guess, say what CUDA the env needs (routing reads it).
        cuda = locked_cuda or plan.cuda or None
        if spec is None:
            pinned = EnvSpec(name=plan.name, channels=channels,
                             conda=tuple(p.spec for p in packages), pip=(), variables=(),
                             source=None)
    else:
        assert spec is not None  # plan_build refuses a build with neither
        channels, cuda = plan.channels, plan.cuda or None
        report.step(f"solving {len(spec.conda)} specs against {', '.join(channels)}")
        try:
            packages = engine.solve(list(spec.conda), channels=channels, platform=plan.platform,
                                    cuda=plan.cuda, channel_priority=plan.channel_priority)
        except CHANNEL_ERRORS:
            raise  # about a channel, not the spec: the engine's line says what to do
        except HpcenvError as exc:
            cuda_note = f", __cuda={plan.cuda}" if plan.cuda else ", no __cuda"
            raise type(exc)(f"{spec.source or '<environment.yml>'}{_culprit_line(spec, str(exc))}"
                            f": {exc} (channels searched: "
                            f"{', '.join(channels)}{cuda_note}); fix the spec or the channels"
                            ) from None
    if spec is not None and spec.pip and not any(p.name == "python" for p in packages):
        line = f":{spec.pip_lines[0]}" if spec.pip_lines else ""
        raise InvalidInput(f"{spec.source or '<environment.yml>'}{line}: a pip: section needs "
                           "python in the environment; add 'python' (and 'pip') to "
                           "dependencies")
    return packages, channels, cuda, pinned


def _check_link_is_ours(site: SiteConfig, name: str) -> None:
    link = env_link(site, name)
    if link.exists() and not link.is_symlink():
        raise HpcenvError(f"{link} exists and is not an hpcenv-managed symlink (a conda env made "
                          f"some other way?); move it away or build under another --name")


def _write_state(prefix: Path, env_vars: dict[str, str]) -> None:
    """Spec ``variables`` as conda stores them (``conda env config vars``)."""
    from hpcenv.activation import env_state_vars

    state = prefix / "conda-meta" / "state"
    state.write_text(json.dumps({"env_vars": env_vars}, indent=2) + "\n")
    env_state_vars(prefix)  # read back as activation will: a name no shell accepts fails here


def _pip_install(prefix: Path, spec: EnvSpec, site: SiteConfig) -> None:
    python = prefix / "bin" / "python"
    cmd = [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
           "--no-warn-script-location"]
    if site.pip.no_index:
        cmd.append("--no-index")
    if site.pip.wheel_dir is not None:
        cmd += ["--find-links", str(site.pip.wheel_dir)]
    if site.pip.index_url:
        cmd += ["--index-url", site.pip.index_url]
    for url in site.pip.extra_index_urls:
        cmd += ["--extra-index-url", url]
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_REQUIRE_VIRTUALENV", "PYTHONPATH",
                                                            "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    # conda runs pip on a requirements file next to the env file, so relative -r/-e paths work.
    cwd = spec.source.parent if spec.source is not None else None
    with tempfile.TemporaryDirectory(prefix="hpcenv-pip-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text("".join(f"{line}\n" for line in spec.pip))
        proc = subprocess.run([*cmd, "-r", str(requirements)], cwd=cwd, env=env,
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).strip().splitlines()
        errors = [line.strip() for line in output if line.startswith("ERROR")]
        reason = (errors or output or ["no output"])[0]
        if "No module named pip" in proc.stderr:
            reason += "; add 'pip' to the conda dependencies"
        line = f":{spec.pip_lines[0]}" if spec.pip_lines else ""
        raise HpcenvError(f"{spec.source or '<environment.yml>'}{line}: pip install failed: "
                          f"{reason}")


def _verify(prefix: Path, packages: Sequence[LockedPackage]) -> None:
    meta = prefix / "conda-meta"
    installed: set[str] = set()
    for path in sorted(meta.glob("*.json")):
        record = json.loads(path.read_text())
        installed.add(record.get("name", ""))
        for rel in record.get("files") or []:
            if not os.path.lexists(prefix / rel):
                raise HpcenvError(f"{prefix}: file {rel} of {record.get('name')} is missing "
                                  "after install; the package cache may be damaged (run "
                                  "'hpcenv env gc' and build again)")
    missing = sorted({p.name for p in packages} - installed)
    if missing:
        raise HpcenvError(f"{prefix}: no conda-meta record for {', '.join(missing)} after install")
    if "python" in installed:
        proc = subprocess.run([str(prefix / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                              capture_output=True, text=True, check=False, timeout=120,
                              env={**os.environ, "PYTHONNOUSERSITE": "1"})
        reported = proc.stdout.strip()
        if proc.returncode != 0 or os.path.realpath(reported) != os.path.realpath(prefix):
            detail = (proc.stderr.strip().splitlines() or [reported or "no output"])[-1]
            raise HpcenvError(f"{prefix}: the env's python does not run from its prefix: {detail}")


def _same_fs_warning(prefix: Path, pkgs_dir: Path) -> str | None:
    if prefix.stat().st_dev == pkgs_dir.stat().st_dev:
        return None
    return (f"package cache {pkgs_dir} and envs {prefix.parent} are on different filesystems: "
            "files were copied, not hardlinked; put pkgs_dirs and envs_dirs on one filesystem")


def _usage(prefix: Path) -> tuple[int, int]:
    """Apparent bytes (each inode once) and number of non-directory entries under ``prefix``."""
    seen: set[int] = set()
    size = count = 0
    for root, dirs, files in os.walk(prefix):
        for entry in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            st = os.lstat(os.path.join(root, entry))
            count += 1
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                size += st.st_size
    return size, count


def _fix_modes(prefix: Path, site: SiteConfig) -> None:
    """Readable by all (group/other per site), writable by nobody; group + setgid if configured."""
    gid = group_id(site.permissions.group)
    setgid = stat.S_ISGID if gid is not None else 0
    for root, dirs, files in os.walk(prefix, topdown=False):
        for entry in files + dirs:
            path = os.path.join(root, entry)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            if gid is not None and st.st_gid != gid:
                chgrp(path, gid)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                new = (mode | 0o555 | setgid) & ~0o222
            else:
                new = (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & ~0o222
            if new != mode:
                os.chmod(path, new)
    if gid is not None:
        chgrp(prefix, gid)


def _write_marker(prefix: Path, record: EnvRecord) -> None:
    """The completion marker, then the prefix root made read-only too (the very last step)."""
    data = {"name": record.name, "version": record.version, "key": record.key,
            "completed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(prefix / MARKER, data, mode=0o444)
    mode = stat.S_IMODE(prefix.stat().st_mode)
    os.chmod(prefix, (mode | 0o555) & ~0o222)


def force_rmtree(path: Path) -> None:
    """Remove a (possibly read-only) build prefix; missing is fine."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
        return
    if not path.exists():
        return

    def make_writable_and_retry(func: Callable[[str], object], failed: str, _info: object) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IMODE(os.lstat(failed).st_mode) | 0o700)
        func(failed)

    # Unlock directories first: rmtree cannot even list a dir we made read-only for ourselves.
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | 0o700)
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o700)
    shutil.rmtree(path, onerror=make_writable_and_retry)


# --- publishing, rollback, removal ------------------------------------------------------------

def publish(site: SiteConfig, registry: Registry, record: EnvRecord, *,
            only_if_none: bool = False) -> int | None:
    """Make ``record`` the current version: registry first, then the ``envs_dir/NAME`` symlink.
    Returns the version current before (None: none).  ``only_if_none``: change nothing when
    another version is current (decided under the name lock, so two publishers cannot race)."""
    with registry.name_lock(record.name):
        previous = registry.current_version(record.name)
        if only_if_none and previous is not None:
            return previous
        _switch_current(site, registry, record.name, record)
    return previous


def _switch_current(site: SiteConfig, registry: Registry, name: str,
                    record: EnvRecord | None) -> None:
    """Make ``record`` (None: nothing) current: the registry's ``current`` first (the source of
    truth), then the ``envs_dir/NAME`` symlink.  The caller holds the registry's name lock."""
    registry.set_current(name, record.version if record is not None else None)
    _point_link(site, name, Path(record.prefix) if record is not None else None)


def link_points_to(site: SiteConfig, name: str, prefix: Path | str) -> bool:
    """Whether ``envs_dir/NAME`` is a symlink resolving to ``prefix``."""
    link = env_link(site, name)
    return link.is_symlink() and os.path.realpath(link) == os.path.realpath(prefix)


def _point_link(site: SiteConfig, name: str, prefix: Path | None) -> None:
    """Switch ``envs_dir/NAME``; the caller holds the registry's name lock."""
    link = env_link(site, name)
    # Under the name lock a temp link is always a killed publisher's leftover.
    for stale in link.parent.glob(f".{name}.link-*"):
        stale.unlink(missing_ok=True)
    if prefix is None:
        if link.is_symlink():
            link.unlink()
        return
    _check_link_is_ours(site, name)
    target = os.path.relpath(prefix, link.parent)
    tmp = link.with_name(f".{name}.link-{os.getpid()}-{secrets.token_hex(4)}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sync_link(site: SiteConfig, name: str) -> Path | None:
    """Rewrite ``envs_dir/NAME`` from the registry's current version (repairs a crash between the
    two publish steps); returns the prefix it points at."""
    registry = Registry.for_site(site)
    with registry.name_lock(name):
        current = registry.current(name)
        prefix = Path(current.prefix) if current is not None else None
        _point_link(site, name, prefix)
    return prefix


def rollback(site: SiteConfig, name: str, to_version: int | None = None) -> EnvRecord:
    """Make an earlier ready version current (default: the newest ready one before current)."""
    registry = Registry.for_site(site)
    _require_env(registry, name)
    with registry.name_lock(name):
        current = registry.current_version(name)
        if to_version is None:
            if current is None:
                raise NotFound(f"environment {name!r} has no current version to roll back from; "
                               f"pick one with --to VERSION (see 'hpcenv env history {name}')")
            older = [r for r in registry.versions(name) if r.version < current
                     and r.status == "ready" and is_complete(r.prefix)]
            if not older:
                raise HpcenvError(f"{name}: no ready version older than {current} to roll back "
                                  f"to; see 'hpcenv env history {name}'")
            record = older[-1]
        else:
            record = registry.get(name, to_version)
            if record.status != "ready" or not is_complete(record.prefix):
                raise HpcenvError(f"{name} version {to_version} is {record.status}, not a "
                                  "ready build; pick another with 'hpcenv env history "
                                  f"{name}' or rebuild it with --from-lock {record.lock_path}")
        _switch_current(site, registry, name, record)
    return record


def _require_env(registry: Registry, name: str) -> list[EnvRecord]:
    """Every record of ``name``; NotFound naming the registry when it has none."""
    versions = registry.versions(name)
    if not versions:
        raise NotFound(f"no environment {name!r} in the registry {registry.root}; "
                       "see 'hpcenv env list'")
    return versions


def _usable(record: EnvRecord) -> bool:
    return record.status == "ready" and is_complete(record.prefix)


def remove_version(site: SiteConfig, name: str, version: int, *, force: bool = False) -> EnvRecord:
    """Retire ``version`` of ``name`` and delete its prefix; refuses the current one unless
    ``force`` (then the newest other ready version becomes current, or none), and a version
    whose builder is still at work.  A ``failed`` version, or a ``building`` one whose builder
    died (Ctrl-C, a killed job), is retired like any other.

    Each version has its own prefix, so deleting one never removes a file another version uses:
    files shared through the package cache are hardlinks and only lose one link; a prefix that
    another live record also names is kept.  The record and its lockfile stay as history
    (status ``retired``).
    """
    registry = Registry.for_site(site)
    record = registry.get(name, version)
    lock = key_lock(site, record.key, timeout=0)
    if not lock.try_acquire():
        if registry.get(name, version).status == "building":
            raise HpcenvError(f"{name} version {version} is still being built; wait for it "
                              f"('hpcenv env history {name}' shows when it is ready)")
        lock = key_lock(site, record.key)  # a builder of another version of this key: wait
        lock.acquire()
    try:
        with registry.name_lock(name):
            record, shared = _retire_locked(site, registry, name, version, force)
    finally:
        lock.release()
    if not shared:
        force_rmtree(Path(record.prefix))
    return record


def _retire_locked(site: SiteConfig, registry: Registry, name: str, version: int,
                   force: bool) -> tuple[EnvRecord, bool]:
    """The part of :func:`remove_version` under the key and name locks: the retired record
    and whether another live record names its prefix (which then stays)."""
    record = registry.get(name, version)
    current = registry.current_version(name)
    if version == current and not force:
        ready = [r.version for r in registry.versions(name)
                 if r.version != version and _usable(r)]
        if ready:
            older = [v for v in ready if v < version]
            to = older[-1] if older else ready[-1]
            raise HpcenvError(f"{name} version {version} is the current version; make another "
                              f"current first ('hpcenv env rollback {name} --to {to}') or pass "
                              "--force")
        raise HpcenvError(f"{name} version {version} is the current version and no other "
                          f"version is ready; pass --force to remove it ({name} then has no "
                          "current version)")
    record = registry.set_status(name, version, "retired")
    if version == current:
        others = [r for r in registry.versions(name) if r.version != version and _usable(r)]
        _switch_current(site, registry, name, others[-1] if others else None)
    elif link_points_to(site, name, record.prefix):
        # A publisher died before switching the symlink: repair it before the prefix goes.
        current_record = registry.current(name)
        _point_link(site, name, Path(current_record.prefix) if current_record else None)
    # Versions never share a prefix when hpcenv made them, but a registry edited by hand
    # (or restored from backup) might: a prefix another live record names stays.
    target = os.path.realpath(record.prefix)
    shared = any(r.status in ("ready", "building") and os.path.realpath(r.prefix) == target
                 for r in registry.records())
    return record, shared


def remove_env(site: SiteConfig, name: str, *, force: bool = False) -> list[EnvRecord]:
    """Retire every version of ``name`` that is not retired yet with :func:`remove_version`,
    the current one last so the env stays usable until the very end.  Ready versions are only
    removed with ``force``; failed ones and those a dead builder left ``building`` need none.
    Refused while a builder of ``name`` is at work.  Returns the retired records."""
    registry = Registry.for_site(site)
    left = [r for r in _require_env(registry, name) if r.status != "retired"]
    if not left:
        raise NotFound(f"environment {name!r} has no version left to remove (all are retired; "
                       f"see 'hpcenv env history {name}')")
    busy = [r.version for r in left if r.status == "building" and builder_alive(site, r, None)]
    if busy:
        raise HpcenvError(f"{name} version {busy[0]} is still being built; wait for it, then "
                          f"run 'hpcenv env rm {name}' again")
    ready = [r.version for r in left if r.status == "ready"]
    current = registry.current_version(name)
    if ready and not force:
        which = ", ".join(map(str, ready))
        also = f", the current version {current} included" if current in ready else ""
        raise HpcenvError(f"removing {name} removes its ready version(s) {which}{also}; pass "
                          "--force, or --version V for one")
    return [remove_version(site, name, r.version, force=True)
            for r in sorted(left, key=lambda r: r.version == current)]


# --- debris -----------------------------------------------------------------------------------

def find_debris(site: SiteConfig, *, registry: Registry | None = None,
                held_key: str | None = None) -> list[tuple[Path, EnvRecord | None]]:
    """Build prefixes that are not finished builds and that no live builder is working on.

    A prefix without completion marker is debris when its registry record is ``failed`` or
    ``retired``, when it has no record, or when its record is ``building`` but the key lock is
    free (or is ``held_key``, the lock the caller holds).
    """
    registry = registry or Registry.for_site(site)
    builds = builds_dir(site)
    if not builds.is_dir():
        return []
    by_prefix = {os.path.realpath(r.prefix): r for r in registry.records()}
    found = []
    for path in sorted(builds.iterdir()):
        if path.name.startswith(".") or is_complete(path):
            continue
        record = by_prefix.get(os.path.realpath(path))
        if record is not None and record.status == "building" and builder_alive(site, record,
                                                                                  held_key):
            continue
        found.append((path, record))
    return found


def builder_alive(site: SiteConfig, record: EnvRecord, held_key: str | None = None) -> bool:
    """Whether a live process holds the key lock of ``record`` (a ``building`` record whose
    builder is gone is a crashed build); ``held_key`` is the caller's own lock."""
    if record.key == held_key:
        return False  # the caller holds this key's lock: whoever wrote the record is gone
    lock = key_lock(site, record.key, timeout=0)
    if not lock.try_acquire():
        return True
    lock.release()
    return False


def _adopt(registry: Registry, record: EnvRecord) -> EnvRecord:
    prefix = Path(record.prefix)
    size, count = _usage(prefix)
    packages = len(list((prefix / "conda-meta").glob("*.json")))
    return registry.update(replace(record, status="ready", size_bytes=size, file_count=count,
                                   packages=packages))


def clean_debris(site: SiteConfig, *, registry: Registry | None = None,
                 held_key: str | None = None) -> list[Path]:
    """Remove :func:`find_debris` prefixes and mark dead builders' ``building`` records
    ``failed`` (also those that never got as far as creating a prefix); a dead builder's
    ``building`` record whose prefix is complete is marked ``ready`` instead."""
    registry = registry or Registry.for_site(site)
    removed = []
    # A builder killed between its completion marker and marking the record ready left a
    # verified build: adopt it rather than leave a "building" ghost that gc must keep forever.
    for record in registry.records():
        if (record.status == "building" and is_complete(record.prefix)
                and not builder_alive(site, record, held_key)):
            _adopt(registry, record)
    for path, owner in find_debris(site, registry=registry, held_key=held_key):
        if owner is not None and owner.status == "building":
            registry.set_status(owner.name, owner.version, "failed")
        force_rmtree(path)
        removed.append(path)
    # A builder killed between allocating its version and creating its prefix left only a record.
    for record in registry.records():
        if (record.status == "building" and not os.path.lexists(record.prefix)
                and not builder_alive(site, record, held_key)):
            registry.set_status(record.name, record.version, "failed")
    return removed
