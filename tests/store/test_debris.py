"""Crash debris (hpcenv.store.debris): only builders that are provably gone leave debris; a
live builder's prefix is never touched; finished-but-unpublished builds are adopted.  Live and
crashed builders are real processes (holding the real key lock, or a real builder SIGKILLed
mid-install); prefixes are real builds from the demo channel."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from builders import (
    KERNELS_CPU,
    KERNELS_CUDA,
    building_record,
    kill,
    lock_held,
    start_builder,
    start_lock_holder,
    write_spec,
)

from hpcenv.build.builder import build_env
from hpcenv.demo.site import write_demo_site
from hpcenv.site.config import SiteConfig, load_site
from hpcenv.spec.environment import parse_spec
from hpcenv.store import store_for
from hpcenv.store.debris import builder_alive, clean_debris, find_debris, force_rmtree
from hpcenv.store.layout import MARKER, builds_dir, prefix_usage

# A stand-in builder: holds the key lock as a builder does, until told to go (a line on stdin)
# or killed.




def test_builder_alive_only_while_a_process_holds_the_key_lock(site: SiteConfig) -> None:
    record = building_record(site, "a", "a" * 64)
    assert not builder_alive(store_for(site), record)
    proc = start_lock_holder(site, record.key)
    try:
        assert builder_alive(store_for(site), record)
        assert builder_alive(store_for(site), record)  # asking does not take the lock away
        # The caller's own lock: whoever wrote the record is gone.
        assert not builder_alive(store_for(site), record, held_key=record.key)
    finally:
        kill(proc)
    assert not builder_alive(store_for(site), record)  # the kernel dropped the dead holder's flock


def test_mkdir_lock_of_a_killed_builder_is_provably_gone(tmp_path: Path, demo_channel) -> None:
    """With mkdir locks nothing releases a dead holder's lock; a holder on this host whose
    pid is gone is dead, so its record is debris (and its lock is broken)."""
    site = load_site(write_demo_site(tmp_path / "site", demo_channel,
                                     locks="{method: mkdir, timeout: 5}"))
    record = building_record(site, "a", "a" * 64)
    Path(record.prefix, "conda-meta").mkdir(parents=True)
    proc = start_lock_holder(site, record.key)
    try:
        assert builder_alive(store_for(site), record)
        assert find_debris(store_for(site)) == []
    finally:
        kill(proc)
    lockdir = builds_dir(store_for(site)).parent / "locks" / f"{record.key}.lock.lease"
    assert lockdir.is_dir()  # left behind by the SIGKILL
    assert not builder_alive(store_for(site), record)
    assert [p for p, _ in find_debris(store_for(site))] == [Path(record.prefix)]


def test_find_debris_classifies_every_unfinished_prefix(site: SiteConfig) -> None:
    builds = builds_dir(store_for(site))
    complete = build_env(parse_spec(KERNELS_CPU), site).prefix  # finished: never debris
    orphan = builds / "nobody-1-000000000000"                    # no record at all
    (orphan / "conda-meta").mkdir(parents=True)
    failed = building_record(site, "f", "f" * 64, status="failed")
    retired = building_record(site, "r", "e" * 64, status="retired")
    dead = building_record(site, "d", "d" * 64)
    live = building_record(site, "l", "c" * 64)
    for record in (failed, retired, dead, live):
        Path(record.prefix, "conda-meta").mkdir(parents=True)
    (builds / ".kern.tmp").mkdir()  # dot-names are not builds
    with lock_held(site, live.key):
        found = {p.name: (r.name if r else None) for p, r in find_debris(store_for(site))}
        assert found == {orphan.name: None, Path(failed.prefix).name: "f",
                         Path(retired.prefix).name: "r", Path(dead.prefix).name: "d"}
        # Called under the live builder's own key (the builder cleaning before it builds),
        # the record is its own predecessor's: debris.
        assert Path(live.prefix) in [p for p, _ in find_debris(store_for(site), held_key=live.key)]
    assert Path(live.prefix) in [p for p, _ in find_debris(store_for(site))]
    assert complete not in [p for p, _ in find_debris(store_for(site))]


def test_a_live_builders_prefix_is_never_touched(site: SiteConfig, tmp_path: Path) -> None:
    """A real builder holding mid-build (installed, no marker yet): cleaning leaves its prefix
    and record alone; once it is SIGKILLed, the same prefix is debris and goes."""
    flag = tmp_path / "installed"
    proc = start_builder(tmp_path, site.source, write_spec(tmp_path, KERNELS_CPU), hold=flag)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        prefix = Path(flag.read_text())
        before = sorted(str(p) for p in prefix.rglob("*"))
        assert not (prefix / MARKER).exists() and len(before) > 100
        assert clean_debris(store_for(site)) == []
        assert sorted(str(p) for p in prefix.rglob("*")) == before
        record = store_for(site).registry().get("kern", 1)
        assert record.status == "building" and builder_alive(store_for(site), record)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert clean_debris(store_for(site)) == [prefix]
    assert not prefix.exists()
    assert store_for(site).registry().get("kern", 1).status == "failed"
    assert clean_debris(store_for(site)) == []


def test_finished_but_unpublished_build_is_adopted(site: SiteConfig) -> None:
    """Killed between the completion marker and the registry update: the record still says
    building with zero counts; cleaning marks it ready with the prefix's real numbers."""
    built = build_env(parse_spec(KERNELS_CUDA), site).record
    registry = store_for(site).registry()
    registry.update(replace(built, status="building", size_bytes=0, file_count=0, packages=0))
    with lock_held(site, built.key):
        assert clean_debris(store_for(site)) == []  # its builder may still be about to mark it ready
        assert registry.get("kern", 1).status == "building"
    assert clean_debris(store_for(site)) == []  # adopted, not removed
    adopted = registry.get("kern", 1)
    size, count = prefix_usage(Path(built.prefix))
    packages = len(list(Path(built.prefix, "conda-meta").glob("*.json")))
    assert (adopted.status, adopted.size_bytes, adopted.file_count, adopted.packages) == \
        ("ready", size, count, packages)
    assert packages == built.packages
    assert Path(built.prefix, MARKER).is_file()


def test_records_without_a_prefix(site: SiteConfig) -> None:
    """Killed between allocating a version and creating the prefix: only a record is left;
    it is failed once its builder is gone, not while it lives."""
    building_record(site, "x", "1" * 64)
    live = building_record(site, "x", "2" * 64)
    registry = store_for(site).registry()
    with lock_held(site, live.key):
        assert clean_debris(store_for(site)) == []
        assert [(r.version, r.status) for r in registry.versions("x")] == \
            [(1, "failed"), (2, "building")]
    clean_debris(store_for(site))
    assert [r.status for r in registry.versions("x")] == ["failed", "failed"]


def test_force_rmtree_removes_read_only_trees_and_never_follows_links(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    prefix = tmp_path / "prefix"
    (prefix / "a" / "b").mkdir(parents=True)
    (prefix / "a" / "b" / "f").write_text("x")
    (prefix / "a" / "to-outside").symlink_to(outside)
    (prefix / "a" / "file-link").symlink_to(outside / "keep.txt")
    for path in (prefix / "a" / "b" / "f", prefix / "a" / "b", prefix / "a", prefix):
        path.chmod(0o555 if path.is_dir() else 0o444)
    force_rmtree(prefix)
    assert not prefix.exists()
    assert (outside / "keep.txt").read_text() == "keep"
    # A link given as the prefix goes, what it points at stays.
    link = tmp_path / "link"
    link.symlink_to(outside)
    force_rmtree(link)
    assert not os.path.lexists(link) and (outside / "keep.txt").is_file()
    force_rmtree(tmp_path / "never-existed")  # missing is fine


def test_force_rmtree_removes_a_real_published_build(site: SiteConfig) -> None:
    prefix = build_env(parse_spec(KERNELS_CPU), site).prefix
    cached = next(Path(site.pkgs_dirs[0]).glob("python-3.11*/lib/python3.11/os.py"))
    links = cached.stat().st_nlink
    assert (prefix / "lib").stat().st_mode & 0o222 == 0  # published prefixes are read-only
    force_rmtree(prefix)
    assert not prefix.exists()
    assert cached.stat().st_nlink == links - 1  # the cache only lost one hardlink


def test_a_builder_cleans_its_own_envs_debris_and_leaves_the_others_to_gc(
        site: SiteConfig) -> None:
    """clean_name_debris (what a builder runs under its key lock) finds its env's crashed
    builds without reading other envs' records; another env's debris waits for env gc, and a
    live builder's prefix of the same env is never touched."""
    from builders import start_lock_holder

    from hpcenv.store.debris import clean_name_debris

    store = store_for(site)
    mine = building_record(site, "mine", "a" * 64)
    Path(mine.prefix, "conda-meta").mkdir(parents=True)
    live = building_record(site, "mine", "b" * 64)
    Path(live.prefix, "conda-meta").mkdir(parents=True)
    theirs = building_record(site, "theirs", "c" * 64)
    Path(theirs.prefix, "conda-meta").mkdir(parents=True)
    stray = builds_dir(store) / f"mine-9-{'d' * 12}"   # a prefix whose record is gone
    stray.mkdir()
    holder = start_lock_holder(site, live.key)
    try:
        removed = clean_name_debris(store, "mine", held_key="a" * 64)
        assert sorted(removed) == sorted([Path(mine.prefix), stray])
        registry = store.registry()
        assert registry.get("mine", mine.version).status == "failed"
        assert registry.get("mine", live.version).status == "building"
        assert Path(live.prefix).exists() and Path(theirs.prefix).exists()
        assert registry.get("theirs", theirs.version).status == "building"
    finally:
        kill(holder)
    assert Path(theirs.prefix) in clean_debris(store)
    assert store.registry().get("theirs", theirs.version).status == "failed"
