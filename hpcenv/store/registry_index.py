"""The registry's index: what ``env list``, ``env history``, a reuse and a new build read instead
of every record file, so they cost the same with 10,000 envs or versions as with 10.

A cache its readers keep beside the registry; writers never touch it::

    ROOT/.index/names/NAME.json   NAME's versions (per record: what history, list and the
                                  builder's lookups need, and the record file's stat signature),
                                  its current version, and the mtime of ROOT/NAME it describes
    ROOT/.index/list.json         per name: its ``env list`` line, and that mtime again

**Never wrong, only stale, and never used stale.**  Every change of the registry renames a file
into ROOT/NAME (records, ``current``, lockfiles and logs are written as a temp file renamed
over the old one; the name lock's lease dirs come and go there too), and the filesystem then
sets ROOT/NAME's mtime, on an NFS server by the server's clock.  An index entry is used only
while that mtime equals the one it was built at, so no flock, lease or cooperation from writers
(older hpcenv versions included) is needed, and a crashed or racing reader can at worst leave
an entry that the next reader sees is outdated.  A name whose directory changed is re-read, but
only its changed record files: the others' stat signatures (inode, size, mtime, ctime) still
match.  Index files are written whole and renamed into place; a torn or unreadable one is
rebuilt.

A change in the same timestamp tick as the mtime an entry was built at would not move the
mtime (coarse-grained clocks, servers with 1 s timestamps), so an entry only counts as settled,
and is trusted later, when that mtime was already :data:`SETTLE_NS` old by the filesystem's own
clock (read by creating a file in ``.index``) before the directory was read; until then every
reader re-checks it.  The same holds for each record's signature.  Files edited in place by hand
(not replaced) do not move the mtime: ``touch ROOT/NAME`` afterwards.

A reader that may not write ``.index`` (another group, a read-only mount) reads the records, as
without an index.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hpcenv.fsutil import atomic_write_text, ensure_shared_dir
from hpcenv.records import JsonRecord
from hpcenv.spec.names import EnvName

# How old a directory's (or record's) mtime must be, by the filesystem's clock, for a change in
# the same timestamp tick to be impossible: above any filesystem's timestamp granularity.
SETTLE_NS = 2_000_000_000
INDEX_DIR = ".index"
FORMAT = 1


@dataclass(frozen=True)
class VersionEntry(JsonRecord):
    """What the index keeps of one record (``EnvRecord``): its listing fields."""

    version: int
    status: str
    key: str
    cuda: str | None
    created: str
    creator: str
    packages: int
    prefix: str
    lock: str
    from_lock: str | None
    size_bytes: int
    unique_bytes: int | None
    error: str | None
    # "ino:size:mtime_ns:ctime_ns" of the record file read; "" when it was too recent to trust
    signature: str = ""


@dataclass(frozen=True)
class NameIndex(JsonRecord):
    """One name's versions, oldest first, as of ROOT/NAME's mtime ``stamp``."""

    name: str
    stamp: int
    settled: bool
    current: int | None
    versions: tuple[VersionEntry, ...]
    format: int = FORMAT


@dataclass(frozen=True)
class EnvSummary(JsonRecord):
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
    unique_bytes: int | None = None   # of size_bytes, what only this env holds

    @property
    def shared_bytes(self) -> int | None:
        """Bytes hardlinked with the package cache (and so with other envs)."""
        if self.size_bytes is None or self.unique_bytes is None:
            return None
        return self.size_bytes - self.unique_bytes

    JSON_PROPERTIES = ("shared_bytes",)


@dataclass(frozen=True)
class ListEntry(JsonRecord):
    """What ``env list`` shows of one name, as of ROOT/NAME's mtime ``stamp``: its summary (None:
    no ready version) and, for a name without a ready version, its failed and building ones."""

    name: str
    stamp: int
    settled: bool
    summary: EnvSummary | None
    pending: tuple[VersionEntry, ...] = ()


@dataclass(frozen=True)
class ListIndex(JsonRecord):
    entries: tuple[ListEntry, ...]
    format: int = FORMAT


_Index = TypeVar("_Index", NameIndex, ListIndex)


class RegistryIndex:
    """The index of the registry under ``root``; ``read_entry`` reads one record file into its
    entry (None: the file is gone)."""

    def __init__(self, root: Path, read_entry: Callable[[Path, str], VersionEntry | None], *,
                 file_mode: int, dir_mode: int | None, group: str | None) -> None:
        self.root = root
        self.read_entry = read_entry
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.group = group

    # --- one name -------------------------------------------------------------------------

    def name_index(self, name: EnvName) -> NameIndex:
        """``name``'s versions, from the index when ROOT/NAME has not changed since."""
        try:
            stamp = os.stat(self.root / name).st_mtime_ns
        except FileNotFoundError:
            return NameIndex(name, 0, False, None, ())
        cached = self._load(self._name_path(name), NameIndex)
        if cached is not None and cached.settled and cached.stamp == stamp:
            return cached
        index = self._read_name(name, cached)
        if index != cached:
            self._save(self._name_path(name), index)
        return index

    def _read_name(self, name: EnvName, cached: NameIndex | None) -> NameIndex:
        """Read ROOT/NAME again, reusing ``cached`` entries whose record file is unchanged."""
        directory = self.root / name
        now = self._filesystem_now()   # before the stat below: see the module doc
        stamp = os.stat(directory).st_mtime_ns
        known = {e.version: e for e in cached.versions} if cached is not None else {}
        entries = []
        with os.scandir(directory) as listing:
            files = [(d.name, d.path) for d in listing
                     if d.name.endswith(".json") and d.name[:-5].isdigit()]
        for filename, path in files:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            settled = now is not None and st.st_mtime_ns < now - SETTLE_NS
            signature = (f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
                         if settled else "")
            entry = known.get(int(filename[:-5]))
            if entry is None or not signature or entry.signature != signature:
                # The stat came first: a record replaced meanwhile is read newer than its
                # signature says, so the next reader reads it again rather than trust it.
                entry = self.read_entry(Path(path), signature)
            if entry is not None:
                entries.append(entry)
        entries.sort(key=lambda e: e.version)
        return NameIndex(name, stamp, now is not None and stamp < now - SETTLE_NS,
                         _current_version(directory), tuple(entries))

    # --- every name -----------------------------------------------------------------------

    def list_entries(self) -> list[ListEntry]:
        """One entry per name directory, by name: from ``list.json`` for the names whose
        directory has not changed since, re-read for the others."""
        cached = self._load(self._list_path(), ListIndex)
        known = {e.name: e for e in cached.entries} if cached is not None else {}
        out, changed = [], cached is None
        try:
            with os.scandir(self.root) as listing:
                names = sorted(d.name for d in listing
                               if d.is_dir() and EnvName.is_valid(d.name))
        except FileNotFoundError:
            return []
        for text in names:
            entry = known.get(text)
            try:
                stamp = os.stat(self.root / text).st_mtime_ns
            except FileNotFoundError:
                continue
            if entry is None or not entry.settled or entry.stamp != stamp:
                entry = _list_entry(self.name_index(EnvName.parse(text)))
                changed = True
            out.append(entry)
        if changed or len(out) != len(known):
            self._save(self._list_path(), ListIndex(tuple(out)))
        return out

    # --- files ----------------------------------------------------------------------------

    def _name_path(self, name: EnvName) -> Path:
        return self.root / INDEX_DIR / "names" / f"{name}.json"

    def _list_path(self) -> Path:
        return self.root / INDEX_DIR / "list.json"

    def _load(self, path: Path, kind: type[_Index]) -> _Index | None:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                return None
            return kind.from_dict(data)
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            return None   # missing, torn or from another version: rebuilt

    def _save(self, path: Path, index: NameIndex | ListIndex) -> None:
        """Write an index file; a reader who may not (permissions, read-only mount) just goes
        without: the index is a cache."""
        try:
            ensure_shared_dir(path.parent, mode=self.dir_mode, group=self.group)
            # No fsync: a file torn by a crash fails to parse and is rebuilt.
            atomic_write_text(path, json.dumps(index.to_dict(), separators=(",", ":")),
                              mode=self.file_mode, group=self.group, fsync=False)
        except OSError:
            pass

    def _filesystem_now(self) -> int | None:
        """The filesystem's clock in ns (an NFS server's, not this host's): the mtime of a file
        created in ``.index``; None when we may not create one (nothing then counts as
        settled)."""
        directory = self.root / INDEX_DIR
        try:
            ensure_shared_dir(directory, mode=self.dir_mode, group=self.group)
            fd, probe = tempfile.mkstemp(prefix=f".clock-{secrets.token_hex(4)}-", dir=directory)
        except OSError:
            return None
        try:
            return os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
            os.unlink(probe)


def _current_version(directory: Path) -> int | None:
    try:
        return int((directory / "current").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None   # a broken ``current`` is reported by Registry.current_version


def _list_entry(index: NameIndex) -> ListEntry:
    """The ``env list`` entry of a name: the names with at least one ``ready`` version are
    environments; a name whose builds all failed, or were all removed, is history only."""
    ready = [e for e in index.versions if e.status == "ready"]
    if not ready:
        pending = tuple(e for e in index.versions if e.status in ("failed", "building"))
        return ListEntry(index.name, index.stamp, index.settled, None, pending)
    current = next((e for e in index.versions if e.version == index.current), None)
    summary = EnvSummary(
        name=index.name, current=index.current, versions=len(ready),
        cuda=current.cuda if current else None,
        prefix=current.prefix if current else None,
        created=current.created if current else None,
        creator=current.creator if current else None,
        packages=current.packages if current else None,
        size_bytes=current.size_bytes if current else None,
        unique_bytes=current.unique_bytes if current else None)
    return ListEntry(index.name, index.stamp, index.settled, summary)
