"""The lab registry: which environments exist, in which versions, and which version is current.

A plain directory on the shared filesystem, safe without a server::

    ROOT/<name>/<version>.json       one EnvRecord per built version (1, 2, 3, ...)
    ROOT/<name>/<version>.lock.yml   the lockfile of that version (exact URLs + sha256)
    ROOT/<name>/current              the current version number, as text
    ROOT/<name>/.lock                short-lived lock: version allocation, current changes

Every write is a temp file + fsync + rename, so readers see the old or the new file, never a torn
one.  Version numbers are allocated under the per-name lock (site ``locks.method``), so two
builders of one name never get the same number.  Files are written group-readable (0664 when the
site names a group, else 0644); directories get the site's ``dir_mode`` (e.g. 2775, setgid) so
files inherit the lab group.

Statuses: ``building`` (allocated, build under way or crashed: the builder's key lock tells which),
``ready`` (complete, may be or become current), ``failed`` (build crashed or was cleaned up as
debris), ``retired`` (removed with ``env rm``; record and lockfile kept as history).

The registry's ``current`` file is the source of truth for "the env NAME"; the
``envs_dir/NAME`` symlink that plain conda users activate is derived from it and rewritten after
every change of ``current`` (see :mod:`hpcenv.builder`).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from hpcenv.errors import HpcenvError, NotFound
from hpcenv.locking import BuildLock, LockMethod

Status = Literal["building", "ready", "retired", "failed"]
STATUSES: tuple[Status, ...] = ("building", "ready", "retired", "failed")


@dataclass(frozen=True)
class EnvRecord:
    """One version of one environment."""

    name: str
    version: int
    key: str                      # build key (see hpcenv.builder.build_key)
    spec: dict[str, Any]          # EnvSpec.normalized() (or the pinned spec of a --from-lock build)
    spec_hash: str                # EnvSpec.content_hash()
    lock_path: str
    prefix: str                   # the build-specific prefix (not the envs_dir/NAME symlink)
    cuda: str | None              # __cuda the solve used; None = no __cuda
    cuda_override: str | None     # as asked: None = inferred, "" = --no-cuda, "12.4" = --cuda 12.4
    channels: list[str]
    platform: str
    status: Status
    creator: str                  # user@host
    created: str                  # ISO time
    channel_priority: str = "strict"
    engine: str = "rattler"
    size_bytes: int = 0           # apparent size of the prefix's files (hardlinks counted once)
    file_count: int = 0
    packages: int = 0
    source: str | None = None     # the environment file it was built from
    from_lock: str | None = None  # the lockfile it was recreated from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def group_id(group: str | None) -> int | None:
    """The gid of the site's ``permissions.group`` (None when the site names none)."""
    if group is None:
        return None
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise HpcenvError(f"site permissions.group {group!r} does not exist on this host; fix "
                          "the site config ('hpcenv site check')") from None


def chgrp(path: Path | str, gid: int) -> None:
    """Give ``path`` the lab group; a one-line error when this user is not in it."""
    try:
        os.chown(path, -1, gid, follow_symlinks=False)
    except PermissionError:
        raise HpcenvError(f"{path}: cannot give it group id {gid}: you are not a member of the "
                          "site's permissions.group; ask to be added or fix the site config"
                          ) from None


def ensure_shared_dir(path: Path, *, dir_mode: int | None, gid: int | None) -> None:
    """Create ``path`` and its missing parents, each with the site's mode and group (setgid
    dirs then pass the group on to everything created inside)."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            continue  # another process made it: it set the permissions
        if gid is not None:
            chgrp(directory, gid)
        if dir_mode is not None:
            os.chmod(directory, dir_mode)  # after chgrp, which clears setgid on some systems


class Registry:
    """The registry under ``root`` (see module doc)."""

    def __init__(self, root: Path | str, *, lock_method: LockMethod = "flock",
                 lock_timeout: float = 120.0, group: str | None = None,
                 dir_mode: int | None = None) -> None:
        self.root = Path(root)
        self.lock_method = lock_method
        self.lock_timeout = lock_timeout
        self.group = group
        self.file_mode = 0o664 if group is not None else 0o644
        self.dir_mode = dir_mode

    @classmethod
    def for_site(cls, site: Any) -> Registry:
        """The registry a :class:`hpcenv.site.SiteConfig` names, with its lock and mode settings."""
        return cls(site.registry, lock_method=site.locks.method,
                   group=site.permissions.group,
                   dir_mode=site.permissions.dir_mode)

    # --- reading ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and any(self._record_files(p.name)))

    def versions(self, name: str) -> list[EnvRecord]:
        """Every record of ``name``, oldest first."""
        records = []
        for path in self._record_files(name):
            record = self._load(path)
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.version)

    def get(self, name: str, version: int) -> EnvRecord:
        path = self._record_path(name, version)
        record = self._load(path)
        if record is None:
            known = [r.version for r in self.versions(name)]
            if not known:
                raise NotFound(f"no environment {name!r} in the registry {self.root}; "
                               "see 'hpcenv env list'")
            raise NotFound(f"environment {name!r} has no version {version} (versions: "
                           f"{', '.join(map(str, known))})")
        return record

    def current_version(self, name: str) -> int | None:
        try:
            text = (self.root / name / "current").read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return int(text)
        except ValueError:
            raise HpcenvError(f"{self.root / name / 'current'}: not a version number ({text!r}); "
                              f"fix it with 'hpcenv env rollback {name} --to VERSION'") from None

    def current(self, name: str) -> EnvRecord | None:
        version = self.current_version(name)
        return None if version is None else self.get(name, version)

    def find_ready(self, key: str, name: str | None = None) -> EnvRecord | None:
        """The newest ``ready`` record built with ``key`` (only under ``name`` when given)."""
        names = [name] if name is not None else self.names()
        found = [r for n in names for r in self.versions(n) if r.key == key and r.status == "ready"]
        return max(found, key=lambda r: r.version) if found else None

    def records(self) -> Iterator[EnvRecord]:
        for name in self.names():
            yield from self.versions(name)

    def lock_file(self, name: str, version: int) -> Path:
        """Where the lockfile of ``name`` version ``version`` lives."""
        return self.root / name / f"{version}.lock.yml"

    # --- writing ------------------------------------------------------------------------------

    @contextmanager
    def name_lock(self, name: str) -> Iterator[None]:
        """Serialise version allocation and ``current`` changes of one name."""
        self._ensure_dir(self.root / name)
        with BuildLock(self.root / name / ".lock", method=self.lock_method,
                       timeout=self.lock_timeout):
            yield

    def allocate(self, name: str, make: Callable[[int], EnvRecord]) -> EnvRecord:
        """Write the record ``make(version)`` under the next free version number of ``name``."""
        with self.name_lock(name):
            existing = [r.version for r in self.versions(name)]
            version = max(existing, default=0) + 1
            record = make(version)
            if record.name != name or record.version != version:
                raise HpcenvError(f"registry: record for {record.name} v{record.version} does "
                                  f"not match allocated {name} v{version}")
            self._write_json(self._record_path(name, version), record.to_dict())
            return record

    def update(self, record: EnvRecord) -> EnvRecord:
        """Replace the stored record of ``record.name``/``record.version`` (it must exist)."""
        self.get(record.name, record.version)
        self._write_json(self._record_path(record.name, record.version), record.to_dict())
        return record

    def set_status(self, name: str, version: int, status: Status, **changes: Any) -> EnvRecord:
        if status not in STATUSES:
            raise HpcenvError(f"unknown record status {status!r}")
        return self.update(replace(self.get(name, version), status=status, **changes))

    def set_current(self, name: str, version: int | None) -> None:
        """Point ``name`` at ``version`` (None: no current version).  Caller holds name_lock."""
        path = self.root / name / "current"
        if version is None:
            path.unlink(missing_ok=True)
            return
        self.get(name, version)
        self._write_text(path, f"{version}\n")

    # --- files --------------------------------------------------------------------------------

    def _record_path(self, name: str, version: int) -> Path:
        return self.root / name / f"{int(version)}.json"

    def _record_files(self, name: str) -> Iterator[Path]:
        directory = self.root / name
        if not directory.is_dir():
            return
        for path in directory.iterdir():
            if path.suffix == ".json" and path.stem.isdigit():
                yield path

    @staticmethod
    def _load(path: Path) -> EnvRecord | None:
        try:
            return EnvRecord.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise HpcenvError(f"{path}: unreadable registry record ({exc}); restore it from "
                              "backup or remove it") from None

    def _ensure_dir(self, path: Path) -> None:
        if not path.is_dir():
            ensure_shared_dir(path, dir_mode=self.dir_mode, gid=group_id(self.group))

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        self._write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def _write_text(self, path: Path, text: str) -> None:
        self._ensure_dir(path.parent)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self.file_mode)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, self.file_mode)  # the umask may have masked group/other bits
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
