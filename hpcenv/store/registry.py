"""The lab registry: which environments exist, in which versions, and which version is current.

A plain directory on the shared filesystem, safe without a server::

    ROOT/<name>/<version>.json       one EnvRecord per built version (1, 2, 3, ...)
    ROOT/<name>/<version>.lock.yml   the lockfile of that version (exact URLs + sha256)
    ROOT/<name>/current              the current version number, as text
    ROOT/<name>/.lock                short-lived lock: version allocation, current changes
    ROOT/.hpcenv-store.json          the envs_dirs[0] whose builds the records name

Records name build prefixes, which are not relocatable: a registry belongs to one store.  The
first version allocated writes ``.hpcenv-store.json``; a site whose ``envs_dirs[0]`` differs
is refused (:meth:`Registry.check_store`), since its links would point into the other store.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.fsutil import atomic_write_text, ensure_shared_dir, shared_file_mode
from hpcenv.records import JsonRecord, json_meta
from hpcenv.spec.cuda_target import CUDA_JSON, CUDA_OVERRIDE_JSON, CudaTarget
from hpcenv.spec.names import EnvName
from hpcenv.store.locking import (
    DEFAULT_HEARTBEAT,
    DEFAULT_STALE_AFTER,
    BuildLock,
    LockHolder,
    LockMethod,
    describe_holder,
)
from hpcenv.store.registry_index import (
    SUMMARY_COLUMNS,
    EnvSummary,
    NameIndex,
    RegistryIndex,
    VersionEntry,
    gc_paused,
)
from hpcenv.store.registry_text import history_text

__all__ = ["STATUSES", "EnvRecord", "EnvSummary", "HistoryEntry", "Registry", "Status",
           "VersionEntry"]

STORE_MARKER = ".hpcenv-store.json"

Status = Literal["building", "ready", "retired", "failed"]
STATUSES: tuple[Status, ...] = ("building", "ready", "retired", "failed")


@dataclass(frozen=True)
class EnvRecord(JsonRecord):
    """One version of one environment."""

    name: str
    version: int
    key: str                      # build key (see hpcenv.build.plan.build_key)
    spec: dict[str, Any]          # EnvSpec.normalized() (or the pinned spec of a --from-lock build)
    spec_hash: str                # EnvSpec.content_hash()
    lock_path: str
    prefix: str                   # the build-specific prefix (not the envs_dir/NAME symlink)
    cuda: CudaTarget = field(metadata=json_meta(codec=CUDA_JSON))   # __cuda the solve used: a version or none
    cuda_override: CudaTarget | None = field(metadata=json_meta(codec=CUDA_OVERRIDE_JSON))  # None = inferred
    channels: list[str]
    platform: str
    status: Status
    creator: str                  # user@host
    created: str                  # ISO time
    channel_priority: str = "strict"
    engine: str = "rattler"
    size_bytes: int = 0           # apparent size of the prefix's files (hardlinks counted once)
    # Of those, the bytes no other env or the package cache links (None: an older record).
    unique_bytes: int | None = None
    file_count: int = 0
    packages: int = 0
    source: str | None = None     # the environment file it was built from
    from_lock: str | None = None  # the lockfile it was recreated from
    # Whether the env needs a GPU: the spec's inference at build time (True for a from-lock
    # build whose packages name a CUDA).  Routing reads it for GPU envs that name no CUDA
    # version (ROCm, "cupy" without cuda-version...); None = unknown (records written before
    # the field existed, or a spec that does not say).
    gpu_required: bool | None = None
    # A failed build's one-line reason, and its build log (steps, warnings, tool output, the
    # error) under the registry; log_path is kept for ready builds too.
    error: str | None = None
    log_path: str | None = None




@dataclass(frozen=True)
class HistoryEntry(JsonRecord):
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


HISTORY_FIELDS = [f.name for f in fields(HistoryEntry)]


class Registry:
    """The registry under ``root`` (see module doc).

    Names are :class:`~hpcenv.spec.names.EnvName` values: they become paths under ``root``, so
    ``../x`` must never reach the filesystem.  A plain string from a Python caller is parsed
    (InvalidInput) where it enters; an EnvName is taken as it is.
    """

    def __init__(self, root: Path | str, *, lock_method: LockMethod = "flock",
                 lock_timeout: float = 3600.0,
                 lock_stale_after: float | None = DEFAULT_STALE_AFTER,
                 lock_heartbeat: float = DEFAULT_HEARTBEAT,
                 group: str | None = None, dir_mode: int | None = None,
                 envs_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.envs_dir = envs_dir  # the store this registry's builds live in (None: unchecked)
        self.lock_method = lock_method
        self.lock_timeout = lock_timeout
        self.lock_stale_after = lock_stale_after
        self.lock_heartbeat = lock_heartbeat
        self.group = group
        self.file_mode = shared_file_mode(group)
        self.dir_mode = dir_mode
        self.index = RegistryIndex(self.root, self._read_entry, file_mode=self.file_mode,
                                   dir_mode=dir_mode, group=group)

    # --- the store it belongs to ---------------------------------------------------------------

    def check_store(self, source: str = "the site config") -> None:
        """Refuse a registry whose records name builds of another ``envs_dirs[0]``: a second
        site sharing it would link its names into the other store."""
        if self.envs_dir is None:
            return
        try:
            data = json.loads((self.root / STORE_MARKER).read_text())
            theirs = str(data["envs_dir"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            raise HpcenvError(f"{self.root / STORE_MARKER}: unreadable; it names the envs dir "
                              "whose builds this registry records (envs_dir: PATH), restore "
                              "it") from None
        if os.path.realpath(theirs) != os.path.realpath(self.envs_dir):
            raise InvalidInput(f"registry {self.root} records builds in envs dir {theirs}, but "
                               f"{source} has envs_dirs[0] {self.envs_dir}: sites sharing a "
                               "registry must share envs_dirs[0]; give this site its own "
                               "registry or the same envs_dirs[0]")

    def _claim_store(self) -> None:
        if self.envs_dir is not None and not (self.root / STORE_MARKER).exists():
            self._create_json(self.root / STORE_MARKER, {"envs_dir": str(self.envs_dir)})
            self.check_store()  # another site may have claimed it first

    # --- reading ------------------------------------------------------------------------------

    def names(self) -> list[EnvName]:
        """Names with at least one record (directories that are no valid env name, e.g. made
        by hand, are not environments and are skipped)."""
        if not self.root.is_dir():
            return []
        names = (EnvName.parse(p.name) for p in self.root.iterdir()
                 if p.is_dir() and EnvName.is_valid(p.name))
        return sorted(n for n in names if self._record_versions(n))

    def versions(self, name: EnvName | str) -> list[EnvRecord]:
        """Every record of ``name``, oldest first."""
        name = EnvName.of(name)
        records = []
        for version in self._record_versions(name):
            record = self._load(self._record_path(name, version))
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: r.version)

    def get(self, name: EnvName | str, version: int) -> EnvRecord:
        name = EnvName.of(name)
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

    def current_version(self, name: EnvName | str) -> int | None:
        name = EnvName.of(name)
        try:
            text = (self.root / name / "current").read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return int(text)
        except ValueError:
            raise HpcenvError(f"{self.root / name / 'current'}: not a version number ({text!r}); "
                              f"fix it with 'hpcenv env rollback {name} --to VERSION'") from None

    def current(self, name: EnvName | str) -> EnvRecord | None:
        version = self.current_version(name)
        return None if version is None else self.get(name, version)

    def resolve(self, name: EnvName | str, version: int | None = None) -> EnvRecord:
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

    def entries(self, name: EnvName | str, status: Status | None = None) -> list[VersionEntry]:
        """What the index keeps of every record of ``name`` (or of those in ``status``), oldest
        first: the listing fields, without reading each record file (see
        :mod:`hpcenv.store.registry_index`)."""
        return self.index.name_index(EnvName.of(name)).entries(status)

    def summaries(self) -> list[EnvSummary]:
        """Every environment with its current version, by name: the names with at least one
        ``ready`` version (a name whose builds all failed, or were all removed, is history
        only; see :meth:`unfinished`)."""
        return [EnvSummary.from_dict(row) for row in self.listing()[0]]

    def unfinished(self) -> dict[str, list[VersionEntry]]:
        """Names with no ``ready`` version but some ``failed`` or ``building`` ones (a build
        failed, was interrupted, or is under way), with those versions."""
        return self.listing()[1]

    def listing(self) -> tuple[list[dict[str, Any]], dict[str, list[VersionEntry]]]:
        """What ``env list --json`` shows, in one pass over the index: :meth:`summaries` as
        JSON (``EnvSummary.to_dict()``) and :meth:`unfinished`."""
        index = self.index.list_index(text=False)
        assert index.entries is not None
        with gc_paused():
            rows = [dict(zip(SUMMARY_COLUMNS, summary))
                    for summary, _pending in index.entries if summary]
        return (rows,
                {name: [VersionEntry.from_dict(p) for p in pending]
                 for name, (summary, pending) in zip(index.names, index.entries)
                 if summary is None and pending})

    def list_text(self) -> str:
        """What ``env list`` prints ("" when there is no environment and no unfinished name):
        the lines the index keeps (see :mod:`hpcenv.store.registry_text`)."""
        return self.index.list_index(text=True).text()

    def history(self, name: EnvName | str) -> list[HistoryEntry]:
        """Every version of ``name``, oldest first; NotFound when it has none."""
        return [HistoryEntry.from_dict(row) for row in self.history_rows(name)]

    def history_rows(self, name: EnvName | str) -> list[dict[str, Any]]:
        """:meth:`history` as JSON (``HistoryEntry.to_dict()``), made straight from the index:
        what ``env history --json`` prints."""
        name = EnvName.of(name)
        return self._history_rows(name, self.index.name_index(name))

    def history_text(self, name: EnvName | str) -> str:
        """What ``env history`` prints: the text the index keeps, or made from its rows."""
        name = EnvName.of(name)
        return self.index.history_text(
            name, lambda index: history_text(self._history_rows(name, index)))

    def _history_rows(self, name: EnvName, index: NameIndex) -> list[dict[str, Any]]:
        if not index.versions:
            raise NotFound(f"no environment {name!r} in the registry {self.root}; "
                           "see 'hpcenv env list'")
        current = self.current_version(name)
        # HistoryEntry's fields but "current" are VersionEntry's (its "lock" included).
        version = index.columns.index("version")
        columns = [(f, index.columns.index(f if f != "current" else "version"))
                   for f in HISTORY_FIELDS]
        with gc_paused():
            return [{f: row[i] if f != "current" else row[version] == current
                     for f, i in columns} for row in index.versions]

    def first_entry(self, name: EnvName | str) -> VersionEntry | None:
        """The index entry of ``name``'s oldest version (its builder owns the env)."""
        return self.index.name_index(EnvName.of(name)).first()

    def find_ready(self, key: str, name: EnvName | str | None = None) -> EnvRecord | None:
        """The newest ``ready`` record built with ``key`` (only under ``name`` when given, as
        builds are: a key names its env): found in the index, and read from its record file,
        which has the last word."""
        found = []
        for each in [EnvName.of(name)] if name is not None else self.names():
            for version in self.index.name_index(each).newest(key, "ready"):
                record = self._load(self._record_path(each, version))
                if record is not None and record.key == key and record.status == "ready":
                    found.append(record)
                    break
        return max(found, key=lambda r: r.version) if found else None

    def records(self) -> Iterator[EnvRecord]:
        for name in self.names():
            yield from self.versions(name)

    def lock_file(self, name: EnvName | str, version: int) -> Path:
        """Where the lockfile of ``name`` version ``version`` lives."""
        name = EnvName.of(name)
        return self.root / name / f"{int(version)}.lock.yml"

    def log_file(self, name: EnvName | str, version: int) -> Path:
        """Where the build log of ``name`` version ``version`` lives."""
        name = EnvName.of(name)
        return self.root / name / f"{int(version)}.build.log"

    # --- writing ------------------------------------------------------------------------------

    @contextmanager
    def name_lock(self, name: EnvName | str, *, doing: str = "",
                  on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Serialise version allocation and ``current`` changes of one name.  ``doing`` tells
        waiters what we do under it; ``on_wait(message)`` hears who holds it while we wait."""
        name = EnvName.of(name)
        self._ensure_dir(self.root / name)

        def waiting(holder: LockHolder | None) -> None:
            if on_wait is not None:
                on_wait(f"waiting for {describe_holder(holder)} to finish with {name}")

        with BuildLock(self.root / name / ".lock", method=self.lock_method,
                       timeout=self.lock_timeout, stale_after=self.lock_stale_after,
                       heartbeat=self.lock_heartbeat, dir_mode=self.dir_mode, group=self.group,
                       doing=doing or f"changing {name} in the registry", on_wait=waiting):
            yield

    def allocate(self, name: EnvName | str, make: Callable[[int], EnvRecord]) -> EnvRecord:
        """Write the record ``make(version)`` under the next free version number of ``name``."""
        name = EnvName.of(name)
        self._claim_store()
        with self.name_lock(name, doing=f"allocating a version of {name}"):
            version = max(self._record_versions(name), default=0) + 1
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
        self._write_json(self._record_path(EnvName.of(record.name), record.version),
                         record.to_dict())
        return record

    def set_status(self, name: EnvName | str, version: int, status: Status, **changes: Any) -> EnvRecord:
        if status not in STATUSES:
            raise HpcenvError(f"unknown record status {status!r}")
        return self.update(replace(self.get(name, version), status=status, **changes))

    def write_lockfile(self, name: EnvName | str, version: int, text: str) -> Path:
        """Store the lockfile of an allocated version with the registry's mode and group."""
        self.get(name, version)
        path = self.lock_file(name, version)
        self._write_text(path, text)
        return path

    def write_build_log(self, name: EnvName | str, version: int, text: str) -> Path:
        """Store the build log of an allocated version with the registry's mode and group."""
        self.get(name, version)
        path = self.log_file(name, version)
        self._write_text(path, text)
        return path

    def set_current(self, name: EnvName | str, version: int | None) -> None:
        """Point ``name`` at ``version`` (None: no current version).  Caller holds name_lock."""
        path = self.root / name / "current"
        if version is None:
            path.unlink(missing_ok=True)
            return
        self.get(name, version)
        self._write_text(path, f"{version}\n")

    # --- files --------------------------------------------------------------------------------

    def _record_path(self, name: EnvName, version: int) -> Path:
        return self.root / name / f"{int(version)}.json"

    def _record_versions(self, name: EnvName) -> list[int]:
        """The versions of ``name`` that have a record file, unordered: from the directory's
        listing, without a path object per file (a name may have 10,000)."""
        try:
            listing = os.listdir(self.root / name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [int(n[:-5]) for n in listing if n.endswith(".json") and n[:-5].isdigit()]

    @staticmethod
    def _load(path: Path) -> EnvRecord | None:
        try:
            return EnvRecord.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            raise HpcenvError(f"{path}: unreadable registry record ({exc}); restore it from "
                              "backup or remove it") from None

    def _read_entry(self, path: Path, signature: str) -> VersionEntry | None:
        """The index entry of the record file ``path`` (None: it is gone)."""
        r = self._load(path)
        if r is None:
            return None
        return VersionEntry(version=r.version, status=r.status, key=r.key, cuda=r.cuda.version,
                            created=r.created, creator=r.creator, packages=r.packages,
                            prefix=r.prefix, lock=r.lock_path, from_lock=r.from_lock,
                            size_bytes=r.size_bytes, unique_bytes=r.unique_bytes,
                            error=r.error, signature=signature)

    def _ensure_dir(self, path: Path) -> None:
        ensure_shared_dir(path, mode=self.dir_mode, group=self.group)

    def _create_json(self, path: Path, data: dict[str, Any]) -> bool:
        """Put a new file at ``path`` complete, only if none is there (False if one is)."""
        self._ensure_dir(path.parent)
        staged = path.with_name(f".{path.name}.{os.urandom(6).hex()}.new")
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
