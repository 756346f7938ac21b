"""Small filesystem and identity helpers every module shares.

* :func:`atomic_write_text` / :func:`atomic_write_json`: readers see the old file or the new one,
  never a torn one, and the file gets exactly ``mode`` (not whatever the umask leaves).
* :func:`ensure_shared_dir`: create a directory and its missing parents, each with the site's
  mode and group, so other lab members can use what one member created.
* :func:`current_user`, :func:`host_name`, :func:`user_at_host`: who this process is, from the password database
  (``$USER`` is whatever the caller exported and proves nothing).
* :func:`process_start_time`: tells a live pid apart from a reused one.

Nothing here imports more than the standard library: the engine child process and
``hpcenv --help`` import it too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpcenv.errors import HpcenvError


def atomic_write_text(path: Path | str, text: str, *, mode: int = 0o644, fsync: bool = True,
                      group: str | None = None) -> None:
    """Replace ``path`` with ``text``: a temp file in the same directory (so the rename is
    atomic), written, fsynced, given ``mode`` (and ``group``), then renamed over ``path``.

    On any failure the temp file is removed and ``path`` is untouched.  The directory must exist.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # Explicit: the umask (and os.open's mode argument) may have dropped group bits.
            os.fchmod(fh.fileno(), mode)
            if group is not None:
                gid = group_id(group)
                assert gid is not None
                _fchgrp(fh.fileno(), gid, path)
            fh.write(text)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path | str, data: Any, *, mode: int = 0o644, fsync: bool = True,
                      group: str | None = None) -> None:
    """:func:`atomic_write_text` of ``data`` as indented, key-sorted JSON with a final newline."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode=mode,
                      fsync=fsync, group=group)


def group_id(group: str | None) -> int | None:
    """The gid of a site's ``permissions.group`` (None when the site names none)."""
    if group is None:
        return None
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise HpcenvError(f"site permissions.group {group!r} does not exist on this host; fix "
                          "the site config ('hpcenv site check')") from None


def chgrp(path: Path | str, gid: int) -> None:
    """Give ``path`` (not a symlink's target) the lab group; one-line error if we may not."""
    try:
        os.chown(path, -1, gid, follow_symlinks=False)
    except PermissionError:
        raise _not_member(path, gid) from None


def _fchgrp(fd: int, gid: int, path: Path) -> None:
    try:
        os.fchown(fd, -1, gid)
    except PermissionError:
        raise _not_member(path, gid) from None


def _not_member(path: Path | str, gid: int) -> HpcenvError:
    return HpcenvError(f"{path}: cannot give it group id {gid}: you are not a member of the "
                       "site's permissions.group; ask to be added or fix the site config")


def ensure_shared_dir(path: Path | str, *, mode: int | None, group: str | None) -> Path:
    """Create ``path`` and its missing parents, each given ``group`` and ``mode`` (e.g. 0o2775:
    setgid dirs pass the group on to everything created inside).  Directories that already
    exist are left as they are.  Returns ``path``."""
    path = Path(path)
    if path.is_dir():
        return path
    gid = group_id(group)
    missing = []
    walk = path
    while not walk.is_dir():
        missing.append(walk)
        walk = walk.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if directory.is_dir():
                continue  # another process made it and set its permissions
            raise
        if gid is not None:
            chgrp(directory, gid)
        if mode is not None:
            os.chmod(directory, mode)  # after chgrp, which clears setgid on some systems
        elif os.stat(directory).st_mode & 0o002:
            # No site mode: the umask decides, but never a world-writable dir (umask 000).
            os.chmod(directory, os.stat(directory).st_mode & 0o7775)
    return path


def lab_only_mode(mode: int | None) -> int | None:
    """A shared dir's ``mode`` without any access for others: the mode of dirs holding locks,
    whose files nobody outside the lab may open (None stays None: the umask decides)."""
    return None if mode is None else mode & ~0o007


@contextmanager
def shared_umask(dir_mode: int | None, group: str | None) -> Iterator[None]:
    """Within: the umask a shared dir of ``dir_mode`` implies (2775 -> 002, 2770 -> 007), for
    what other programs (the engine and its child processes) create in the shared package
    cache: under the builder's own umask 022 the next lab member could not use those files.
    Without a site group nothing changes (a per-user store)."""
    if group is None:
        yield
        return
    mask = (~dir_mode & 0o777) if dir_mode is not None else 0o002
    previous = os.umask(mask & ~0o070)  # the group always keeps rw(x)
    try:
        yield
    finally:
        os.umask(previous)


def shared_file_mode(group: str | None) -> int:
    """The mode of data files hpcenv writes into shared dirs (registry records, logs,
    modulefiles): the lab group may replace them when the site names one; others may at most
    read them, never write."""
    return 0o664 if group is not None else 0o644


def permission_problem(exc: PermissionError, action: str = "") -> HpcenvError:
    """One line for a refused file operation: what we tried, who owns the place, what to do."""
    what = f"cannot {action}: " if action else ""
    path = Path(exc.filename) if exc.filename else None
    if path is None:
        return HpcenvError(f"{what}permission denied ({exc.strerror})")
    # What refused us is the nearest place we can see: the file, or the dir that would not
    # let us in or create it.
    place, st = path, None
    while st is None:
        try:
            st = place.lstat()
        except OSError:
            if place == place.parent:
                break
            place = place.parent
    group = None
    if st is None:
        whose = f"{path} cannot be reached"
    else:
        owner, group = user_name(st.st_uid), group_name(st.st_gid)
        whose = f"{place} belongs to {owner}:{group} with mode {st.st_mode & 0o7777:04o}"
    fix = (f"ask to be added to group {group} (or use a site whose store you may write)"
           if group is not None else "check the permissions of the site's shared dirs")
    return HpcenvError(f"{what}{path}: permission denied for {current_user()} ({whose}); {fix}")


def user_name(uid: int) -> str:
    """The name of ``uid`` for messages (``uid N`` when the password database has none)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def group_name(gid: int) -> str:
    """The name of ``gid`` for messages (``gid N`` when the group database has none)."""
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def current_user() -> str:
    """This process's user name from the password database (the uid when it has no entry,
    as in some containers); never ``$USER``/``$LOGNAME``, which any caller can set."""
    import pwd

    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def host_name() -> str:
    """This host's name as lock holders and registry records give it: the kernel's node name
    (what ``socket.gethostname()`` returns on Linux, UTS namespaces included), read without
    importing ``socket``, which every command would pay for."""
    return os.uname().nodename


def user_at_host() -> str:
    """``user@host`` of this process, as registry records and lock holders name their creator."""
    return f"{current_user()}@{host_name()}"


def process_start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot, ``/proc/PID/stat`` field 22);
    None when the process is gone or there is no /proc.  A pid whose start time changed was
    reused by another process.  A zombie counts as gone: a lock holder or job supervisor that
    died unreaped while its parent still runs keeps its /proc entry but will do no more work."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    try:
        fields = stat[stat.rindex(")") + 2:].split()
        return None if fields[0] in {"Z", "X"} else int(fields[19])
    except (ValueError, IndexError):
        return None
