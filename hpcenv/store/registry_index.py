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

import gc
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hpcenv.fsutil import atomic_write_text, ensure_shared_dir
from hpcenv.records import Codec, JsonRecord, json_meta
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


# The values of a VersionEntry, in this order, are a row of a NameIndex.
ENTRY_COLUMNS = [f.name for f in fields(VersionEntry)]
_VERSION, _STATUS, _KEY, _SIGNATURE = (ENTRY_COLUMNS.index(c)
                                       for c in ("version", "status", "key", "signature"))


@dataclass(frozen=True)
class NameIndex(JsonRecord):
    """``names/NAME.json``: one name's versions, oldest first, as of ROOT/NAME's mtime
    ``stamp``; each a row of :class:`VersionEntry` values in ``columns`` order.  Rows, not
    objects: a reader of 10,000 versions parses a fifth of the JSON, and makes objects only
    of the rows it uses."""

    name: str
    stamp: int
    settled: bool
    current: int | None
    columns: list[str]
    # Rows (lists of JSON values), ordered by version: written and read as they are.
    versions: list[Any] = field(metadata=json_meta(codec=Codec(encode=list, decode=list)))

    format: int = FORMAT

    def entries(self) -> list[VersionEntry]:
        return [VersionEntry(*row) for row in self.versions]

    def first(self) -> VersionEntry | None:
        return VersionEntry(*self.versions[0]) if self.versions else None

    def newest(self, key: str, status: str) -> list[int]:
        """Versions built with ``key`` in ``status``, newest first."""
        return [row[_VERSION] for row in reversed(self.versions)
                if row[_KEY] == key and row[_STATUS] == status]


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
class ListIndex(JsonRecord):
    """``list.json``: per name directory, what ``env list`` shows of it, as of the directory's
    mtime: ``[stamp, settled, summary, pending]``, where ``summary`` is the values of
    ``EnvSummary.to_dict()`` in ``columns`` order (null: no ready version), and ``pending`` the
    failed and building versions of a name without a ready one (``VersionEntry.to_dict()``).
    Kept as plain JSON rows: ``env list`` prints them as they are, and 10,000 records made
    only to be turned back into JSON would cost more than the rest of the command."""

    columns: list[str]
    names: dict[str, list[Any]]
    format: int = FORMAT


# The keys of EnvSummary.to_dict(), in its order: a list.json of other columns is rebuilt.
SUMMARY_COLUMNS = [f.name for f in fields(EnvSummary)] + list(EnvSummary.JSON_PROPERTIES)


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
        # Settled name indexes this object read or made: valid while their stamp is, like the
        # files, and not parsed again (a build looks a name up several times).
        self._settled: dict[str, NameIndex] = {}

    # --- one name -------------------------------------------------------------------------

    def name_index(self, name: EnvName, *, clock: Callable[[], int | None] | None = None,
                   keep: bool = True) -> NameIndex:
        """``name``'s versions: from the index while ROOT/NAME has not changed since, else
        read again (only the record files that changed) and, with ``keep``, saved.
        ``clock``: the filesystem's time to judge that by, if the caller read it already (any
        time before this call will do: an earlier "now" only settles fewer entries)."""
        try:
            stamp = os.stat(self.root / name).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            return NameIndex(name, 0, False, None, ENTRY_COLUMNS, [])
        held = self._settled.get(name)
        if held is not None and held.stamp == stamp:
            return held
        cached = self._load_name(name)
        if cached is not None and cached.settled and cached.stamp == stamp:
            self._settled[name] = cached
            return cached
        index = self._read_name(name, cached, (clock or self._filesystem_now)())
        if index.settled:
            self._settled[name] = index
        # An index as unsettled as the one there, with the same rows, helps nobody: not saved.
        if keep and (cached is None or index.settled or (index.current, index.versions) != (
                cached.current, cached.versions)):
            self._save(self._name_path(name), index)
        return index

    def _load_name(self, name: EnvName) -> NameIndex | None:
        data = self._load_json(self._name_path(name))
        if data is None or data.get("columns") != ENTRY_COLUMNS:
            return None
        try:
            index = NameIndex.from_dict(data)
        except (TypeError, ValueError):
            return None
        width = len(ENTRY_COLUMNS)
        if not (isinstance(index.stamp, int) and isinstance(index.current, int | None)
                and isinstance(index.versions, list)
                and all(isinstance(row, list) and len(row) == width and
                        isinstance(row[_VERSION], int) for row in index.versions)):
            return None   # damaged: read every record
        return index

    def _read_name(self, name: EnvName, cached: NameIndex | None, now: int | None
                   ) -> NameIndex:
        """Read ROOT/NAME again, reusing ``cached`` rows whose record file is unchanged;
        ``now``: the filesystem's clock read before (see the module doc)."""
        directory = self.root / name
        stamp = os.stat(directory).st_mtime_ns
        known = {row[_VERSION]: row for row in cached.versions} if cached is not None else {}
        rows = []
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as listing:
                files = [d.name for d in listing
                         if d.name.endswith(".json") and d.name[:-5].isdigit()]
            for filename in files:
                try:
                    st = os.stat(filename, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                settled = now is not None and st.st_mtime_ns < now - SETTLE_NS
                signature = (f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
                             if settled else "")
                row = known.get(int(filename[:-5]))
                if row is None or not signature or row[_SIGNATURE] != signature:
                    # The stat came first: a record replaced meanwhile is read newer than its
                    # signature says, so the next reader reads it again rather than trust it.
                    entry = self.read_entry(directory / filename, signature)
                    row = None if entry is None else [getattr(entry, c) for c in ENTRY_COLUMNS]
                if row is not None:
                    rows.append(row)
        finally:
            os.close(fd)
        rows.sort(key=lambda row: row[_VERSION])
        return NameIndex(name, stamp, now is not None and stamp < now - SETTLE_NS,
                         _current_version(directory), ENTRY_COLUMNS, rows)

    # --- every name -----------------------------------------------------------------------

    def list_lines(self) -> dict[str, list[Any]]:
        """Per name directory, by name, its ``list.json`` line (see :class:`ListIndex`): kept
        for the names whose directory has not changed since, made anew for the others."""
        data = self._load_json(self._list_path())
        known = data.get("names") if data is not None else None
        changed = not isinstance(known, dict) or data.get("columns") != SUMMARY_COLUMNS
        if changed:
            known = {}
        out: dict[str, list[Any]] = {}
        clock: list[int | None] = []

        def now() -> int | None:
            """The filesystem's clock, read once for all the names this listing re-reads."""
            if not clock:
                clock.append(self._filesystem_now())
            return clock[0]

        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return {}
        try:
            with os.scandir(root) as listing:
                # A name in list.json was checked when it was added.
                names = sorted(d.name for d in listing if d.is_dir()
                               and (d.name in known or EnvName.is_valid(d.name)))
            for text in names:
                line = known.get(text)
                try:
                    # Relative to the open root: one lookup per name, not one per component.
                    stamp = os.stat(text, dir_fd=root).st_mtime_ns
                except FileNotFoundError:
                    continue
                if not (isinstance(line, list) and len(line) == 4 and line[0] == stamp
                        and line[1] is True and _well_formed(line)):
                    # Not kept per name: a first listing of 10,000 envs would write 10,000
                    # files; env history and the builder keep the names they use.
                    line = _list_line(self.name_index(EnvName.parse(text), clock=now,
                                                      keep=False))
                    changed = True
                out[text] = line
        finally:
            os.close(root)
        if changed or len(out) != len(known):
            self._save(self._list_path(), ListIndex(SUMMARY_COLUMNS, out))
        return out

    # --- files ----------------------------------------------------------------------------

    def _name_path(self, name: EnvName) -> Path:
        return self.root / INDEX_DIR / "names" / f"{name}.json"

    def _list_path(self) -> Path:
        return self.root / INDEX_DIR / "list.json"

    @staticmethod
    def _load_json(path: Path) -> dict[str, Any] | None:
        """An index file's JSON; None when missing, torn or of another format (rebuilt)."""
        try:
            text = path.read_text()
            with gc_paused():
                data = json.loads(text)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("format") == FORMAT else None

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
            fd, probe = tempfile.mkstemp(prefix=".clock-", dir=directory)
        except OSError:
            return None
        try:
            return os.fstat(fd).st_mtime_ns
        finally:
            os.close(fd)
            os.unlink(probe)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while thousands of index rows become objects:
    they hold no cycles, and every collection on the way would walk all objects made so far
    (a third of the time of parsing a 10,000-env list.json)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _current_version(directory: Path) -> int | None:
    try:
        return int((directory / "current").read_text().strip())
    except (FileNotFoundError, ValueError):
        return None   # a broken ``current`` is reported by Registry.current_version


_ENTRY_KEYS = {f.name for f in fields(VersionEntry)}


def _well_formed(line: list[Any]) -> bool:
    """Whether a ``list.json`` line has the shape :func:`_list_line` gives it."""
    _stamp, _settled, summary, pending = line
    return (summary is None or isinstance(summary, list) and len(summary) == len(SUMMARY_COLUMNS)
            ) and isinstance(pending, list) and all(
        isinstance(p, dict) and _ENTRY_KEYS <= p.keys() for p in pending)


def _list_line(index: NameIndex) -> list[Any]:
    """The ``list.json`` line of a name: the names with at least one ``ready`` version are
    environments; a name whose builds all failed, or were all removed, is history only."""
    ready = sum(1 for row in index.versions if row[_STATUS] == "ready")
    if not ready:
        pending = [dict(zip(ENTRY_COLUMNS, row)) for row in index.versions
                   if row[_STATUS] in ("failed", "building")]
        return [index.stamp, index.settled, None, pending]
    current = next((VersionEntry(*row) for row in index.versions
                    if row[_VERSION] == index.current), None)
    summary = EnvSummary(
        name=index.name, current=index.current, versions=ready,
        cuda=current.cuda if current else None,
        prefix=current.prefix if current else None,
        created=current.created if current else None,
        creator=current.creator if current else None,
        packages=current.packages if current else None,
        size_bytes=current.size_bytes if current else None,
        unique_bytes=current.unique_bytes if current else None).to_dict()
    return [index.stamp, index.settled, [summary[c] for c in SUMMARY_COLUMNS], []]
