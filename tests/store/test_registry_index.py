"""The registry's index (hpcenv.store.registry_index): env list, env history and the builder's
lookups read it instead of every record, and it is never used stale: every answer equals what
reading all records gives, whatever the writers did, including changes the directory's mtime
cannot show (same timestamp tick) and writers in other processes racing the readers."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from test_registry import record

from hpcenv.store.registry import EnvRecord, EnvSummary, Registry
from hpcenv.store.registry_index import INDEX_DIR, SETTLE_NS
from hpcenv.store.registry_text import (
    TEXT_VERSION,
    env_line,
    history_text,
    list_text,
    unfinished_lines,
)


def truth(reg: Registry) -> tuple[list[tuple], dict[str, list[tuple]], str, dict[str, str]]:
    """env list and every history as reading every record file gives them (no index): as
    data, and as the text env list and env history print."""
    summaries = []
    histories = {}
    env_lines, hints, history_texts = [], [], {}
    for name in reg.names():
        versions = reg.versions(name)
        current = reg.current_version(name)
        histories[name] = [(r.version, r.version == current, r.status, r.key, r.creator)
                           for r in versions]
        history_texts[name] = history_text([
            {"version": r.version, "current": r.version == current, "status": r.status,
             "cuda": r.cuda.version, "key": r.key, "created": r.created, "creator": r.creator}
            for r in versions])
        ready = [r for r in versions if r.status == "ready"]
        if ready:
            now = next((r for r in versions if r.version == current), None)
            summaries.append((name, current, len(ready), now.prefix if now else None))
            env_lines.append(env_line(EnvSummary(
                name=name, current=current, versions=len(ready),
                cuda=now.cuda.version if now else None, prefix=now.prefix if now else None,
                created=now.created if now else None, creator=now.creator if now else None,
                packages=now.packages if now else None,
                size_bytes=now.size_bytes if now else None,
                unique_bytes=now.unique_bytes if now else None).to_dict()))
        elif pending := [{"version": r.version, "status": r.status, "error": r.error}
                         for r in versions if r.status in ("failed", "building")]:
            hints.append(unfinished_lines(name, pending))
    return summaries, histories, list_text(env_lines, hints), history_texts


def indexed(reg: Registry) -> tuple[list[tuple], dict[str, list[tuple]], str, dict[str, str]]:
    summaries = [(s.name, s.current, s.versions, s.prefix) for s in reg.summaries()]
    histories = {name: [(h.version, h.current, h.status, h.key, h.creator)
                        for h in reg.history(name)] for name in reg.names()}
    return (summaries, histories, reg.list_text(),
            {name: reg.history_text(name) for name in reg.names()})


def age(reg: Registry, seconds: float = 10.0) -> None:
    """Make every registry file and dir look ``seconds`` old: what a registry nobody wrote to
    for a while looks like, whose index entries then count as settled."""
    then = time.time() - seconds
    for root, dirs, files in os.walk(reg.root):
        if INDEX_DIR in Path(root).parts:
            continue
        for entry in files + dirs:
            if entry != INDEX_DIR:
                os.utime(os.path.join(root, entry), (then, then))
    for name in reg.names():
        os.utime(reg.root / name, (then, then))
    os.utime(reg.root, (then, then))


class ReadCounter:
    """Counts the record files the index reads."""

    def __init__(self, reg: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        read = reg.index.read_entry

        def counting(path: Path, signature: str):  # type: ignore[no-untyped-def]
            self.count += 1
            return read(path, signature)

        monkeypatch.setattr(reg.index, "read_entry", counting)

    def reset(self) -> int:
        count, self.count = self.count, 0
        return count


def test_every_change_shows_at_once(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.allocate("a", lambda v: record("a", v, key="1" * 64))
    reg.set_current("a", 1)
    reg.allocate("b", lambda v: record("b", v, status="failed"))
    assert indexed(reg) == truth(reg)
    assert [s.name for s in reg.summaries()] == ["a"] and list(reg.unfinished()) == ["b"]
    reg.allocate("a", lambda v: record("a", v, key="2" * 64, status="building"))
    assert indexed(reg) == truth(reg)
    assert reg.find_ready("2" * 64, "a") is None
    reg.set_status("a", 2, "ready")
    reg.set_current("a", 2)
    assert indexed(reg) == truth(reg)
    assert reg.find_ready("2" * 64, "a").version == 2
    assert [s.current for s in reg.summaries()] == [2]
    reg.set_status("b", 1, "ready")
    assert [s.name for s in reg.summaries()] == ["a", "b"] and reg.unfinished() == {}
    reg.set_status("a", 2, "retired")
    assert indexed(reg) == truth(reg) and reg.find_ready("2" * 64, "a") is None


def test_a_settled_index_reads_only_changed_records(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path / "reg")
    for _ in range(20):
        reg.allocate("a", lambda v: record("a", v, key=f"{v:064d}"))
    reg.set_current("a", 20)
    reads = ReadCounter(reg, monkeypatch)
    assert len(reg.history("a")) == 20
    assert reads.reset() == 20
    age(reg)
    reg.history("a")
    assert reads.reset() == 20   # the first read after the files settled records signatures
    for _ in range(3):
        assert indexed(reg) == truth(reg)
        assert reg.find_ready(f"{7:064d}", "a").version == 7
    assert reads.reset() == 0    # nothing changed: no record file read
    reg.set_status("a", 7, "failed")
    assert reg.find_ready(f"{7:064d}", "a") is None
    assert reads.reset() == 1    # only the record that changed
    assert indexed(reg) == truth(reg)


def test_a_change_in_the_same_mtime_tick_is_not_missed(tmp_path: Path) -> None:
    """A record replaced without moving its directory's mtime (two changes in one timestamp
    tick of a coarse clock): an index made while that mtime was recent is checked again."""
    reg = Registry(tmp_path / "reg")
    reg.allocate("a", lambda v: record("a", v))
    directory = reg.root / "a"
    assert reg.history("a")[0].status == "ready"   # index made now: the mtime is recent
    before = os.stat(directory)
    path = directory / "1.json"
    data = json.loads(path.read_text())
    data["status"] = "failed"
    reg._write_json(path, data)
    os.utime(directory, ns=(before.st_atime_ns, before.st_mtime_ns))   # the same tick
    assert reg.history("a")[0].status == "failed"
    assert reg.summaries() == [] and list(reg.unfinished()) == ["a"]


def test_a_settled_listing_reads_no_record_and_does_not_list_the_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """env list of a registry nobody changed: the stored lines, after one stat per name."""
    reg = Registry(tmp_path / "reg")
    for name in ("a", "b", "c"):
        reg.allocate(name, lambda v, name=name: record(name, v, status="ready" if name != "c"
                                                       else "failed"))
    expected = truth(reg)
    assert indexed(reg) == expected
    age(reg)   # the registry (which the first listing's .index changed) settles
    assert indexed(reg) == expected
    fresh = Registry(reg.root)
    reads = ReadCounter(fresh, monkeypatch)
    listed = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda *a: listed.append(a) or scandir(*a))
    assert fresh.list_text() == expected[2]
    assert [fresh.history_text(name) for name in ("a", "b", "c")] == list(expected[3].values())
    assert reads.count == 0 and listed == []


def test_names_made_or_removed_show_at_once(tmp_path: Path) -> None:
    """The stored names are trusted while the registry directory keeps its mtime: a name made
    or removed moves it, also when the listing was made while that mtime was recent and the
    change fell in its timestamp tick."""
    reg = Registry(tmp_path / "reg")
    reg.allocate("a", lambda v: record("a", v))
    assert indexed(reg) == truth(reg)
    age(reg)
    assert indexed(reg) == truth(reg)
    reg.allocate("b", lambda v: record("b", v))
    assert "\nb " in reg.list_text() and indexed(reg) == truth(reg)
    age(reg)
    (reg.root / "notes.txt").write_text("no env\n")   # the registry's mtime, recent again
    assert indexed(reg) == truth(reg)   # its names settled, the list of them not
    before = os.stat(reg.root)
    reg.allocate("c", lambda v: record("c", v))
    os.utime(reg.root, ns=(before.st_atime_ns, before.st_mtime_ns))   # the same tick
    assert "\nc " in reg.list_text() and indexed(reg) == truth(reg)
    age(reg)
    assert indexed(reg) == truth(reg)
    shutil.rmtree(reg.root / "b")
    assert "\nb " not in reg.list_text() and indexed(reg) == truth(reg)


def test_an_index_is_not_trusted_with_a_recent_mtime(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.allocate("a", lambda v: record("a", v))
    reg.history("a")
    stored = json.loads((reg.root / INDEX_DIR / "names" / "a.json").read_text())
    assert stored["settled"] is False
    age(reg, 2 * SETTLE_NS / 1e9)
    reg.history("a")
    stored = json.loads((reg.root / INDEX_DIR / "names" / "a.json").read_text())
    assert stored["settled"] is True and stored["stamp"] == os.stat(reg.root / "a").st_mtime_ns


def _damaged(text: str, damage: str) -> str:
    """``text`` of an index file (JSON, or JSON lines after a header line) as ``damage`` leaves
    it."""
    if damage == "torn":
        return text[: len(text) // 2]
    if damage == "garbage":
        return "\0\0\0"
    if damage == "zeroed":   # a crash before the data reached the disk: the size, no content
        return text[:10] + "\0" * (len(text) - 20) + text[-10:]
    if damage == "torn-line":   # whole lines, the last one cut short
        return text[: text.rfind("\n", 0, len(text) - 1) + 10]
    if damage == "wrong-types":
        if not text.endswith("\n"):   # names/NAME.json: one object
            data = json.loads(text)
            return json.dumps({k: ("x" if k != "format" else v) for k, v in data.items()})
        header, *rest = text.splitlines()
        return "\n".join([header, *('["x", 1]' for _ in rest)]) + "\n"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["torn", "torn-line", "garbage", "zeroed", "wrong-types",
                                    "missing"])
def test_a_damaged_index_is_rebuilt(tmp_path: Path, damage: str) -> None:
    reg = Registry(tmp_path / "reg")
    for name in ("a", "b"):
        reg.allocate(name, lambda v, name=name: record(name, v))
        reg.set_current(name, 1)
    reg.allocate("c", lambda v: record("c", v, status="failed"))
    age(reg)
    expected = truth(reg)
    assert indexed(reg) == expected
    for name in reg.names():   # its own name index (the listing's is held in memory)
        Registry(reg.root).history(name)
    files = sorted(p.relative_to(reg.root / INDEX_DIR).as_posix()
                   for p in (reg.root / INDEX_DIR).rglob("*.json*"))
    assert files == ["history/a.jsonl", "history/b.jsonl", "history/c.jsonl", "list.jsonl",
                     "names/a.json", "names/b.json", "names/c.json"]
    for file in files:
        path = reg.root / INDEX_DIR / file
        if damage == "missing":
            path.unlink()
        else:
            path.write_text(_damaged(path.read_text(), damage))
    assert indexed(reg) == expected
    assert indexed(reg) == expected


def test_lines_printed_by_another_hpcenv_are_made_anew(tmp_path: Path) -> None:
    """Index files holding text of another TEXT_VERSION (an hpcenv that prints otherwise) are
    not printed, though their directories did not change."""
    reg = Registry(tmp_path / "reg")
    reg.allocate("a", lambda v: record("a", v))
    reg.set_current("a", 1)
    age(reg)
    expected = truth(reg)
    assert indexed(reg) == expected
    for path in (reg.root / INDEX_DIR / "list.jsonl", reg.root / INDEX_DIR / "history" / "a.jsonl"):
        header, *rest = path.read_text().splitlines()
        data = json.loads(header)
        assert data["text"] == TEXT_VERSION
        path.write_text("\n".join([json.dumps(data | {"text": TEXT_VERSION + 1}),
                                   *(line.replace("alice", "mallory") for line in rest)]) + "\n")
    assert indexed(reg) == expected


def test_readers_who_cannot_write_the_index_read_the_records(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.allocate("a", lambda v: record("a", v))
    (reg.root / INDEX_DIR).write_text("not a directory\n")   # every index write fails
    assert indexed(reg) == truth(reg)
    reg.set_status("a", 1, "failed")
    assert indexed(reg) == truth(reg)


def _writer(root: str, name: str, count: int) -> None:
    reg = Registry(root)
    for i in range(count):
        made = reg.allocate(name, lambda v: record(name, v, key=f"{i:064d}", status="building"))
        reg.set_status(name, made.version, "ready" if i % 3 else "failed")
        if i % 2:
            reg.set_current(name, made.version)


def _reader(root: str, stop: multiprocessing.synchronize.Event) -> None:
    reg = Registry(root)
    while not stop.is_set():
        reg.summaries()
        reg.list_text()
        for name in reg.names():
            reg.history(name)
            reg.history_text(name)


def test_racing_writers_and_readers_leave_an_index_that_matches_the_records(
        tmp_path: Path) -> None:
    """Writer processes allocate and change records while reader processes keep the index;
    afterwards every answer equals the records, also once the files have settled."""
    root = str(tmp_path / "reg")
    Registry(root).allocate("a", lambda v: record("a", v))
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    readers = [ctx.Process(target=_reader, args=(root, stop)) for _ in range(2)]
    writers = [ctx.Process(target=_writer, args=(root, name, 15))
               for name in ("a", "a", "b", "c")]
    for proc in readers + writers:
        proc.start()
    for proc in writers:
        proc.join(120)
        assert proc.exitcode == 0
    stop.set()
    for proc in readers:
        proc.join(60)
        assert proc.exitcode == 0
    reg = Registry(root)
    assert len(reg.versions("a")) == 31
    assert indexed(reg) == truth(reg)
    age(reg)
    assert indexed(reg) == truth(reg)
    assert indexed(reg) == truth(reg)


def test_the_index_is_no_environment(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    reg.allocate("a", lambda v: record("a", v))
    reg.summaries()
    assert (reg.root / INDEX_DIR / "list.jsonl").is_file()
    assert reg.names() == ["a"] and [s.name for s in reg.summaries()] == ["a"]
    assert [r.name for r in reg.records()] == ["a"]


def test_record_objects_from_the_index_match_the_records(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    made: EnvRecord = reg.allocate("a", lambda v: replace(record("a", v), size_bytes=100,
                                                          unique_bytes=40, packages=3))
    reg.set_current("a", 1)
    summary = reg.summaries()[0]
    assert (summary.size_bytes, summary.unique_bytes, summary.shared_bytes,
            summary.packages, summary.cuda, summary.creator) == (100, 40, 60, 3, "12.4",
                                                                 made.creator)
    rows, unfinished = reg.listing()
    assert rows == [summary.to_dict()] and unfinished == {}
    assert reg.history_rows("a") == [h.to_dict() for h in reg.history("a")]
    assert reg.first_entry("a").creator == made.creator


def test_the_printed_lines_are_those_of_their_text_version() -> None:
    """What env list and env history print, to the character.  Changing it means bumping
    TEXT_VERSION too: registries keep the lines printed by the version that stored them."""
    assert TEXT_VERSION == 1
    kern = {"name": "kern", "current": 3, "versions": 2, "cuda": "12.4", "prefix": "/p",
            "created": "2026-12-01T00:00:00+00:00", "creator": "alice@login1", "packages": 40,
            "size_bytes": 70_000_000, "unique_bytes": 1_000_000, "shared_bytes": 69_000_000}
    bare = kern | {"name": "x", "current": None, "cuda": None, "unique_bytes": None,
                   "shared_bytes": None, "created": None, "creator": None}
    pending = [{"version": 1, "status": "failed", "error": None},
               {"version": 2, "status": "building", "error": "solve failed"}]
    assert list_text([env_line(kern), env_line(bare)],
                     [unfinished_lines("broken", pending)]).split("\n") == [
        "NAME                     CURRENT VERSIONS CUDA      UNIQUE    SHARED  CREATED BY",
        "kern                           3        2 12.4    976.6 KB   65.8 MB  "
        "2026-12-01T00:00:00+00:00 alice@login1",
        "x                              -        2 -              -         -  -",
        "broken: no ready version (v1 failed, v2 building); see 'hpcenv env history broken', "
        "clear with 'hpcenv env rm broken'",
        "  last error: solve failed"]
    assert list_text([], []) == ""
    assert history_text([
        {"version": 1, "current": False, "status": "retired", "cuda": None, "key": "a" * 64,
         "created": "2026-12-01T00:00:00+00:00", "creator": "bob@login2"},
        {"version": 2, "current": True, "status": "ready", "cuda": "12.4", "key": "b" * 64,
         "created": "2026-12-02T00:00:00+00:00", "creator": "alice@login1"}]).split("\n") == [
        "  VERSION STATUS    CUDA   KEY           CREATED BY",
        "        1 retired   -      aaaaaaaaaaaa  2026-12-01T00:00:00+00:00 bob@login2",
        "*       2 ready     12.4   bbbbbbbbbbbb  2026-12-02T00:00:00+00:00 alice@login1"]
