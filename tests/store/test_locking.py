"""Build locks: exclusion, holder info, timeouts, stale-lock breaking, lock-support probe."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import other_group

from hpcenv.store.locking import (
    BuildLock,
    CacheLock,
    LockHolder,
    LockTimeout,
    current_holder,
    probe_lock_support,
)

METHODS = ["flock", "mkdir"]


def _holder_process(path: Path, method: str, ready: Path) -> subprocess.Popen:
    """A separate process that takes the lock, says so, and sleeps until killed."""
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from hpcenv.store.locking import BuildLock
        lock = BuildLock({str(path)!r}, method={method!r}, timeout=10)
        lock.acquire()
        Path({str(ready)!r}).write_text("held")
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert proc.poll() is None, "lock holder process died"
        assert time.monotonic() < deadline, "lock holder never took the lock"
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("method", METHODS)
def test_exclusion_and_holder_info(tmp_path: Path, method: str) -> None:
    first = BuildLock(tmp_path / "k.lock", method=method, timeout=5)
    second = BuildLock(tmp_path / "k.lock", method=method, timeout=0.3, poll_interval=0.05)
    assert first.try_acquire()
    assert not second.try_acquire()
    holder = second.holder()
    assert holder is not None
    assert (holder.pid, holder.host) == (os.getpid(), socket.gethostname())
    seen: list[LockHolder | None] = []
    second.on_wait = seen.append
    with pytest.raises(LockTimeout) as err:
        second.acquire()
    assert f"pid {os.getpid()}" in str(err.value)
    assert seen and seen[0] == holder
    assert f"{holder.user}@{holder.host} pid {os.getpid()} since " in seen[0].describe()
    first.release()
    assert second.holder() is None
    with second:
        assert second.is_held
    assert not second.is_held


@pytest.mark.parametrize("method", METHODS)
def test_waiter_gets_lock_when_holder_process_releases(tmp_path: Path, method: str) -> None:
    """Another process holds the lock; when it dies the waiter proceeds (kernel or stale break)."""
    proc = _holder_process(tmp_path / "k.lock", method, tmp_path / "ready")
    waits: list[LockHolder | None] = []
    lock = BuildLock(tmp_path / "k.lock", method=method, timeout=20, poll_interval=0.05,
                     on_wait=waits.append)
    assert not lock.try_acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock.acquire()
    try:
        assert lock.is_held
        assert lock.holder() == lock._me
    finally:
        lock.release()
    if method == "flock":
        # The kernel released it; the dead holder's record may be all a waiter saw.
        assert all(w is None or w.pid == proc.pid for w in waits)


def test_mkdir_lock_of_dead_process_is_broken(tmp_path: Path) -> None:
    proc = _holder_process(tmp_path / "k.lock", "mkdir", tmp_path / "ready")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lockdir = tmp_path / "k.lock.dir"
    assert lockdir.is_dir(), "a killed mkdir holder leaves its lock dir behind"
    holder = BuildLock(tmp_path / "k.lock", method="mkdir").holder()
    assert holder is not None and holder.pid == proc.pid and holder.is_dead()
    lock = BuildLock(tmp_path / "k.lock", method="mkdir", timeout=0)
    assert lock.try_acquire()
    assert lock.holder().pid == os.getpid()
    lock.release()
    assert not lockdir.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _plant_holder(tmp_path: Path, holder: LockHolder) -> None:
    lockdir = tmp_path / "k.lock.dir"
    lockdir.mkdir()
    (lockdir / "holder.json").write_text(json.dumps(holder.to_dict()))


def test_mkdir_lock_from_other_host_needs_stale_after(tmp_path: Path) -> None:
    old = LockHolder(user="alice", host="some-other-login-node", pid=1,
                     started="2000-01-01T00:00:00+00:00")
    _plant_holder(tmp_path, old)
    assert old.is_dead() is None
    never = BuildLock(tmp_path / "k.lock", method="mkdir", timeout=0)
    assert not never.try_acquire()
    stale = BuildLock(tmp_path / "k.lock", method="mkdir", timeout=0, stale_after=3600)
    assert stale.try_acquire()
    stale.release()


def test_reused_pid_counts_as_dead(tmp_path: Path) -> None:
    me = current_holder()
    assert me.is_dead() is False
    reused = LockHolder(me.user, me.host, me.pid, me.started, pid_start=(me.pid_start or 0) + 1)
    assert reused.is_dead() is True
    _plant_holder(tmp_path, reused)
    lock = BuildLock(tmp_path / "k.lock", method="mkdir", timeout=0)
    assert lock.try_acquire()
    lock.release()


def test_live_holder_is_not_broken(tmp_path: Path) -> None:
    _plant_holder(tmp_path, current_holder())
    lock = BuildLock(tmp_path / "k.lock", method="mkdir", timeout=0, stale_after=None)
    assert not lock.try_acquire()
    assert (tmp_path / "k.lock.dir" / "holder.json").is_file()


def test_probe_lock_support(tmp_path: Path) -> None:
    ok, detail = probe_lock_support(tmp_path)
    assert ok, detail
    assert "flock works" in detail and str(tmp_path) in detail
    assert list(tmp_path.iterdir()) == []
    ok, detail = probe_lock_support(tmp_path / "missing")
    assert not ok and "cannot create a probe file" in detail


def test_lock_file_usable_by_every_builder(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        lock = BuildLock(tmp_path / "k.lock")
        with lock:
            assert stat.S_IMODE(lock.path.stat().st_mode) == 0o666
            assert stat.S_IMODE(lock.holder_path.stat().st_mode) == 0o644
    finally:
        os.umask(old)


@pytest.mark.parametrize("method", METHODS)
def test_missing_lock_dirs_get_the_site_mode_and_group(tmp_path: Path, method: str) -> None:

    group = other_group()
    old = os.umask(0o077)
    try:
        with BuildLock(tmp_path / "locks" / "sub" / "k.lock", method=method, dir_mode=0o2775,
                       group=group.gr_name):
            pass
        with CacheLock(tmp_path / "pkgs" / "c.lock", method=method, dir_mode=0o2770,
                       group=group.gr_name).hold(exclusive=False):
            pass
    finally:
        os.umask(old)
    for directory, mode in ((tmp_path / "locks", 0o2775), (tmp_path / "locks" / "sub", 0o2775),
                            (tmp_path / "pkgs", 0o2770)):
        st = directory.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (mode, group.gr_gid), directory


def test_unknown_method_rejected(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown lock method"):
        BuildLock(tmp_path / "x", method="fcntl")  # type: ignore[arg-type]


def _cache_holder(path: Path, method: str, exclusive: bool, ready: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from hpcenv.store.locking import CacheLock
        with CacheLock({str(path)!r}, method={method!r}, timeout=10).hold(exclusive={exclusive}):
            Path({str(ready)!r}).write_text("held")
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def test_cache_lock_shared_holders_coexist_and_exclude_gc(tmp_path: Path) -> None:
    from hpcenv.store.locking import CacheLock

    path = tmp_path / ".hpcenv-cache.lock"
    installer = _cache_holder(path, "flock", False, tmp_path / "ready")
    try:
        with CacheLock(path, timeout=0.3).hold(exclusive=False):  # a second install: no wait
            pass
        waits: list[int] = []
        with pytest.raises(LockTimeout, match="builds installing from the package cache"):
            with CacheLock(path, timeout=0.3, on_wait=lambda: waits.append(1)).hold(exclusive=True):
                pass
        assert waits == [1]
    finally:
        installer.kill()
        installer.wait()
    with CacheLock(path, timeout=5).hold(exclusive=True):  # the holder died: its flock went
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o666


def test_cache_lock_without_flock_is_exclusive(tmp_path: Path) -> None:
    from hpcenv.store.locking import CacheLock

    path = tmp_path / ".hpcenv-cache.lock"
    gc = _cache_holder(path, "mkdir", True, tmp_path / "ready")
    try:
        with pytest.raises(LockTimeout):
            with CacheLock(path, method="mkdir", timeout=0.3).hold(exclusive=False):
                pass
    finally:
        gc.kill()
        gc.wait()
    # A dead holder on this host is detected by pid and its lock broken.
    with CacheLock(path, method="mkdir", timeout=5).hold(exclusive=False):
        pass
