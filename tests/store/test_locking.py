"""Lease locks on one node: exclusion, holder info, heartbeats, breaking abandoned leases (by pid
on this host, by lease age for other hosts), races between breakers, the readers-writer cache
lock, lock debris, and what site check says about a filesystem.  Real processes throughout;
a holder "on another host" is a process whose ``hpcenv.fsutil.host_name`` answers another name
(tests/multinode runs the same protocol across simulated login nodes)."""

from __future__ import annotations

import json
import os
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
    LockLost,
    LockTimeout,
    MountInfo,
    clean_lock_debris,
    current_holder,
    flock_scope,
    mount_of,
    probe_lock_support,
)

METHODS = ["flock", "mkdir"]


def _holder_process(path: Path, ready: Path, *, method: str = "flock", host: str | None = None,
                    stale_after: float = 60, heartbeat: float = 10,
                    exclusive: bool | None = None) -> subprocess.Popen:
    """A separate process that takes the lock (a CacheLock when ``exclusive`` is given), says
    so, and sleeps until killed; ``host`` makes it believe it runs on another host."""
    # Patched before hpcenv.store.locking imports it: every host name hpcenv reads comes from there.
    fake_host = f"import hpcenv.fsutil; hpcenv.fsutil.host_name = lambda: {host!r}" if host else ""
    kw = f"method={method!r}, timeout=10, stale_after={stale_after}, heartbeat={heartbeat}"
    take = (f"CacheLock({str(path)!r}, {kw}).hold(exclusive={exclusive}, doing='test holding')"
            if exclusive is not None else f"BuildLock({str(path)!r}, {kw}, doing='test holding')")
    code = textwrap.dedent(f"""
        {fake_host}
        import time
        from pathlib import Path
        from hpcenv.store.locking import BuildLock, CacheLock
        with {take}:
            Path({str(ready)!r}).write_text("held")
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert proc.poll() is None, "lock holder process died"
        assert time.monotonic() < deadline, "lock holder never took the lock"
        time.sleep(0.02)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()


def _plant(path: Path, holder: LockHolder, *, mtime: float | None = None) -> Path:
    """A lease of ``holder`` on the lock ``path``, as its holder would have written it."""
    lease = path.with_name(path.name + ".lease")
    lease.mkdir(parents=True)
    record = lease / f"holder.{holder.token}.json"
    record.write_text(json.dumps(holder.to_dict()))
    if mtime is not None:
        os.utime(record, (mtime, mtime))
    return record


def _elsewhere(**changes: object) -> LockHolder:
    me = current_holder()
    data = {**me.to_dict(), "host": "login-elsewhere", "pid": 4242, **changes}
    return LockHolder.from_dict(data)


@pytest.mark.parametrize("method", METHODS)
def test_exclusion_and_holder_info(tmp_path: Path, method: str) -> None:
    first = BuildLock(tmp_path / "k.lock", method=method, timeout=5)
    second = BuildLock(tmp_path / "k.lock", method=method, timeout=0.3, poll_interval=0.05)
    with first:
        holder = second.holder()
        assert holder is not None and holder == first._me
        assert holder.pid == os.getpid() and holder.token
        assert not second.try_acquire()
        seen: list[LockHolder | None] = []
        second.on_wait = seen.append
        with pytest.raises(LockTimeout, match=rf"pid {os.getpid()} since"):
            second.acquire()
        assert seen == [holder]
    assert second.holder() is None
    assert not second.lease_dir.exists()
    with second:
        assert second.is_held


@pytest.mark.parametrize("method", METHODS)
def test_waiter_gets_lock_when_holder_process_releases(tmp_path: Path, method: str) -> None:
    proc = _holder_process(tmp_path / "k.lock", tmp_path / "ready", method=method)
    lock = BuildLock(tmp_path / "k.lock", method=method, timeout=20, poll_interval=0.05)
    assert not lock.try_acquire()
    proc.terminate()  # SIGTERM: python dies without running the with-block's release
    proc.wait()
    started = time.monotonic()
    with lock:  # a holder on this host whose pid is gone is broken at once
        assert lock.holder() == lock._me
    assert time.monotonic() - started < 2


def test_reused_pid_counts_as_dead(tmp_path: Path) -> None:
    me = current_holder()
    _plant(tmp_path / "k.lock", LockHolder.from_dict(
        {**me.to_dict(), "pid_start": (me.pid_start or 0) + 1}))
    lock = BuildLock(tmp_path / "k.lock", timeout=0)
    assert lock.try_acquire()
    lock.release()


def test_live_holder_on_this_host_is_never_broken(tmp_path: Path) -> None:
    # Our own pid, alive, with a heartbeat a day old: the pid check wins over the lease.
    record = _plant(tmp_path / "k.lock", current_holder(), mtime=time.time() - 86400)
    lock = BuildLock(tmp_path / "k.lock", timeout=0, stale_after=5, heartbeat=1)
    assert not lock.try_acquire()
    assert record.is_file()


def test_other_host_lease_expires_by_heartbeat_age(tmp_path: Path) -> None:
    path = tmp_path / "k.lock"
    record = _plant(path, _elsewhere(), mtime=time.time() - 30)
    assert not BuildLock(path, timeout=0, stale_after=60, heartbeat=10).try_acquire()
    assert not BuildLock(path, timeout=0, stale_after=None).try_acquire()  # None: never
    state = BuildLock(path, stale_after=20, heartbeat=5).state()
    assert state is not None and state.stale and 29 < (state.age or 0) < 40
    lock = BuildLock(path, timeout=0, stale_after=20, heartbeat=5)
    assert lock.try_acquire()
    assert not record.exists() and lock.holder() == lock._me
    lock.release()


def test_other_host_lease_with_clock_ahead_expires_by_observation(tmp_path: Path) -> None:
    # The holder's clock runs an hour ahead: by mtimes its lease looks fresh forever, but a
    # waiter that watches it unchanged for stale_after seconds of its own clock breaks it.
    path = tmp_path / "k.lock"
    _plant(path, _elsewhere(), mtime=time.time() + 3600)
    lock = BuildLock(path, timeout=10, stale_after=1.0, heartbeat=0.2, poll_interval=0.05)
    started = time.monotonic()
    with lock:
        waited = time.monotonic() - started
    assert 1.0 <= waited < 3


def test_live_holder_elsewhere_keeps_its_lease_and_a_dead_one_loses_it(tmp_path: Path) -> None:
    """The heartbeat keeps a holder on another host alive past stale_after; once it is killed,
    a waiter takes over within stale_after (+ a poll)."""
    path = tmp_path / "k.lock"
    proc = _holder_process(path, tmp_path / "ready", host="nodeB", stale_after=1.0,
                           heartbeat=0.2)
    try:
        lock = BuildLock(path, timeout=2.5, stale_after=1.0, heartbeat=0.2, poll_interval=0.05)
        with pytest.raises(LockTimeout, match="nodeB pid"):
            lock.acquire()  # 2.5 s > stale_after: only the heartbeat kept it
    finally:
        _kill(proc)
    killed = time.monotonic()
    with BuildLock(path, timeout=10, stale_after=1.0, heartbeat=0.2, poll_interval=0.05):
        detected = time.monotonic() - killed
    assert detected < 1.0 + 1.0, f"dead holder detected after {detected:.2f}s"


def test_breakers_never_both_win(tmp_path: Path) -> None:
    """Eight processes find one abandoned lease at once; every round, each holds the lock alone
    (critical sections never overlap), with no flock to serialise them."""
    path = tmp_path / "k.lock"
    log = tmp_path / "log"
    code = textwrap.dedent(f"""
        import os, time
        from hpcenv.store.locking import BuildLock
        lock = BuildLock({str(path)!r}, method="mkdir", timeout=30, stale_after=2,
                         heartbeat=0.5, poll_interval=0.005)
        with lock:
            start = time.monotonic()
            time.sleep(0.02)
            with open({str(log)!r}, "a") as fh:
                fh.write(f"{{start}} {{time.monotonic()}}\\n")
    """)
    for _ in range(3):
        _plant(path, _elsewhere(), mtime=time.time() - 100)
        procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(8)]
        assert [p.wait(timeout=60) for p in procs] == [0] * 8
        assert not path.with_name(path.name + ".lease").exists()
    spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(spans) == 24
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, "two processes held the lock at once"


def test_broken_holder_finds_out(tmp_path: Path) -> None:
    lock = BuildLock(tmp_path / "k.lock", stale_after=1.0, heartbeat=0.1)
    with lock:
        lock.ensure_held()
        lock.holder_path.unlink()  # what a breaker does to a lease it judged abandoned
        time.sleep(0.4)
        assert lock.lost
        with pytest.raises(LockLost, match="lease was broken"):
            lock.ensure_held()


def test_heartbeat_renews_the_lease(tmp_path: Path) -> None:
    lock = BuildLock(tmp_path / "k.lock", stale_after=1.0, heartbeat=0.1)
    with lock:
        os.utime(lock.holder_path, (1, 1))
        time.sleep(0.35)
        assert time.time() - lock.holder_path.stat().st_mtime < 1


def test_junk_in_a_lease_dir_is_cleared_once_old(tmp_path: Path) -> None:
    path = tmp_path / "k.lock"
    lease = path.with_name("k.lock.lease")
    lease.mkdir()
    (lease / "notes.txt").write_text("made by hand")
    assert not BuildLock(path, timeout=0, stale_after=10, heartbeat=1).try_acquire()
    os.utime(lease, (time.time() - 60, time.time() - 60))
    lock = BuildLock(path, timeout=0, stale_after=10, heartbeat=1)
    assert lock.try_acquire()
    assert [p.name for p in lease.iterdir()] == [lock.holder_path.name]
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.lock"]


def test_timings_validated(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="at most half of stale_after"):
        BuildLock(tmp_path / "k.lock", stale_after=10, heartbeat=6)


def test_lock_debris_of_killed_takers_is_cleaned_once_old(tmp_path: Path) -> None:
    old = tmp_path / ".k.lock.lease.abc123.new"
    fresh = tmp_path / ".j.lock.lease.def456.new"
    for staging in (old, fresh):
        staging.mkdir()
        (staging / "holder.x.json").write_text("{}")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert clean_lock_debris(tmp_path, stale_after=60) == [old]
    assert not old.exists() and fresh.exists()
    assert clean_lock_debris(tmp_path, stale_after=None) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o000])
def test_lock_file_usable_by_the_lab_and_closed_to_others(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        lock = BuildLock(tmp_path / "k.lock")
        with lock:
            # The group opens it (flock, clock probe); others cannot even open it, so an
            # outsider's flock cannot stall the lab.
            assert stat.S_IMODE(lock.path.stat().st_mode) == 0o660
            # Lab members unlink a dead holder's record: the lease dir lets the group in.
            assert stat.S_IMODE(lock.lease_dir.stat().st_mode) == 0o770
            assert stat.S_IMODE(lock.holder_path.stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_an_old_world_writable_lock_file_of_ours_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "k.lock"
    path.touch()
    path.chmod(0o666)  # as an older hpcenv made them
    with BuildLock(path):
        pass
    assert stat.S_IMODE(path.stat().st_mode) == 0o660


def test_a_waiter_hears_who_holds_the_lock_and_what_for(tmp_path: Path) -> None:
    holder = _holder_process(tmp_path / "k.lock", tmp_path / "ready")
    try:
        seen: list[str] = []
        with pytest.raises(LockTimeout, match=r"waiting for \S+@\S+ pid \d+ since \S+ "
                                              r"\(test holding\)"):
            BuildLock(tmp_path / "k.lock", timeout=0.3,
                      on_wait=lambda h: seen.append(h.describe() if h else "?")).acquire()
        me = current_holder()
        assert len(seen) == 1 and seen[0].startswith(f"{me.user}@{me.host} pid {holder.pid} "
                                                     "since ")
        assert seen[0].endswith(" (test holding)")
    finally:
        _kill(holder)


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


@pytest.mark.parametrize("method", METHODS)
def test_cache_lock_shared_holders_coexist_and_exclude_gc(tmp_path: Path, method: str) -> None:
    path = tmp_path / ".hpcenv-cache.lock"
    installer = _holder_process(path, tmp_path / "ready", method=method, exclusive=False)
    try:
        with CacheLock(path, method=method, timeout=0.3).hold(exclusive=False):  # no wait
            pass
        waits: list[str] = []
        with pytest.raises(LockTimeout, match=rf"waiting for \S+ pid {installer.pid} since "
                                              r"\S+ \(test holding\)"):
            with CacheLock(path, method=method, timeout=0.3,
                           on_wait=waits.append).hold(exclusive=True):
                pass
        assert len(waits) == 1 and f"pid {installer.pid} " in waits[0]
    finally:
        _kill(installer)
    started = time.monotonic()
    with CacheLock(path, method=method, timeout=5).hold(exclusive=True):
        pass  # the installer died on this host: its reader lease is dead by pid
    assert time.monotonic() - started < 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hpcenv-cache.lock", "ready"]


def test_cache_lock_gc_keeps_installs_out(tmp_path: Path) -> None:
    path = tmp_path / ".hpcenv-cache.lock"
    gc = _holder_process(path, tmp_path / "ready", exclusive=True)
    try:
        waits: list[str] = []
        # The waiter names the holder and what it does (here "test holding"), not a command
        # it guesses.
        with pytest.raises(LockTimeout, match=rf"waiting for \S+ pid {gc.pid} since \S+ "
                                              r"\(test holding\)"):
            with CacheLock(path, timeout=0.3, on_wait=waits.append).hold(exclusive=False):
                pass
        assert len(waits) == 1 and f"pid {gc.pid} " in waits[0]
    finally:
        _kill(gc)
    with CacheLock(path, timeout=5).hold(exclusive=False):
        pass


def test_cache_lock_reader_on_another_host_holds_gc_off_until_its_lease_expires(
        tmp_path: Path) -> None:
    path = tmp_path / ".hpcenv-cache.lock"
    installer = _holder_process(path, tmp_path / "ready", host="nodeB", stale_after=1.0,
                                heartbeat=0.2, exclusive=False)
    try:
        with pytest.raises(LockTimeout, match=r"@nodeB pid \d+ since \S+ \(test holding\)"):
            with CacheLock(path, timeout=2.0, stale_after=1.0, heartbeat=0.2).hold(
                    exclusive=True):
                pass  # 2 s > stale_after: the installer's heartbeat kept its lease
    finally:
        _kill(installer)
    killed = time.monotonic()
    with CacheLock(path, timeout=10, stale_after=1.0, heartbeat=0.2).hold(exclusive=True):
        assert time.monotonic() - killed < 2.0


def test_probe_lock_support(tmp_path: Path) -> None:
    ok, detail = probe_lock_support(tmp_path)
    assert ok, detail
    assert "lease locks work" in detail and str(tmp_path) in detail
    assert "flock excludes on this node" in detail
    assert list(tmp_path.iterdir()) == []
    ok, detail = probe_lock_support(tmp_path / "missing")
    assert not ok and "cannot create a probe dir" in detail


MOUNTS = """\
sysfs /sys sysfs rw,nosuid 0 0
/dev/sda1 / ext4 rw,relatime 0 0
10.0.0.1@o2ib:/scratch /scratch lustre rw,localflock,lazystatfs 0 0
10.0.0.1@o2ib:/proj /proj lustre rw,flock 0 0
10.0.0.1@o2ib:/old /old lustre rw,noflock 0 0
nfs1:/home /home nfs4 rw,vers=4.2,local_lock=none 0 0
nfs2:/apps /apps nfs rw,vers=3,nolock 0 0
gpfs0 /gpfs gpfs rw 0 0
/srv/shared /shared fuse rw,nosuid,user_id=0 0 0
"""


@pytest.mark.parametrize(("path", "fstype", "meaning"), [
    ("/scratch/lab/envs", "lustre", "flock is per node only"),
    ("/proj/x", "lustre", "coherent across nodes"),
    ("/old", "lustre", "flock fails"),
    ("/home/alice", "nfs4", "NFS lock manager"),
    ("/apps/envs", "nfs", "nolock/local_lock: flock is per node only"),
    ("/gpfs/lab", "gpfs", "token manager"),
    ("/shared/envs", "fuse", "per node"),
    ("/tmp/x", "ext4", "node-local filesystem"),
])
def test_flock_scope_from_mount_options(path: str, fstype: str, meaning: str) -> None:
    mount = mount_of(Path(path), MOUNTS)
    assert mount.fstype == fstype
    assert meaning in flock_scope(mount)


def test_flock_scope_unknown_filesystem() -> None:
    assert "unknown flock behaviour" in flock_scope(MountInfo("/x", "weirdfs", ()))


@pytest.mark.parametrize("method", METHODS)
def test_a_waiter_keeps_the_same_node_flock(tmp_path: Path, method: str) -> None:
    """While one process waits for a lease held elsewhere it keeps the node's flock, so the
    node's other waiters queue in the kernel instead of polling the shared filesystem."""
    import fcntl

    path = tmp_path / "k.lock"
    _plant(path, _elsewhere())
    code = textwrap.dedent(f"""
        from hpcenv.store.locking import BuildLock, LockTimeout
        try:
            BuildLock({str(path)!r}, method={method!r}, timeout=3).acquire()
        except LockTimeout:
            pass
    """)
    waiter = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(1.5)
        assert waiter.poll() is None
        with open(path) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held_by_waiter = False
            except BlockingIOError:
                held_by_waiter = True
        assert held_by_waiter == (method == "flock")
    finally:
        assert waiter.wait(timeout=20) == 0
    with open(path) as fh:  # the waiter gave up: its flock went with it
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_same_node_waiter_is_woken_by_the_release_not_by_its_poll(tmp_path: Path) -> None:
    """A waiter on the holder's node blocks in flock: it takes the lock as soon as the holder
    lets go, although its poll interval (60 s) is far longer than this test may run."""
    import threading

    path = tmp_path / "key.lock"
    holder = BuildLock(path)
    holder.acquire()
    took = threading.Event()
    waits: list[object] = []

    def waiter() -> None:
        lock = BuildLock(path, poll_interval=60.0, timeout=120.0, on_wait=waits.append)
        lock.acquire()
        took.set()
        lock.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        while not waits:            # the waiter found the lock busy ...
            thread.join(0.01)
        assert not took.wait(0.3)   # ... and stays blocked while it is held
    finally:
        holder.release()
    assert took.wait(20), "the waiter was not woken by the release"
    thread.join(20)


def test_a_waiter_whose_work_was_done_goes_on_without_the_lock(tmp_path: Path) -> None:
    """``acquire(unless=...)``: woken by the release, a waiter that finds the guarded work done
    (a builder's waiter, the build ready) returns False without taking the lock, which the
    next taker then finds free."""
    import threading

    path = tmp_path / "key.lock"
    holder = BuildLock(path)
    holder.acquire()
    done = threading.Event()
    waits: list[object] = []
    outcome: list[bool] = []

    def waiter() -> None:
        lock = BuildLock(path, poll_interval=60.0, timeout=120.0, on_wait=waits.append)
        outcome.append(lock.acquire(unless=done.is_set))
        if outcome[-1]:
            lock.release()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        while not waits:
            thread.join(0.01)
        done.set()
    finally:
        holder.release()
    thread.join(20)
    assert outcome == [False]
    other = BuildLock(path)
    assert other.try_acquire()   # the waiter left it free (no lease, no flock kept)
    other.release()
    # Work not done: the waiter takes the lock as before.
    holder.acquire()
    outcome.clear()
    waits.clear()
    done.clear()
    thread = threading.Thread(target=waiter)
    thread.start()
    while not waits:
        thread.join(0.01)
    holder.release()
    thread.join(20)
    assert outcome == [True]
