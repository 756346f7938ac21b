"""The registry's index: what ``env list``, ``env history``, a reuse and a new build read instead
of every record file, so they cost the same with 10,000 envs or versions as with 10.

A cache its readers keep beside the registry; writers never touch it::

    ROOT/.index/names/NAME.json     NAME's versions (per record: what history, list and the
                                    builder's lookups need, and the record file's stat
                                    signature), its current version, and the mtime of ROOT/NAME
                                    it describes
    ROOT/.index/history/NAME.jsonl  the text ``env history NAME`` prints, and that mtime again
    ROOT/.index/list.jsonl          ROOT's names, and per name: its ``env list`` line and data,
                                    and the mtime of ROOT/NAME they describe; ROOT's mtime

``env list`` and ``env history`` print the stored text (:mod:`hpcenv.store.registry_text`
makes it) after one ``stat`` per name: with 10,000 names, formatting the rows, or even making
an object of each, would cost more than the rest of the command.

**Never wrong, only stale, and never used stale.**  Every change of the registry renames a file
into ROOT/NAME (records, ``current``, lockfiles and logs are written as a temp file renamed
over the old one; the name lock's lease dirs come and go there too), and the filesystem then
sets ROOT/NAME's mtime, on an NFS server by the server's clock.  An index entry is used only
while that mtime equals the one it was built at, so no flock, lease or cooperation from writers
(older hpcenv versions included) is needed, and a crashed or racing reader can at worst leave
an entry that the next reader sees is outdated.  A name whose directory changed is re-read, but
only its changed record files: the others' stat signatures (inode, size, mtime, ctime) still
match.  The list of names is trusted while ROOT keeps its mtime (a name directory made or
removed moves it); else ROOT is listed again.  Index files are written whole and renamed into
place; a torn or unreadable one is rebuilt.

A change in the same timestamp tick as the mtime an entry was built at would not move the
mtime (coarse-grained clocks, servers with 1 s timestamps), so an entry only counts as settled,
and is trusted later, when that mtime was already :data:`SETTLE_NS` old by the filesystem's own
clock (read by creating a file in ``.index``) before the directory was read; until then every
reader re-checks it.  The same holds for each record's signature and for ROOT's mtime.  Files
edited in place by hand (not replaced) do not move the mtime: ``touch ROOT/NAME`` afterwards.

A reader that may not write ``.index`` (another group, a read-only mount) reads the records, as
without an index.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hpcenv.fsutil import atomic_write_text, ensure_shared_dir
from hpcenv.records import Codec, JsonRecord, json_meta
from hpcenv.spec.names import EnvName
from hpcenv.store.registry_text import TEXT_VERSION, env_line, list_text, unfinished_lines

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

    def entries(self, status: str | None = None) -> list[VersionEntry]:
        """Every version's entry, or those in ``status`` (picked from the rows: an object made
        for each of 10,000 versions would cost a build ~25 ms)."""
        return [VersionEntry(*row) for row in self.versions
                if status is None or row[_STATUS] == status]

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


# The keys of EnvSummary.to_dict(), in its order: a list.jsonl of other columns is rebuilt.
SUMMARY_COLUMNS = [f.name for f in fields(EnvSummary)] + list(EnvSummary.JSON_PROPERTIES)


@dataclass(frozen=True)
class ListIndex:
    """``list.jsonl``: what ``env list`` shows of each name directory of ROOT.  JSON lines, so
    a reader parses only what it uses: the printed lines, or the data ``--json`` gets::

        {"format": FORMAT, "text": TEXT_VERSION, "columns": SUMMARY_COLUMNS, "stamp": STAMP}
        [NAME, ...]                every name directory, sorted; STAMP: ROOT's mtime then
        [STAMP, ...]               per name: ROOT/NAME's mtime when its entry was made
        [ENV_LINE, ...]            per name: its env list row, "" without a ready version
        [HINT, ...]                per name: its hint when its builds never finished, else ""
        [[SUMMARY, PENDING], ...]  per name: ``EnvSummary.to_dict()`` values in ``columns``
                                   order (null: no ready version), and if it has no ready
                                   version its failed and building ones (``VersionEntry``
                                   dicts)

    A null stamp was too recent to trust (see the module doc): the next reader lists ROOT, or
    reads that name, again.  ``env_lines``, ``hints`` and ``entries`` are None in an index
    read without them."""

    stamp: int | None
    names: list[str]
    stamps: list[int | None]
    env_lines: list[str] | None
    hints: list[str] | None
    entries: list[Any] | None

    @classmethod
    def parse(cls, header: dict[str, Any], lines: list[bytes], *, text: bool,
              entries: bool) -> ListIndex | None:
        """The index from ``list.jsonl``'s header and the lines after it (all five with
        ``entries``), with the printed lines (``text``) and the data (``entries``); None when
        damaged."""
        try:
            with gc_paused():
                names, stamps = (json.loads(line) for line in lines[:2])
                env_lines = json.loads(lines[2]) if text else None
                hints = json.loads(lines[3]) if text else None
                data = json.loads(lines[4]) if entries else None
        except ValueError:
            return None
        count = len(names) if isinstance(names, list) else -1
        if not (header.get("columns") == SUMMARY_COLUMNS
                and isinstance(header.get("stamp"), int | None)
                and _all_of({str}, names) and _all_of({int, type(None)}, stamps, count)
                and (not text or _all_of({str}, env_lines, count)
                     and _all_of({str}, hints, count))
                and (not entries or isinstance(data, list) and len(data) == count
                     and all(_well_formed(entry) for entry in data))):
            return None
        return cls(header["stamp"], names, stamps, env_lines, hints, data)

    def dump(self) -> str:
        header = {"format": FORMAT, "text": TEXT_VERSION, "columns": SUMMARY_COLUMNS,
                  "stamp": self.stamp}
        return "".join(json.dumps(part, separators=(",", ":")) + "\n" for part in (
            header, self.names, self.stamps, self.env_lines, self.hints, self.entries))

    def text(self) -> str:
        """What ``env list`` prints: the environments' rows, then the hints ("" if none)."""
        assert self.env_lines is not None and self.hints is not None
        return list_text([line for line in self.env_lines if line],
                         [hint for hint in self.hints if hint])


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

    def list_index(self, *, text: bool) -> ListIndex:
        """The list index, with the printed lines (``text``) or with the data: as stored while
        ROOT has the same names and none of their directories changed, else brought up to date
        (only the changed names read again) and saved."""
        # The printed lines come before the data, which they need not read.
        loaded = self._load_lines(self._list_path(), 4 if text else 5)
        stored = ListIndex.parse(*loaded, text=text, entries=not text) if loaded else None
        if stored is not None and stored.stamp is not None and self._unchanged(stored):
            return stored
        loaded = self._load_lines(self._list_path(), 5) if text else loaded
        return self._update_list(ListIndex.parse(*loaded, text=True, entries=True)
                                 if loaded else None)

    def _unchanged(self, stored: ListIndex) -> bool:
        """Whether ROOT and every name directory still have the mtimes ``stored`` was made at:
        one ``stat`` per name, relative to the open ROOT (one lookup each, not one per path
        component), and no object made per name."""
        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return False
        stat = os.stat
        try:
            return stat(root).st_mtime_ns == stored.stamp and [
                stat(name, dir_fd=root).st_mtime_ns for name in stored.names] == stored.stamps
        except (FileNotFoundError, NotADirectoryError):
            return False
        finally:
            os.close(root)

    def _update_list(self, stored: ListIndex | None) -> ListIndex:
        """The list index made anew: ROOT listed, each name's entry kept from ``stored`` while
        its directory has the mtime it was made at, else made from its name index; saved."""
        known = {} if stored is None else {
            name: (stamp, line, hint, entry) for name, stamp, line, hint, entry in zip(
                stored.names, stored.stamps, stored.env_lines or [], stored.hints or [],
                stored.entries or [])}
        try:
            root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return ListIndex(None, [], [], [], [], [])
        # Before any directory is read (see the module doc); also what the names re-read use.
        now = self._filesystem_now()
        names, stamps, env_lines, hints, entries = [], [], [], [], []
        try:
            root_stamp = os.stat(root).st_mtime_ns
            with os.scandir(root) as listing:
                found = sorted(d.name for d in listing
                               if d.is_dir() and EnvName.is_valid(d.name))
            for name in found:
                try:
                    stamp = os.stat(name, dir_fd=root).st_mtime_ns
                except FileNotFoundError:
                    continue
                kept = known.get(name)
                if kept is None or kept[0] is None or kept[0] != stamp:
                    # Not kept per name: a first listing of 10,000 envs would write 10,000
                    # files; env history and the builder keep the names they use.
                    index = self.name_index(EnvName.parse(name), clock=lambda: now, keep=False)
                    kept = _list_entry(index)
                names.append(name)
                for column, value in zip((stamps, env_lines, hints, entries), kept):
                    column.append(value)
        finally:
            os.close(root)
        settled = now is not None and root_stamp < now - SETTLE_NS
        updated = ListIndex(root_stamp if settled else None, names, stamps, env_lines, hints,
                            entries)
        if updated != stored:
            self._save_text(self._list_path(), updated.dump())
        return updated

    # --- env history ----------------------------------------------------------------------

    def history_text(self, name: EnvName, render: Callable[[NameIndex], str]) -> str:
        """What ``env history NAME`` prints: as stored while ROOT/NAME keeps the mtime it was
        made at, else ``render`` of the name's index (stored once settled)."""
        path = self._history_path(name)
        try:
            stamp = os.stat(self.root / name).st_mtime_ns
        except (FileNotFoundError, NotADirectoryError):
            stamp = None
        loaded = self._load_lines(path, 1) if stamp is not None else None
        if loaded is not None:
            header, lines = loaded
            try:
                text = json.loads(lines[0])
            except ValueError:
                text = None
            if header.get("stamp") == stamp and isinstance(text, str):
                return text
        index = self.name_index(name)
        text = render(index)
        if index.settled:
            header = {"format": FORMAT, "text": TEXT_VERSION, "stamp": index.stamp}
            self._save_text(path, f"{json.dumps(header)}\n{json.dumps(text)}\n")
        return text

    # --- files ----------------------------------------------------------------------------

    def _name_path(self, name: EnvName) -> Path:
        return self.root / INDEX_DIR / "names" / f"{name}.json"

    def _history_path(self, name: EnvName) -> Path:
        return self.root / INDEX_DIR / "history" / f"{name}.jsonl"

    def _list_path(self) -> Path:
        return self.root / INDEX_DIR / "list.jsonl"

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

    @staticmethod
    def _load_lines(path: Path, count: int) -> tuple[dict[str, Any], list[bytes]] | None:
        """The header of a JSON-lines index file, checked (the format, and the version of the
        text it holds), and the ``count`` lines after it, unparsed; None when missing, torn or
        of another format (rebuilt)."""
        try:
            with open(path, "rb") as file:
                header = json.loads(file.readline())
                lines = [file.readline() for _ in range(count)]
        except (OSError, ValueError):
            return None
        # A torn line is no JSON: its reader rebuilds the file.
        return (header, lines) if (isinstance(header, dict) and header.get("format") == FORMAT
                                   and header.get("text") == TEXT_VERSION) else None

    def _save(self, path: Path, index: NameIndex) -> None:
        self._save_text(path, json.dumps(index.to_dict(), separators=(",", ":")))

    def _save_text(self, path: Path, text: str) -> None:
        """Write an index file; a reader who may not (permissions, read-only mount) just goes
        without: the index is a cache."""
        try:
            ensure_shared_dir(path.parent, mode=self.dir_mode, group=self.group)
            # No fsync: a file torn by a crash fails to parse (the text's JSON strings
            # included: a zero-filled block is no JSON) and is rebuilt.
            atomic_write_text(path, text, mode=self.file_mode, group=self.group, fsync=False)
        except OSError:
            pass

    def _filesystem_now(self) -> int | None:
        """The filesystem's clock in ns (an NFS server's, not this host's): the mtime of a file
        created in ``.index``; None when we may not create one (nothing then counts as
        settled)."""
        directory = self.root / INDEX_DIR
        try:
            ensure_shared_dir(directory, mode=self.dir_mode, group=self.group)
            import tempfile  # only to probe the clock, when an index is rebuilt

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


def _all_of(kinds: set[type], values: Any, count: int | None = None) -> bool:
    """Whether ``values`` is a list of values of ``kinds`` (of ``count`` items, if given)."""
    return (isinstance(values, list) and (count is None or len(values) == count)
            and set(map(type, values)) <= kinds)   # no Python call per value


def _well_formed(entry: Any) -> bool:
    """Whether a ``list.jsonl`` entry has the shape :func:`_list_entry` gives it."""
    if not (isinstance(entry, list) and len(entry) == 2):
        return False
    summary, pending = entry
    return (summary is None or isinstance(summary, list) and len(summary) == len(SUMMARY_COLUMNS)
            ) and isinstance(pending, list) and all(
        isinstance(p, dict) and _ENTRY_KEYS <= p.keys() for p in pending)


def _list_entry(index: NameIndex) -> tuple[int | None, str, str, list[Any]]:
    """A name's ``list.jsonl`` stamp, env line, hint and entry: the names with at least one
    ``ready`` version are environments; a name whose builds all failed, or were all removed,
    is history only."""
    stamp = index.stamp if index.settled else None
    ready = sum(1 for row in index.versions if row[_STATUS] == "ready")
    if not ready:
        pending = [dict(zip(ENTRY_COLUMNS, row)) for row in index.versions
                   if row[_STATUS] in ("failed", "building")]
        return (stamp, "", unfinished_lines(index.name, pending) if pending else "",
                [None, pending])
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
    return stamp, env_line(summary), "", [[summary[c] for c in SUMMARY_COLUMNS], []]
