"""Where builds live and the locks that guard them (hpcenv.store.layout), on a real site and
real builds from the demo channel."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from builders import KERNELS_CPU
from conftest import other_group

from hpcenv.build.builder import build_env
from hpcenv.demo.site import write_demo_site
from hpcenv.site.config import SiteConfig, load_site
from hpcenv.spec.environment import parse_spec
from hpcenv.store import store_for
from hpcenv.store.layout import (
    CACHE_LOCK,
    MARKER,
    builds_dir,
    cache_lock,
    env_link,
    is_complete,
    key_lock,
    locks_dir,
    prefix_usage,
)
from hpcenv.store.locking import LockHolder, LockTimeout


def test_paths_are_under_the_first_envs_dir(tmp_path: Path, demo_channel) -> None:
    root = tmp_path / "site"
    site = load_site(write_demo_site(root, demo_channel,
                                     envs_dirs=f"[{root}/first, {root}/second]"))
    assert store_for(site).envs_dir == root / "first"
    assert builds_dir(store_for(site)) == root / "first" / ".hpcenv" / "builds"
    assert locks_dir(store_for(site)) == root / "first" / ".hpcenv" / "locks"
    assert env_link(store_for(site), "kern") == root / "first" / "kern"
    # Nothing is created by asking.
    assert not (root / "first").exists()


def test_a_build_lands_where_the_layout_says(tmp_path: Path, demo_channel) -> None:
    root = tmp_path / "site"
    site = load_site(write_demo_site(root, demo_channel,
                                     envs_dirs=f"[{root}/first, {root}/second]"))
    record = build_env(parse_spec(KERNELS_CPU), site).record
    prefix = Path(record.prefix)
    assert prefix == builds_dir(store_for(site)) / f"kern-1-{record.key[:12]}"
    link = env_link(store_for(site), "kern")
    # A relative link: the envs tree can be mounted elsewhere (or moved) and still resolve.
    assert os.readlink(link) == f".hpcenv/builds/{prefix.name}"
    assert link.resolve() == prefix.resolve()
    assert (locks_dir(store_for(site)) / f"{record.key}.lock").is_file()
    assert not (root / "second").exists()
    assert (Path(site.pkgs_dirs[0]) / CACHE_LOCK).is_file()


def test_completion_marker_is_written_last(site: SiteConfig) -> None:
    prefix = build_env(parse_spec(KERNELS_CPU), site).prefix
    marker = prefix / MARKER
    assert is_complete(prefix) and is_complete(str(prefix))
    data = json.loads(marker.read_text())
    assert (data["name"], data["version"]) == ("kern", 1) and len(data["key"]) == 64
    assert stat.S_IMODE(marker.stat().st_mode) == 0o444
    newest = max(os.lstat(os.path.join(r, f)).st_mtime_ns
                 for r, dirs, files in os.walk(prefix) for f in files + dirs
                 if os.path.join(r, f) != str(marker))
    assert marker.stat().st_mtime_ns >= newest


def test_is_complete_means_a_marker_file(tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    assert not is_complete(prefix)  # no prefix at all
    (prefix / "conda-meta").mkdir(parents=True)
    assert not is_complete(prefix)  # a full-looking prefix without marker is unfinished
    (prefix / MARKER).mkdir()
    assert not is_complete(prefix)  # a directory is no marker
    (prefix / MARKER).rmdir()
    (prefix / MARKER).write_text("")
    assert is_complete(prefix)
    (prefix / MARKER).unlink()
    (prefix / MARKER).symlink_to(tmp_path / "gone")
    assert not is_complete(prefix)  # a dangling link is no marker either


def test_prefix_usage_counts_each_inode_once(tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    (prefix / "lib" / "sub").mkdir(parents=True)
    (prefix / "a.bin").write_bytes(b"x" * 1000)
    os.link(prefix / "a.bin", prefix / "lib" / "a-again.bin")     # same inode: once
    (prefix / "lib" / "sub" / "b.txt").write_bytes(b"y" * 50)
    (prefix / "lib" / "a.link").symlink_to("../a.bin")            # a link is an entry of its own
    (prefix / "subdir-link").symlink_to("lib/sub")                # links to dirs count, not
    size, count = prefix_usage(prefix)                            # their contents twice
    assert count == 5
    assert size == 1000 + 50 + len("../a.bin") + len("lib/sub")


def test_prefix_usage_of_a_real_build_matches_its_record(site: SiteConfig) -> None:
    record = build_env(parse_spec(KERNELS_CPU), site).record
    size, count = prefix_usage(Path(record.prefix))
    marker = Path(record.prefix) / MARKER
    # The record was measured just before the marker was written.
    assert (size, count) == (record.size_bytes + marker.stat().st_size, record.file_count + 1)
    assert count > 100 and size > 1_000_000


def test_key_lock_takes_the_site_settings(tmp_path: Path, demo_channel) -> None:
    group = other_group()
    site = load_site(write_demo_site(
        tmp_path / "site", demo_channel, locks="{method: mkdir, timeout: 7, stale_after: 60}",
        permissions=f'{{group: {group.gr_name}, dir_mode: "2775"}}'))
    lock = key_lock(store_for(site), "k" * 64)
    assert lock.path == locks_dir(store_for(site)) / f"{'k' * 64}.lock"
    assert (lock.method, lock.timeout, lock.stale_after) == ("mkdir", 7, 60)
    # The store is 2775 (everyone reads builds); its locks dir is the lab's alone.
    assert (lock.dir_mode, lock.group) == (0o2770, group.gr_name)
    assert key_lock(store_for(site), "k" * 64, timeout=0).timeout == 0  # 0 is "don't wait", not "default"
    with lock:
        assert lock.holder_path.parent == locks_dir(store_for(site)) / f"{'k' * 64}.lock.lease"
        assert lock.holder_path.is_file()
        assert not key_lock(store_for(site), "k" * 64, timeout=0).try_acquire()
    st = locks_dir(store_for(site)).stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2770, group.gr_gid)
    st = locks_dir(store_for(site)).parent.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o2775, group.gr_gid)
    cache = cache_lock(store_for(site), tmp_path / "pkgs")
    assert cache.path == tmp_path / "pkgs" / CACHE_LOCK
    assert (cache.method, cache.timeout, cache.stale_after) == ("mkdir", 7, 60)
    assert (cache.dir_mode, cache.group) == (0o2775, group.gr_name)


def test_key_lock_excludes_another_process(site: SiteConfig, tmp_path: Path) -> None:
    key = "a" * 64
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from hpcenv.site.config import load_site
        from hpcenv.store import store_for
        from hpcenv.store.layout import key_lock
        with key_lock(store_for(load_site(Path({str(site.source)!r}))), {key!r}):
            print("held", flush=True)
            sys.stdin.readline()
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert not key_lock(store_for(site), key, timeout=0).try_acquire()
        other_key = key_lock(store_for(site), "b" * 64, timeout=0)
        assert other_key.try_acquire()  # one lock per key: other builds go on
        other_key.release()
        seen: list[LockHolder | None] = []
        with pytest.raises(LockTimeout, match=rf"pid {holder.pid} since"):
            key_lock(store_for(site), key, timeout=0.3, on_wait=seen.append).acquire()
        assert [h.pid for h in seen if h is not None] == [holder.pid]
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    with key_lock(store_for(site), key, timeout=5):
        pass


def test_cache_lock_lets_installs_share_and_keeps_gc_out(tmp_path: Path, demo_channel) -> None:
    site = load_site(write_demo_site(tmp_path / "site", demo_channel, locks="{timeout: 0.3}"))
    pkgs = Path(site.pkgs_dirs[0])
    waits: list[str] = []
    with cache_lock(store_for(site), pkgs).hold(exclusive=False, doing="installing env a"):
        with cache_lock(store_for(site), pkgs).hold(exclusive=False):  # two installs at once
            pass
        with pytest.raises(LockTimeout, match=r"gave up after 0.3s waiting for \S+ pid "
                                              rf"{os.getpid()} since \S+ \(installing env a\)"):
            with cache_lock(store_for(site), pkgs, on_wait=waits.append).hold(exclusive=True):
                pass
    assert len(waits) == 1 and waits[0].endswith("(installing env a)")
    assert stat.S_IMODE((pkgs / CACHE_LOCK).stat().st_mode) == 0o660
    with cache_lock(store_for(site), pkgs).hold(exclusive=True):
        pass
