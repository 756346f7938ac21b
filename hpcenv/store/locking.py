"""Build locks on a shared filesystem, with holder info and stale-lock breaking.

One :class:`BuildLock` per build key serialises builders across processes, users and login nodes.
Whoever holds a lock also publishes a small JSON holder record (user@host, pid, the pid's kernel
start time, start time of the hold), so a late arrival can say *"waiting for alice@login1 pid 4242
since 2024-05-01T10:00:00+00:00"* instead of hanging silently.

Two methods (site option ``locks.method``):

``flock`` (default)
    ``fcntl.flock`` on ``PATH`` through :mod:`filelock` (never its soft fallback); the holder
    record is ``PATH.holder``.  The kernel (or the NFS lock manager) drops the lock when its holder
    dies, so a stale flock cannot exist; a leftover holder file from a dead holder is merely
    overwritten by the next one.
``mkdir``
    For filesystems where ``flock`` is missing or only node-local (some NFSv3 mounts, old Lustre
    and BeeGFS client settings; :func:`probe_lock_support` finds the obvious cases).  The lock is
    the directory ``PATH.dir`` holding ``holder.json``; it is created complete in a temporary
    directory and renamed into place, which is atomic on POSIX and NFS and fails while the lock
    exists, so a lock directory never lacks its holder record.  Nothing releases it when its
    holder dies, so waiters break it themselves: a holder on *this* host whose pid is gone (or
    reused, told apart by the pid's start time) is dead; a holder on another host is only judged
    abandoned after ``stale_after`` seconds (site ``locks.stale_after``, ``None`` = never).
    Breaking renames the directory aside (one waiter wins the rename) and re-checks that what it
    moved is the stale hold; a fresh hold moved by mistake is renamed back.  That re-check leaves
    a window of a few microseconds in which two waiters could both believe they broke the same
    stale lock; locks on flock-capable filesystems do not have it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from hpcenv.errors import HpcenvError
from hpcenv.fsutil import (
    atomic_write_json,
    current_user,
    ensure_shared_dir,
    process_start_time,
)

LockMethod = Literal["flock", "mkdir"]


class LockTimeout(HpcenvError):
    """Waited ``timeout`` seconds for a lock another builder holds."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock, as written by the holder itself."""

    user: str
    host: str
    pid: int
    started: str                  # ISO time the hold began
    pid_start: int | None = None  # /proc/PID/stat starttime: tells a reused pid apart

    def describe(self) -> str:
        return f"{self.user}@{self.host} pid {self.pid} since {self.started}"

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def is_dead(self) -> bool | None:
        """True/False for a holder on this host; None (unknown) for one on another host."""
        if not self.on_this_host():
            return None
        return not _pid_alive(self.pid, self.pid_start)

    def age_seconds(self) -> float:
        try:
            return time.time() - datetime.fromisoformat(self.started).timestamp()
        except ValueError:
            return 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LockHolder:
        return cls(user=str(data["user"]), host=str(data["host"]), pid=int(data["pid"]),
                   started=str(data["started"]), pid_start=data.get("pid_start"))


def current_holder() -> LockHolder:
    """A holder record for this process, now."""
    return LockHolder(user=current_user(), host=socket.gethostname(), pid=os.getpid(),
                      started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      pid_start=process_start_time(os.getpid()))


def _pid_alive(pid: int, pid_start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    if pid_start is not None:
        now = process_start_time(pid)
        if now is not None and now != pid_start:
            return False  # the pid was reused by a younger process
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class BuildLock:
    """An exclusive lock on ``path`` shared by every process that can see the filesystem.

    ``on_wait(holder)`` is called when the lock is busy, and again whenever the holder changes
    (``holder`` is None if the holder has not published its record yet).  ``mode`` is the lock
    file's mode: 0666 by default, because every user who may build must be able to open it for
    locking (it holds no data).  A missing lock directory is created with ``dir_mode`` and
    ``group`` (the site's ``permissions``), so the next lab member can create locks in it.
    Usable as a context manager; not reentrant.
    """

    def __init__(self, path: Path | str, *, timeout: float = 3600.0, method: LockMethod = "flock",
                 on_wait: Callable[[LockHolder | None], None] | None = None,
                 stale_after: float | None = None, poll_interval: float = 0.1,
                 mode: int = 0o666, dir_mode: int | None = None,
                 group: str | None = None) -> None:
        if method not in ("flock", "mkdir"):
            raise HpcenvError(f"unknown lock method {method!r}: use 'flock' or 'mkdir'")
        self.path = Path(path)
        self.timeout = timeout
        self.method = method
        self.on_wait = on_wait
        self.stale_after = stale_after
        self.poll_interval = poll_interval
        self.mode = mode
        self.dir_mode = dir_mode
        self.group = group
        self._flock: Any = None
        self._held = False
        self._me: LockHolder | None = None

    @property
    def holder_path(self) -> Path:
        return (self.path.with_name(self.path.name + ".holder") if self.method == "flock"
                else self.path.with_name(self.path.name + ".dir") / "holder.json")

    @property
    def is_held(self) -> bool:
        return self._held

    def holder(self) -> LockHolder | None:
        """The published holder record (may be a leftover of a dead flock holder)."""
        data = _read_json(self.holder_path)
        try:
            return LockHolder.from_dict(data) if data else None
        except (KeyError, TypeError, ValueError):
            return None

    def try_acquire(self) -> bool:
        """Take the lock if it is free (breaking a stale mkdir lock); never waits."""
        if self._held:
            raise HpcenvError(f"{self.path}: lock already held by this object")
        ensure_shared_dir(self.path.parent, mode=self.dir_mode, group=self.group)
        got = self._try_flock() if self.method == "flock" else self._try_mkdir()
        if got:
            self._held = True
        return got

    def acquire(self) -> None:
        """Wait up to ``timeout`` seconds for the lock; LockTimeout names the holder."""
        deadline = time.monotonic() + self.timeout
        seen: object = _UNSEEN
        while not self.try_acquire():
            holder = self.holder()
            if holder != seen:
                seen = holder
                if self.on_wait is not None:
                    self.on_wait(holder)
            if time.monotonic() >= deadline:
                who = holder.describe() if holder else "an unknown holder"
                raise LockTimeout(
                    f"{self.path}: gave up after {self.timeout:g}s waiting for {who}; if that "
                    f"process is gone, remove {self._artifact()} (or raise locks.timeout)")
            time.sleep(self.poll_interval)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self.method == "flock":
            if self.holder() == self._me:
                self.holder_path.unlink(missing_ok=True)
            self._flock.release()
            self._flock = None
        else:
            lockdir = self.holder_path.parent
            if self.holder() == self._me:
                self._remove_dir(lockdir)

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _artifact(self) -> Path:
        return self.path if self.method == "flock" else self.holder_path.parent

    # --- flock --------------------------------------------------------------------------------

    def _try_flock(self) -> bool:
        import filelock

        if self._flock is None:
            self._flock = filelock.UnixFileLock(self.path, timeout=0, mode=self.mode,
                                                thread_local=False, fallback_to_soft=False)
        try:
            self._flock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        self._me = current_holder()
        # Holder records are only ever replaced by rename, so 0644 lets every waiter read them.
        atomic_write_json(self.holder_path, self._me.to_dict())
        return True

    # --- mkdir --------------------------------------------------------------------------------

    def _try_mkdir(self) -> bool:
        lockdir = self.holder_path.parent
        me = current_holder()
        staging = Path(tempfile.mkdtemp(prefix=f".{lockdir.name}.", suffix=".new",
                                        dir=lockdir.parent))
        try:
            # Other users read the holder record and may have to break the lock: mkdtemp made
            # the dir 0700, give it the lock file's permissions (plus search).
            os.chmod(staging, 0o755 | (self.mode & 0o022))
            atomic_write_json(staging / "holder.json", me.to_dict())
            for _ in range(2):  # second round after breaking a stale lock
                try:
                    os.rename(staging, lockdir)
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
                        raise
                    if not self._break_if_stale(lockdir):
                        return False
                    continue
                self._me = me
                return True
            return False
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _is_stale(self, holder: LockHolder | None, lockdir: Path) -> bool:
        if holder is None:
            # Lock dirs are renamed into place complete; an unreadable record is a torn copy
            # from a filesystem hiccup: treat it as stale only after stale_after.
            try:
                age = time.time() - lockdir.stat().st_mtime
            except OSError:
                return False
            return self.stale_after is not None and age > self.stale_after
        dead = holder.is_dead()
        if dead is not None:
            return dead
        return self.stale_after is not None and holder.age_seconds() > self.stale_after

    def _break_if_stale(self, lockdir: Path) -> bool:
        holder = self.holder()
        if not self._is_stale(holder, lockdir):
            return False
        tomb = lockdir.with_name(f".{lockdir.name}.stale-{secrets.token_hex(6)}")
        try:
            os.rename(lockdir, tomb)
        except FileNotFoundError:
            return True  # someone else broke or released it: try again
        moved = _read_json(tomb / "holder.json")
        if holder is not None and moved != holder.to_dict():
            # A fresh hold replaced the stale one between our read and our rename: put it back.
            try:
                os.rename(tomb, lockdir)
            except OSError:
                pass
            return False
        self._remove_dir(tomb)
        return True

    @staticmethod
    def _remove_dir(path: Path) -> None:
        tomb = path.with_name(f".{path.name}.gone-{secrets.token_hex(6)}")
        try:
            os.rename(path, tomb)
        except FileNotFoundError:
            return
        shutil.rmtree(tomb, ignore_errors=True)


_UNSEEN = object()


class CacheLock:
    """Readers-writer lock of a package cache: installs hold it shared, ``env gc`` exclusive.

    Without it gc could delete a cache entry an install has just extracted but not yet linked
    (no ``conda-meta`` record names it yet).  ``flock``: ``LOCK_SH``/``LOCK_EX`` on ``path``,
    so builds of different envs still install in parallel.  ``mkdir`` (no working flock): there
    is no shared form, so every holder takes the exclusive :class:`BuildLock` and installs from
    one cache run one at a time.  ``on_wait()`` is called once when the lock is busy.
    """

    def __init__(self, path: Path | str, *, timeout: float = 3600.0, method: LockMethod = "flock",
                 stale_after: float | None = None, on_wait: Callable[[], None] | None = None,
                 poll_interval: float = 0.1, dir_mode: int | None = None,
                 group: str | None = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.method = method
        self.stale_after = stale_after
        self.on_wait = on_wait
        self.poll_interval = poll_interval
        self.dir_mode = dir_mode
        self.group = group

    @contextmanager
    def hold(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the lock (shared or exclusive) for the ``with`` block; LockTimeout on timeout."""
        if self.method == "mkdir":
            on_wait = self.on_wait
            with BuildLock(self.path, method="mkdir", timeout=self.timeout,
                           stale_after=self.stale_after, dir_mode=self.dir_mode, group=self.group,
                           on_wait=(lambda _holder: on_wait()) if on_wait else None):
                yield
            return
        ensure_shared_dir(self.path.parent, mode=self.dir_mode, group=self.group)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o666)
            os.fchmod(fd, 0o666)  # the umask must not lock other users out of the cache
        try:
            self._wait(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH, exclusive)
            yield
        finally:
            os.close(fd)  # closing the descriptor drops the flock

    def _wait(self, fd: int, operation: int, exclusive: bool) -> None:
        deadline = time.monotonic() + self.timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if not waited:
                waited = True
                if self.on_wait is not None:
                    self.on_wait()
            if time.monotonic() >= deadline:
                other = ("builds installing from the package cache" if exclusive
                         else "'hpcenv env gc' cleaning the package cache")
                raise LockTimeout(f"{self.path}: gave up after {self.timeout:g}s waiting for "
                                  f"{other}; try again later (or raise locks.timeout)")
            time.sleep(self.poll_interval)


def filesystem_type(path: Path) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/mounts; "unknown" elsewhere)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    target = str(Path(path).resolve())
    best, fstype = "", "unknown"
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        mountpoint = parts[1].replace("\\040", " ")
        inside = target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) > len(best):
            best, fstype = mountpoint, parts[2]
    return fstype


# Filesystems where flock may be node-local or a no-op depending on mount options.
_NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "fuse.sshfs", "ceph")


def probe_lock_support(directory: Path) -> tuple[bool, str]:
    """Test whether ``flock`` works in ``directory`` (for ``hpcenv site check``).

    Two open file descriptions of one file must exclude each other.  That proves flock works on
    this node; whether it also works *across* nodes of a network filesystem cannot be seen from
    one node, so those filesystems get a note recommending a cross-node test or ``mkdir``.
    """
    directory = Path(directory)
    fstype = filesystem_type(directory)
    try:
        fd, name = tempfile.mkstemp(prefix=".hpcenv-lockprobe-", dir=directory)
    except OSError as exc:
        return False, f"{directory}: cannot create a probe file ({exc.strerror})"
    second = -1
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            return False, (f"{directory} ({fstype}): flock fails ({exc.strerror}); set "
                           "locks.method: mkdir in the site config")
        second = os.open(name, os.O_RDWR)
        try:
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return False, (f"{directory} ({fstype}): flock does not exclude (two holders got "
                           "it); set locks.method: mkdir in the site config")
        detail = f"{directory} ({fstype}): flock works"
        if fstype.split(".")[0] in _NETWORK_FS or fstype in _NETWORK_FS:
            detail += (" on this node; on a network filesystem check it across login nodes "
                       "or set locks.method: mkdir")
        return True, detail
    finally:
        if second >= 0:
            os.close(second)
        os.close(fd)
        os.unlink(name)
