"""Locks on a shared filesystem that hold across login nodes, with holder info and leases.

On many clusters ``flock`` is not coherent across the nodes that share a filesystem (Lustre
mounted ``localflock`` keeps locks per node, ``noflock`` makes flock fail, NFS can lose locks
when its server restarts).  So the cross-node guard of every hpcenv lock is an atomic
operation the filesystem's metadata server performs for all nodes alike, and ``flock`` is only
a same-node fast path.

**Lease lock** (:class:`BuildLock`), for the lock ``PATH``::

    PATH                        plain file: same-node flock, and the clock probe (see below)
    PATH.lease/                 exists while someone holds the lock ...
    PATH.lease/holder.TOKEN.json    ... and names them: user, host, pid, start, TOKEN
    .PATH.lease.XXXX.new/       a taker's staging dir, renamed to PATH.lease in one step

- *Take*: build the lease dir complete (holder record inside) under a unique staging name,
  then ``rename`` it to ``PATH.lease``.  The rename succeeds for exactly one taker while the
  lease is free (absent, or an empty dir left by a release in progress) and fails with
  EEXIST/ENOTEMPTY while a holder record is inside.  A lease is never without its holder record.
- *Renew*: the holder's heartbeat thread sets the record's mtime every ``heartbeat`` seconds.
- *Expire*: a lease from another host is stale when its record's mtime is more than
  ``stale_after`` seconds older than the filesystem's own "now" (the mtime the filesystem gives
  the ``PATH`` file when a waiter touches it: no remote wall clock is read), or when one waiter
  has watched it unchanged for ``stale_after`` seconds of its own monotonic clock (this catches
  a holder whose clock runs ahead).  A lease from this host (same hostname and pid namespace)
  is stale as soon as its pid is gone or reused.
- *Break*: ``unlink(PATH.lease/holder.TOKEN.json)``.  The record's name carries the token of
  the hold judged stale, so the unlink cannot hit a newer hold, and it succeeds for exactly one
  breaker: two breakers never both proceed.  The breaker then removes the empty dir and takes
  the lock like anyone else.
- *Release*: unlink the own record, then ``rmdir`` the dir (a newer holder's dir is never
  empty, so this cannot remove it).  A holder whose record vanished was broken (its heartbeat
  stopped for ``stale_after``): :attr:`BuildLock.lost` tells, and :meth:`BuildLock.ensure_held`
  raises :class:`LockLost`.

A dead holder on another node is thus detected ``stale_after`` (default 60 s) after its last
heartbeat, plus one poll.  Assumptions: rename, mkdir, create-exclusive and unlink are atomic
on the shared filesystem (POSIX; NFS and the parallel filesystems do them on the server); the
filesystem stamps mtimes either from one clock (NFS: the server's) or from client clocks that
agree to well under ``stale_after - heartbeat`` (NTP).  A live holder that cannot renew for
``stale_after`` seconds (a filesystem stall, a stopped process) loses its lease.

**Readers-writer lock** (:class:`CacheLock`): installs share a package cache, ``env gc`` needs
it alone.  A *gate* lease lock orders them: a reader takes the gate, registers a heartbeated
lease file in ``PATH.readers/``, and lets the gate go; the writer takes the gate and keeps it
(no new readers), removes stale reader leases, and owns the cache once ``rmdir PATH.readers``
succeeds: an rmdir that only the server can decide, so the writer never trusts a cached listing.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcenv.errors import HpcenvError
from hpcenv.fsutil import (
    atomic_write_json,
    chgrp,
    current_user,
    ensure_shared_dir,
    group_id,
    host_name,
    lab_only_mode,
    permission_problem,
    process_start_time,
)

# "flock": the lease protocol plus flock as a same-node fast path (skipped by itself where
# flock fails); "mkdir": the lease protocol alone, never calling flock.
LockMethod = Literal["flock", "mkdir"]

DEFAULT_STALE_AFTER = 60.0
DEFAULT_HEARTBEAT = 10.0
# Lock files hold no data, but whoever can open one can flock it and stall every waiter on its
# node: only the owner and the lab group (the dir's, or the site's permissions.group) may.
LOCK_FILE_MODE = 0o660

_HOLDER_PREFIX, _HOLDER_SUFFIX = "holder.", ".json"
# The longest pause between two looks at a lease held on another node (waiters back off from
# poll_interval to this).
_MAX_POLL_INTERVAL = 1.0
# flock errors meaning "no usable flock here" (Lustre noflock, some FUSE and NFS setups).
_NO_FLOCK = {errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EINVAL, errno.EIO}


class LockTimeout(HpcenvError):
    """Waited ``timeout`` seconds for a lock another process holds."""


class LockLost(HpcenvError):
    """The lease of a held lock was broken by another process (its heartbeat had stopped)."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as written by the holder itself."""

    user: str
    host: str
    pid: int
    started: str                  # ISO time the hold began (the holder's clock: for people)
    pid_start: int | None = None  # /proc/PID/stat starttime: tells a reused pid apart
    token: str = ""               # names this hold's record: a breaker can only hit this hold
    pid_ns: str | None = None     # the holder's pid namespace: pids compare only inside one
    doing: str = ""               # what the holder does under the lock, for waiters' messages

    def describe(self) -> str:
        who = f"{self.user}@{self.host} pid {self.pid} since {self.started}"
        return f"{who} ({self.doing})" if self.doing else who

    def on_this_host(self) -> bool:
        return self.host == host_name() and self.pid_ns == _pid_namespace()

    def is_dead(self) -> bool | None:
        """True/False for a holder on this host; None (unknown) for one on another host."""
        if not self.on_this_host():
            return None
        return not _pid_alive(self.pid, self.pid_start)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LockHolder:
        return cls(user=str(data["user"]), host=str(data["host"]), pid=int(data["pid"]),
                   started=str(data["started"]), pid_start=data.get("pid_start"),
                   token=str(data.get("token", "")), pid_ns=data.get("pid_ns"),
                   doing=str(data.get("doing", "")))


def describe_holder(holder: LockHolder | None) -> str:
    """``user@host pid N since T (what it does)``, or words for a hold without a readable record."""
    return holder.describe() if holder is not None else "a holder whose record cannot be read"


def current_holder(doing: str = "") -> LockHolder:
    """A holder record for this process, now, with a fresh token; ``doing`` says what for."""
    # datetime and tempfile are imported where a lock is taken or probed: `env list` and
    # `env show` load this module (the registry's records name lock holders) but never lock.
    from datetime import datetime, timezone

    return LockHolder(user=current_user(), host=host_name(), pid=os.getpid(),
                      started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      pid_start=process_start_time(os.getpid()), token=os.urandom(8).hex(),
                      pid_ns=_pid_namespace(), doing=doing)


def _record_mode(file_mode: int) -> int:
    """A holder record's mode next to a lock file of ``file_mode``: who may open the lock may
    read who holds it; only its writer may change it (a break unlinks it through the dir)."""
    return (file_mode & 0o444) | 0o200


def _lease_dir_mode(file_mode: int) -> int:
    """A lease dir's mode: search and write (to break a stale hold) for whoever may open the
    lock file, nothing for anyone else."""
    return 0o700 | (file_mode & 0o066) | ((file_mode & 0o044) >> 2)


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_alive(pid: int, pid_start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    now = process_start_time(pid)
    if now is None:
        return False  # a zombie: it will do no more work
    return pid_start is None or now == pid_start  # a changed start time: the pid was reused


def fs_now(clock_file: Path) -> float:
    """The shared filesystem's "now": the mtime it gives ``clock_file`` when we touch it.

    Comparing a lease's mtime with this (rather than with ``time.time()``) compares two stamps
    made by the same party: the server on NFS, or client clocks on filesystems that take them.
    """
    try:
        os.utime(clock_file)
    except PermissionError:
        return time.time()  # a lock file we may not touch (made by hand?): our own clock
    return os.stat(clock_file).st_mtime


class _Heartbeat:
    """Renews one lease file (sets its mtime) every ``interval`` seconds in a daemon thread."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease {path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                self.lost = True  # broken by a waiter that judged us dead
                return
            except OSError:
                pass  # a filesystem hiccup: the next beat tries again

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=max(self.interval, 1.0) + 5)


@dataclass
class _Observation:
    """What one waiter saw of a lease and when (its monotonic clock), to expire a lease whose
    holder's clock runs ahead of the filesystem's."""

    token: str = ""
    mtime: float = 0.0
    since: float = field(default_factory=time.monotonic)

    def unchanged_for(self, token: str, mtime: float) -> float:
        if (token, mtime) != (self.token, self.mtime):
            self.token, self.mtime, self.since = token, mtime, time.monotonic()
        return time.monotonic() - self.since


@dataclass(frozen=True)
class LeaseState:
    """A lease as found on disk: its holder (None: no readable record) and its staleness."""

    holder: LockHolder | None
    record: Path | None       # the holder record (its mtime is the last heartbeat)
    stale: bool
    age: float | None         # seconds since the last heartbeat, by the filesystem's clock


def _validate_timings(stale_after: float | None, heartbeat: float) -> None:
    if heartbeat <= 0:
        raise HpcenvError(f"lock heartbeat must be positive seconds, not {heartbeat!r}")
    if stale_after is not None and heartbeat * 2 > stale_after:
        raise HpcenvError(f"lock heartbeat {heartbeat:g}s must be at most half of stale_after "
                          f"{stale_after:g}s, so one late beat does not expire a live lease")


def _judge(holder: LockHolder | None, record: Path | None, lease_dir: Path, clock_file: Path,
           stale_after: float | None, watch: _Observation | None) -> LeaseState:
    """Whether the lease in ``lease_dir`` (holder record ``record``) is provably abandoned."""
    try:
        mtime = _fresh_mtime(record if record is not None else lease_dir)
    except FileNotFoundError:
        return LeaseState(holder, record, False, None)  # released meanwhile: not ours to break
    age = fs_now(clock_file) - mtime
    if holder is not None:
        dead = holder.is_dead()
        if dead is not None:
            return LeaseState(holder, record, dead, age)
    if stale_after is None:
        return LeaseState(holder, record, False, age)
    stale = age > stale_after
    if not stale and watch is not None:
        stale = watch.unchanged_for(holder.token if holder else "", mtime) > stale_after
    return LeaseState(holder, record, stale, age)


def _fresh_mtime(path: Path) -> float:
    """``path``'s mtime as the server has it: opening makes NFS clients revalidate cached
    attributes (close-to-open consistency), so a stale cache cannot make a live lease look old."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def _read_holder(lease_dir: Path) -> tuple[LockHolder | None, Path | None]:
    try:
        names = os.listdir(lease_dir)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    for name in names:
        if name.startswith(_HOLDER_PREFIX) and name.endswith(_HOLDER_SUFFIX):
            path = lease_dir / name
            try:
                return LockHolder.from_dict(json.loads(path.read_text())), path
            except FileNotFoundError:
                return None, None
            except (OSError, ValueError, KeyError, TypeError):
                return None, path  # torn by a filesystem hiccup: judged by its age alone
    return None, None


class BuildLock:
    """An exclusive lock on ``path`` for every process on every node that sees the filesystem.

    ``on_wait(holder)`` is called when the lock is busy, and again whenever the holder changes
    (``holder`` is None if no record can be read).  ``stale_after``: seconds without heartbeat
    after which a holder on another host counts as dead (None = never); ``heartbeat``: how
    often a holder renews its lease.  ``mode`` is the lock file's mode: 0660 by default, so the
    lab (the group) can open it for flock and touch it as clock probe, and nobody outside it
    can open it at all (a flock held by an outsider would stall every builder on the node).
    A missing lock directory is created with ``dir_mode`` and ``group`` (the site's
    ``permissions``).  ``doing`` goes into the holder record: waiters say what the holder is
    doing.  Usable as a context manager; not reentrant.
    """

    def __init__(self, path: Path | str, *, timeout: float = 3600.0, method: LockMethod = "flock",
                 on_wait: Callable[[LockHolder | None], None] | None = None,
                 stale_after: float | None = DEFAULT_STALE_AFTER,
                 heartbeat: float = DEFAULT_HEARTBEAT, poll_interval: float = 0.1,
                 mode: int = LOCK_FILE_MODE, dir_mode: int | None = None,
                 group: str | None = None, doing: str = "") -> None:
        if method not in ("flock", "mkdir"):
            raise HpcenvError(f"unknown lock method {method!r}: use 'flock' or 'mkdir'")
        _validate_timings(stale_after, heartbeat)
        self.path = Path(path)
        self.timeout = timeout
        self.method = method
        self.on_wait = on_wait
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.poll_interval = poll_interval
        self.mode = mode
        self.dir_mode = dir_mode
        self.group = group
        self.doing = doing
        self._fd = -1                 # the open lock file (flock fast path and clock probe)
        self._flocked = False
        self._flock_usable = method == "flock"
        self._same_node: Any = None   # filelock.UnixFileLock, made on first use
        self._me: LockHolder | None = None
        self._beat: _Heartbeat | None = None
        self._watch = _Observation()

    @property
    def lease_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".lease")

    @property
    def holder_path(self) -> Path:
        """This object's own holder record while it holds the lock (else where one would be)."""
        token = self._me.token if self._me is not None else "TOKEN"
        return self.lease_dir / f"{_HOLDER_PREFIX}{token}{_HOLDER_SUFFIX}"

    @property
    def is_held(self) -> bool:
        return self._me is not None

    @property
    def lost(self) -> bool:
        """Whether our lease was broken while we held it (our heartbeat had stopped too long)."""
        return self._beat is not None and self._beat.lost

    def ensure_held(self) -> None:
        """Raise :class:`LockLost` if another process broke our lease (call before publishing
        what the lock guards)."""
        if self._me is None:
            raise HpcenvError(f"{self.path}: lock not held")
        if self.lost or not self.holder_path.exists():
            raise LockLost(f"{self.path}: our lease was broken by another process that found "
                           "our heartbeat stopped too long (filesystem stall or stopped "
                           "process?); rerun the command")

    def holder(self) -> LockHolder | None:
        """The current holder's record (None when the lock is free or the record unreadable)."""
        return _read_holder(self.lease_dir)[0]

    def state(self) -> LeaseState | None:
        """The lease as found now, judged (None when the lock is free)."""
        if not self.lease_dir.exists():
            return None
        holder, record = _read_holder(self.lease_dir)
        self._open()
        return _judge(holder, record, self.lease_dir, self.path, self.stale_after, None)

    def try_acquire(self) -> bool:
        """Take the lock if it is free (breaking an abandoned lease); never waits."""
        return self._attempt(keep_local=False)

    def acquire(self, *, unless: Callable[[], bool] | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the lock; LockTimeout names the holder.  True
        once held; False, without the lock, when ``unless()`` says after a wait that what the
        lock guards is done (a builder's waiters find the build ready: none of them needs the
        lock any more, so they go on at once instead of taking it one after another).

        A waiter keeps the same-node flock while it polls the lease, so the other waiters on
        its node block in the kernel (woken when the flock is let go, not polling) and one
        process per node polls the shared filesystem, with backoff: a lease held on another
        node ends by a release or a heartbeat that stopped, both seconds apart."""
        deadline = time.monotonic() + self.timeout
        seen: object = _UNSEEN
        delay = self.poll_interval
        try:
            while not self._attempt(keep_local=True):
                holder = self.holder()
                if holder != seen:
                    seen = holder
                    if self.on_wait is not None:
                        self.on_wait(holder)
                if time.monotonic() >= deadline:
                    who = holder.describe() if holder else "an unknown holder"
                    expiry = ("never expires (locks.stale_after is null): remove "
                              f"{self.lease_dir} if that process is gone"
                              if self.stale_after is None else
                              f"counts as gone {self.stale_after:g}s after its last heartbeat")
                    raise LockTimeout(
                        f"{self.path}: gave up after {self.timeout:g}s waiting for {who}; a "
                        f"holder that died on another node {expiry}; otherwise raise "
                        "locks.timeout")
                if self._flock_usable and not self._flocked and self._wait_for_flock(deadline):
                    delay = self.poll_interval   # held on this node: woken when let go
                else:
                    time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                    delay = min(delay * 2, max(self.poll_interval, _MAX_POLL_INTERVAL))
                if unless is not None and unless():
                    self._unflock()
                    return False
        except BaseException:
            self._unflock()
            raise
        return True

    def _wait_for_flock(self, deadline: float) -> bool:
        """Block until the process on this node that has the lock file's flock lets it go, or
        until ``deadline``; takes nothing (the caller then tries the lock again).  False when
        it cannot block (the file cannot be opened or flocked): the caller polls instead.
        The blocking flock runs in a helper thread so the deadline holds; one left blocked
        past it takes and drops the flock when it is let go, and exits."""
        released = threading.Event()
        blocked: list[bool] = []

        def block() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                blocked.append(False)
                released.set()
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                fcntl.flock(fd, fcntl.LOCK_UN)
                blocked.append(True)
            except OSError:
                blocked.append(False)
            finally:
                os.close(fd)
                released.set()

        threading.Thread(target=block, name="hpcenv-flock-wait", daemon=True).start()
        released.wait(max(0.0, deadline - time.monotonic()))
        return blocked != [False]   # still blocked at the deadline counts as having waited

    def _attempt(self, *, keep_local: bool) -> bool:
        if self._me is not None:
            raise HpcenvError(f"{self.path}: lock already held by this object")
        self._open()
        if not self._flocked and not self._try_flock():
            return False
        try:
            me = self._try_lease()
        except BaseException:
            self._unflock()
            raise
        if me is None:
            if not keep_local:
                self._unflock()
            return False
        self._me = me
        self._beat = _Heartbeat(self.holder_path, self.heartbeat)
        return True

    def release(self) -> None:
        me, beat = self._me, self._beat
        if me is None:
            return
        self._me = self._beat = None
        if beat is not None:
            beat.stop()
        record = self.lease_dir / f"{_HOLDER_PREFIX}{me.token}{_HOLDER_SUFFIX}"
        record.unlink(missing_ok=True)  # missing: broken after our heartbeat stopped
        try:
            os.rmdir(self.lease_dir)
        except OSError:
            pass  # gone, or already a newer holder's lease (never empty): not ours
        self._unflock()
        self._close()

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:  # __init__ may have raised before setting it
            os.close(self._fd)

    # --- the lock file: same-node flock, clock probe ------------------------------------------

    def _open(self) -> None:
        if self._fd >= 0:
            return
        try:
            ensure_shared_dir(self.path.parent, mode=self.dir_mode, group=self.group)
            try:
                self._fd = os.open(self.path, os.O_RDWR)
            except FileNotFoundError:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, self.mode)
            except PermissionError:
                self._fd = os.open(self.path, os.O_RDONLY)
        except PermissionError as exc:
            raise permission_problem(exc, "take the lock") from None
        st = os.fstat(self._fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != self.mode:
            # Ours: the umask must neither lock the lab out nor (an older hpcenv's 0666) let
            # outsiders in.
            os.fchmod(self._fd, self.mode)
            gid = group_id(self.group)
            if gid is not None and st.st_gid != gid:
                chgrp(self.path, gid)

    def _close(self) -> None:
        self._unflock()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _try_flock(self) -> bool:
        if not self._flock_usable:
            return True
        import filelock  # the same-node fast path only; the lease alone needs none of it

        if self._same_node is None:
            # A second open file description of the lock file: the flock is its own, and the
            # clock probe (self._fd) never disturbs it.  The file stays: it is the lock place.
            self._same_node = filelock.UnixFileLock(
                self.path, timeout=0, mode=self.mode, thread_local=False,
                fallback_to_soft=False, preserve_lock_file=True)
        try:
            self._same_node.acquire(timeout=0)
        except filelock.Timeout:
            return False
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
            self._flock_usable = False  # no flock on this mount: the lease alone guards
            return True
        self._flocked = True
        return True

    def _unflock(self) -> None:
        if self._flocked and self._same_node is not None:
            self._same_node.release()
            self._flocked = False

    # --- the lease -----------------------------------------------------------------------------

    def _try_lease(self) -> LockHolder | None:
        for _ in range(3):  # more rounds after breaking an abandoned lease or clearing junk
            holder, record = _read_holder(self.lease_dir)
            if record is not None and not self._break_if_stale(holder, record):
                return None
            me = self._rename_into_place()
            if me is not None:
                return me
            holder, record = _read_holder(self.lease_dir)
            if record is None and not self._clear_junk():
                return None
        return None

    def _rename_into_place(self) -> LockHolder | None:
        import tempfile

        me = current_holder(self.doing)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.lease_dir.name}.", suffix=".new",
                                        dir=self.path.parent))
        try:
            record = f"{_HOLDER_PREFIX}{me.token}{_HOLDER_SUFFIX}"
            atomic_write_json(staging / record, me.to_dict(), fsync=False,
                              mode=_record_mode(self.mode), group=self.group)
            # Other lab members read the record and may have to break the lease (unlink
            # inside): mkdtemp made the dir 0700, give it the lock file's audience.
            os.chmod(staging, _lease_dir_mode(self.mode))
            try:
                os.rename(staging, self.lease_dir)
                return me
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                    raise
                # An NFS rename retried after a lost reply fails although it took effect.
                return me if (self.lease_dir / record).exists() else None
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _break_if_stale(self, holder: LockHolder | None, record: Path) -> bool:
        """Break the hold whose record is ``record`` if its holder is provably gone; True when
        the lease is free to take now."""
        state = _judge(holder, record, self.lease_dir, self.path, self.stale_after, self._watch)
        if not state.stale:
            return not record.exists()
        try:
            os.unlink(record)  # names the stale hold's token: exactly one breaker gets here
        except FileNotFoundError:
            return True  # released, or broken by another waiter: try to take it
        try:
            os.rmdir(self.lease_dir)
        except OSError:
            pass
        return True

    def _clear_junk(self) -> bool:
        """A lease dir with no holder record that a rename cannot replace holds junk (a file
        made by hand?): clear it once older than ``stale_after``.  Entries are removed one by
        one and holder records skipped, so a hold taken meanwhile is never touched."""
        if not self.lease_dir.exists():
            return True
        state = _judge(None, None, self.lease_dir, self.path, self.stale_after, self._watch)
        if not state.stale:
            return False
        for name in _listdir(self.lease_dir):
            if not (name.startswith(_HOLDER_PREFIX) and name.endswith(_HOLDER_SUFFIX)):
                _remove_aside(self.lease_dir / name)
        try:
            os.rmdir(self.lease_dir)
        except OSError:
            pass
        return True


def _remove_aside(path: Path) -> None:
    tomb = path.parent.parent / f".{path.parent.name}.{path.name}.gone-{os.urandom(6).hex()}"
    try:
        os.rename(path, tomb)
    except FileNotFoundError:
        return
    if tomb.is_dir() and not tomb.is_symlink():
        shutil.rmtree(tomb, ignore_errors=True)
    else:
        tomb.unlink(missing_ok=True)


_UNSEEN = object()


class CacheLock:
    """Readers-writer lock of a package cache: installs hold it shared, ``env gc`` exclusive.

    Without it gc could delete a cache entry an install has just extracted but not yet linked
    (no ``conda-meta`` record names it yet).  Shared holders register a heartbeated lease file
    in ``PATH.readers/`` under the gate lock ``PATH``; the exclusive holder keeps the gate and
    waits until ``PATH.readers`` can be removed (see the module doc).  ``on_wait(who)`` is
    called once when the lock is busy, ``who`` naming the holders as ``user@host pid N since
    T (what they do)``.  The readers dir gets ``dir_mode`` without any access for others, like
    the gate's lock file: an outsider can neither register nor hold anything here.
    """

    def __init__(self, path: Path | str, *, timeout: float = 3600.0, method: LockMethod = "flock",
                 stale_after: float | None = DEFAULT_STALE_AFTER,
                 heartbeat: float = DEFAULT_HEARTBEAT,
                 on_wait: Callable[[str], None] | None = None,
                 poll_interval: float = 0.1, dir_mode: int | None = None,
                 group: str | None = None) -> None:
        _validate_timings(stale_after, heartbeat)
        self.path = Path(path)
        self.timeout = timeout
        self.method = method
        self.stale_after = stale_after
        self.heartbeat = heartbeat
        self.on_wait = on_wait
        self.poll_interval = poll_interval
        self.dir_mode = dir_mode
        self.group = group

    @property
    def readers_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".readers")

    @contextmanager
    def hold(self, *, exclusive: bool, doing: str = "") -> Iterator[None]:
        """Hold the lock (shared or exclusive) for the ``with`` block; LockTimeout on timeout.
        ``doing`` tells waiters what this holder does with the cache."""
        waited = False
        gate_holder: list[LockHolder | None] = [None]

        def gate_wait(holder: LockHolder | None) -> None:
            nonlocal waited
            gate_holder[0] = holder
            if not waited and self.on_wait is not None:
                self.on_wait(describe_holder(holder))
            waited = True

        deadline = time.monotonic() + self.timeout
        gate = BuildLock(self.path, method=self.method, timeout=self.timeout,
                         stale_after=self.stale_after, heartbeat=self.heartbeat,
                         poll_interval=self.poll_interval, on_wait=gate_wait,
                         dir_mode=self.dir_mode, group=self.group,
                         doing=doing if exclusive else f"registering: {doing}")
        try:
            gate.acquire()
        except LockTimeout:
            raise LockTimeout(f"{self.path}: gave up after {self.timeout:g}s waiting for "
                              f"{describe_holder(gate_holder[0])}; try again later (or raise "
                              "locks.timeout)") from None
        if exclusive:
            try:
                self._drain_readers(gate, deadline, waited)
                yield
            finally:
                gate.release()
            return
        try:
            lease = self._register_reader(gate.path, doing)
        finally:
            gate.release()
        beat = _Heartbeat(lease, self.heartbeat)
        try:
            yield
        finally:
            beat.stop()
            lease.unlink(missing_ok=True)

    def _register_reader(self, clock_file: Path, doing: str) -> Path:
        ensure_shared_dir(self.readers_dir, mode=lab_only_mode(self.dir_mode), group=self.group)
        self._remove_stale_readers(clock_file, {})  # dead installs' leases: no need to wait for gc
        me = current_holder(doing)
        lease = self.readers_dir / f"{_HOLDER_PREFIX}{me.token}{_HOLDER_SUFFIX}"
        # The writer only reads it, and removes it through the dir.
        atomic_write_json(lease, me.to_dict(), fsync=False, mode=_record_mode(LOCK_FILE_MODE),
                          group=self.group)
        return lease

    def _drain_readers(self, gate: BuildLock, deadline: float, waited: bool) -> None:
        """With the gate held: wait until no live reader lease remains (removing stale ones)."""
        watches: dict[str, _Observation] = {}
        while True:
            try:
                os.rmdir(self.readers_dir)  # decided by the server: no cached listing trusted
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            readers = self._remove_stale_readers(gate.path, watches)
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{self.path}: gave up after {self.timeout:g}s waiting for "
                                  f"{_describe_readers(readers)}; try again later (or raise "
                                  "locks.timeout)")
            if not waited:
                waited = True
                if self.on_wait is not None:
                    self.on_wait(_describe_readers(readers))
            time.sleep(self.poll_interval)

    def _remove_stale_readers(self, clock_file: Path,
                              watches: dict[str, _Observation]) -> list[LockHolder | None]:
        """Unlink the reader leases whose holders are provably gone (caller holds the gate);
        returns the holders of the leases left."""
        left: list[LockHolder | None] = []
        for name in _listdir(self.readers_dir):
            path = self.readers_dir / name
            holder = None
            try:
                holder = LockHolder.from_dict(json.loads(path.read_text()))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                pass  # torn or foreign: judged by its age alone
            state = _judge(holder, path, self.readers_dir, clock_file, self.stale_after,
                           watches.setdefault(name, _Observation()))
            if state.stale:
                path.unlink(missing_ok=True)
            else:
                left.append(holder)
        return left


def _describe_readers(readers: list[LockHolder | None]) -> str:
    if not readers:
        return "installs that are finishing"
    return "; ".join(describe_holder(holder) for holder in readers)


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


# --- what a filesystem means for locks (site check) ----------------------------------------------

@dataclass(frozen=True)
class MountInfo:
    """The mount holding a path, from /proc/mounts."""

    mountpoint: str
    fstype: str
    options: tuple[str, ...]


def mount_of(path: Path, mounts_text: str | None = None) -> MountInfo:
    """The mount holding ``path`` (longest matching mountpoint; "unknown" without /proc)."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text()
        except OSError:
            return MountInfo("/", "unknown", ())
    target = str(Path(path).resolve())
    best = MountInfo("", "unknown", ())
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mountpoint = parts[1].replace("\\040", " ")
        inside = target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best.mountpoint):
            best = MountInfo(mountpoint, parts[2], tuple(parts[3].split(",")))
    return best


_LOCAL_FS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "overlay", "f2fs")


def flock_scope(mount: MountInfo) -> str:
    """What ``flock`` means on ``mount`` for the nodes sharing it, in words."""
    fstype, options = mount.fstype, set(mount.options)
    if fstype == "lustre":
        if "flock" in options:
            return "Lustre mounted 'flock': flock is coherent across nodes"
        if "noflock" in options:
            return "Lustre mounted 'noflock': flock fails; hpcenv skips its same-node fast path"
        return ("Lustre without 'flock' (localflock, the default): flock is per node only")
    if fstype in ("nfs", "nfs4"):
        return ("NFS: flock goes through the NFS lock manager when the mount has it ('nolock' "
                "or 'local_lock' make it per node) and can be lost when the server restarts"
                if "nolock" not in options and not any(o.startswith("local_lock=") and
                                                      o != "local_lock=none" for o in options)
                else "NFS mounted nolock/local_lock: flock is per node only")
    if fstype == "gpfs":
        return "GPFS: flock is coherent across nodes (the token manager)"
    if fstype.startswith("fuse"):
        return (f"FUSE ({fstype}): flock is kept by this node's kernel (per node) unless the "
                "filesystem daemon forwards it")
    if fstype in _LOCAL_FS:
        return f"{fstype}: a node-local filesystem (not shared unless exported)"
    return f"{fstype}: unknown flock behaviour across nodes"


def probe_lock_support(directory: Path) -> tuple[bool, str]:
    """Check in ``directory`` what the lease locks need and describe what flock means there.

    Needed: a staging dir renames onto a free lease name and fails onto a held one (the
    cross-node guard), and mtimes can be set (the heartbeat).  ``flock`` is probed too, but
    only as the same-node fast path: its result never fails the check.  Nothing is left behind.
    """
    import tempfile

    directory = Path(directory)
    mount = mount_of(directory)
    where = f"{directory} ({mount.fstype})"
    try:
        probe = Path(tempfile.mkdtemp(prefix=".hpcenv-lockprobe-", dir=directory))
    except OSError as exc:
        return False, f"{where}: cannot create a probe dir ({exc.strerror})"
    try:
        first, second = probe / "a", probe / "b"
        for staging in (first, second):
            staging.mkdir()
            (staging / "holder").write_text("probe")
        target = probe / "lease"
        os.rename(first, target)
        try:
            os.rename(second, target)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                return False, f"{where}: rename onto a held lease failed oddly ({exc.strerror})"
        else:
            return False, (f"{where}: a directory renamed over a non-empty one replaced it; "
                           "lease locks cannot work on this filesystem")
        os.utime(target / "holder", (1_000_000, 1_000_000))
        if int(os.stat(target / "holder").st_mtime) != 1_000_000:
            return False, f"{where}: setting mtimes does not stick; lease heartbeats cannot work"
        local = _probe_flock(probe / "flock")
        return True, (f"{where}: lease locks work (atomic rename + heartbeat); "
                      f"{flock_scope(mount)}; {local}")
    except OSError as exc:
        return False, f"{where}: lock probe failed ({exc.strerror or exc})"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _probe_flock(path: Path) -> str:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    second = -1
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return f"flock fails here ({exc.strerror}): no same-node fast path"
        second = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "flock excludes on this node (used as the same-node fast path only)"
        return "flock does not exclude even on this node: no same-node fast path"
    finally:
        if second >= 0:
            os.close(second)
        os.close(fd)


def clean_lock_debris(directory: Path, *, stale_after: float | None) -> list[Path]:
    """Remove what killed lock takers left in ``directory``: staging dirs (``.NAME.lease.*.new``,
    which live for a moment while a lease is taken) and aside-moved junk (``.*.gone-*``) once
    they are older than ``stale_after`` by the filesystem's clock.  Returns what was removed."""
    directory = Path(directory)
    if stale_after is None or not directory.is_dir():
        return []
    removed = []
    now: float | None = None
    for name in _listdir(directory):
        if not (name.startswith(".") and (".lease." in name and name.endswith(".new")
                                          or ".gone-" in name)):
            continue
        path = directory / name
        try:
            mtime = os.lstat(path).st_mtime
        except FileNotFoundError:
            continue
        if now is None:
            import tempfile

            fd, clock_name = tempfile.mkstemp(prefix=".hpcenv-clock-", dir=directory)
            os.close(fd)
            clock = Path(clock_name)
            try:
                now = os.stat(clock).st_mtime
            finally:
                clock.unlink(missing_ok=True)
        if now - mtime > stale_after:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
