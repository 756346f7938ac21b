"""The lab registry: which environments exist, in which versions, and which version is current.

A plain directory on the shared filesystem, safe without a server::

    ROOT/<name>/<version>.json       one EnvRecord per built version (1, 2, 3, ...)
    ROOT/<name>/<version>.lock.yml   the lockfile of that version (exact URLs + sha256)
    ROOT/<name>/current              the current version number, as text
    ROOT/<name>/.lock                short-lived lock: version allocation, current changes

Every write is a temp file + fsync + rename, so readers see the old or the new file, never a torn
one.  Version numbers are allocated under the per-name lock (a lease lock that holds across
login nodes, see :mod:`hpcenv.store.locking`), and a new record is put in place with ``link``,
which fails when the file exists: even a lock broken from under a stalled holder cannot give
two builders one version number.  Files are written group-readable (0664 when the
site names a group, else 0644); directories get the site's ``dir_mode`` (e.g. 2775, setgid) so
files inherit the lab group.

Statuses: ``building`` (allocated, build under way or crashed: the builder's key lock tells which),
``ready`` (complete, may be or become current), ``failed`` (build crashed or was cleaned up as
debris), ``retired`` (removed with ``env rm``; record and lockfile kept as history).

The registry's ``current`` file is the source of truth for "the env NAME"; the
``envs_dir/NAME`` symlink that plain conda users activate is derived from it and rewritten after
every change of ``current`` (see :mod:`hpcenv.store.lifecycle`).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.fsutil import atomic_write_text, ensure_shared_dir
from hpcenv.spec.environment import validate_env_name
from hpcenv.store.locking import DEFAULT_HEARTBEAT, DEFAULT_STALE_AFTER, BuildLock, LockMethod

if TYPE_CHECKING:
    from hpcenv.site.config import SiteConfig

Status = Literal["building", "ready", "retired", "failed"]
STATUSES: tuple[Status, ...] = ("building", "ready", "retired", "failed")


@dataclass(frozen=True)
class EnvRecord:
    """One version of one environment."""

    name: str
    version: int
    key: str                      # build key (see hpcenv.build.plan.build_key)
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
    # Whether the env needs a GPU: the spec's inference at build time (True for a from-lock
    # build whose packages name a CUDA).  Routing reads it for GPU envs that name no CUDA
    # version (ROCm, "cupy" without cuda-version...); None = unknown (records written before
    # the field existed, or a spec that does not say).
    gpu_required: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class EnvSummary:
    """One line of ``env list``: an environment and its current version (None fields: no
    current version)."""

    name: str
    current: int | None
    versions: int
    cuda: str | None
    prefix: str | None
    created: str | None
    creator: str | None
    packages: int | None
    size_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HistoryEntry:
    """One line of ``env history``: a version of an environment."""

    version: int
    current: bool
    status: Status
    cuda: str | None
    key: str
    created: str
    creator: str
    packages: int
    prefix: str
    lock: str
    from_lock: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Registry:
    """The registry under ``root`` (see module doc).

    Every method taking an env name validates it first (:func:`hpcenv.spec.environment.validate_env_name`,
    InvalidInput): names become paths under ``root``, so ``../x`` must never reach the
    filesystem.
    """

    def __init__(self, root: Path | str, *, lock_method: LockMethod = "flock",
                 lock_timeout: float = 3600.0,
                 lock_stale_after: float | None = DEFAULT_STALE_AFTER,
                 lock_heartbeat: float = DEFAULT_HEARTBEAT,
                 group: str | None = None, dir_mode: int | None = None) -> None:
        self.root = Path(root)
        self.lock_method = lock_method
        self.lock_timeout = lock_timeout
        self.lock_stale_after = lock_stale_after
        self.lock_heartbeat = lock_heartbeat
        self.group = group
        self.file_mode = 0o664 if group is not None else 0o644
        self.dir_mode = dir_mode

    @classmethod
    def for_site(cls, site: SiteConfig) -> Registry:
        """The registry ``site`` names, with its lock settings (the per-name lock is only held
        for a few file writes, but a waiter behind a slow shared filesystem or a build holding
        it across a publish gets the same patience as a build lock) and permissions."""
        return cls(site.registry, lock_method=site.locks.method, lock_timeout=site.locks.timeout,
                   lock_stale_after=site.locks.stale_after,
                   lock_heartbeat=site.locks.heartbeat, group=site.permissions.group,
                   dir_mode=site.permissions.dir_mode)

    # --- reading ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names with at least one record (directories that are no valid env name, e.g. made
        by hand, are not environments and are skipped)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and _is_env_name(p.name) and any(self._record_files(p.name)))

    def versions(self, name: str) -> list[EnvRecord]:
        """Every record of ``name``, oldest first."""
        validate_env_name(name)
        records = []
        for path in self._record_files(name):
            record = self._load(path)
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.version)

    def get(self, name: str, version: int) -> EnvRecord:
        validate_env_name(name)
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
        validate_env_name(name)
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

    def resolve(self, name: str, version: int | None = None) -> EnvRecord:
        """Version ``version`` of ``name``, or its current version; NotFound says which is
        missing and where to look."""
        if version is not None:
            return self.get(name, version)
        record = self.current(name)
        if record is None:
            if self.versions(name):
                raise NotFound(f"environment {name!r} has no current version; pick one with "
                               f"--version (see 'hpcenv env history {name}')")
            raise NotFound(f"no environment {name!r} in the registry {self.root}; "
                           "see 'hpcenv env list'")
        return record

    def summaries(self) -> list[EnvSummary]:
        """Every environment with its current version, by name: the names with at least one
        ``ready`` version (a name whose builds all failed, or were all removed, is history
        only; see :meth:`unfinished`)."""
        out = []
        for name in self.names():
            versions = self.versions(name)
            if not any(r.status == "ready" for r in versions):
                continue
            current = self.current_version(name)
            record = next((r for r in versions if r.version == current), None)
            out.append(EnvSummary(
                name=name, current=current, versions=len(versions),
                cuda=record.cuda if record else None, prefix=record.prefix if record else None,
                created=record.created if record else None,
                creator=record.creator if record else None,
                packages=record.packages if record else None,
                size_bytes=record.size_bytes if record else None))
        return out

    def unfinished(self) -> dict[str, list[EnvRecord]]:
        """Names with no ``ready`` version but some ``failed`` or ``building`` ones (a build
        failed, was interrupted, or is under way), with those records."""
        out = {}
        for name in self.names():
            versions = self.versions(name)
            if any(r.status == "ready" for r in versions):
                continue
            pending = [r for r in versions if r.status in ("failed", "building")]
            if pending:
                out[name] = pending
        return out

    def history(self, name: str) -> list[HistoryEntry]:
        """Every version of ``name``, oldest first; NotFound when it has none."""
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"no environment {name!r} in the registry {self.root}; "
                           "see 'hpcenv env list'")
        current = self.current_version(name)
        return [HistoryEntry(version=r.version, current=r.version == current, status=r.status,
                             cuda=r.cuda, key=r.key, created=r.created, creator=r.creator,
                             packages=r.packages, prefix=r.prefix, lock=r.lock_path,
                             from_lock=r.from_lock) for r in versions]

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
        validate_env_name(name)
        return self.root / name / f"{int(version)}.lock.yml"

    # --- writing ------------------------------------------------------------------------------

    @contextmanager
    def name_lock(self, name: str) -> Iterator[None]:
        """Serialise version allocation and ``current`` changes of one name."""
        validate_env_name(name)
        self._ensure_dir(self.root / name)
        with BuildLock(self.root / name / ".lock", method=self.lock_method,
                       timeout=self.lock_timeout, stale_after=self.lock_stale_after,
                       heartbeat=self.lock_heartbeat, dir_mode=self.dir_mode, group=self.group):
            yield

    def allocate(self, name: str, make: Callable[[int], EnvRecord]) -> EnvRecord:
        """Write the record ``make(version)`` under the next free version number of ``name``."""
        with self.name_lock(name):
            version = max((r.version for r in self.versions(name)), default=0) + 1
            while True:
                record = make(version)
                if record.name != name or record.version != version:
                    raise HpcenvError(f"registry: record for {record.name} v{record.version} "
                                      f"does not match allocated {name} v{version}")
                if self._create_json(self._record_path(name, version), record.to_dict()):
                    return record
                version += 1  # taken meanwhile by a holder whose lease was broken

    def update(self, record: EnvRecord) -> EnvRecord:
        """Replace the stored record of ``record.name``/``record.version`` (it must exist)."""
        self.get(record.name, record.version)
        self._write_json(self._record_path(record.name, record.version), record.to_dict())
        return record

    def set_status(self, name: str, version: int, status: Status, **changes: Any) -> EnvRecord:
        if status not in STATUSES:
            raise HpcenvError(f"unknown record status {status!r}")
        return self.update(replace(self.get(name, version), status=status, **changes))

    def write_lockfile(self, name: str, version: int, text: str) -> Path:
        """Store the lockfile of an allocated version with the registry's mode and group."""
        self.get(name, version)
        path = self.lock_file(name, version)
        self._write_text(path, text)
        return path

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
        ensure_shared_dir(path, mode=self.dir_mode, group=self.group)

    def _create_json(self, path: Path, data: dict[str, Any]) -> bool:
        """Put a new file at ``path`` complete, only if none is there (False if one is)."""
        self._ensure_dir(path.parent)
        staged = path.with_name(f".{path.name}.{secrets.token_hex(6)}.new")
        atomic_write_text(staged, json.dumps(data, indent=2, sort_keys=True) + "\n",
                          mode=self.file_mode, group=self.group)
        try:
            os.link(staged, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            if path.exists():  # no hardlinks here: the name lock alone keeps versions unique
                return False
            os.replace(staged, path)
            return True
        finally:
            staged.unlink(missing_ok=True)
        return True

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        self._write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def _write_text(self, path: Path, text: str) -> None:
        self._ensure_dir(path.parent)
        atomic_write_text(path, text, mode=self.file_mode, group=self.group)


def _is_env_name(name: str) -> bool:
    try:
        validate_env_name(name)
    except InvalidInput:
        return False
    return True
