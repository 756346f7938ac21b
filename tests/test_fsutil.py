"""hpcenv.fsutil: atomic writes with explicit modes, shared dirs, identity, pid start times."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import other_group

from hpcenv import fsutil
from hpcenv.errors import HpcenvError


def test_atomic_write_text_sets_mode_despite_umask(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    old = os.umask(0o077)
    try:
        fsutil.atomic_write_text(target, "hello\n", mode=0o664)
    finally:
        os.umask(old)
    assert target.read_text() == "hello\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o664
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temp file left


def test_atomic_write_replaces_and_keeps_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    fsutil.atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    inode = target.stat().st_ino
    fsutil.atomic_write_json(target, {"new": True}, fsync=False)
    assert json.loads(target.read_text()) == {"new": True}
    assert target.stat().st_ino != inode  # replaced by rename, not rewritten in place

    with pytest.raises(TypeError):
        fsutil.atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"new": True}
    with pytest.raises(TypeError):
        fsutil.atomic_write_text(target, b"bytes are not text")  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_atomic_write_text_gives_group(tmp_path: Path) -> None:
    group = other_group()
    target = tmp_path / "g.txt"
    fsutil.atomic_write_text(target, "x", mode=0o664, group=group.gr_name)
    assert target.stat().st_gid == group.gr_gid
    with pytest.raises(HpcenvError, match="permissions.group 'no-such-group-xyz' does not exist"):
        fsutil.atomic_write_text(target, "y", group="no-such-group-xyz")
    assert target.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.txt"]


def test_atomic_write_into_missing_dir_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsutil.atomic_write_text(tmp_path / "missing" / "f", "x")
    assert list(tmp_path.iterdir()) == []


def test_ensure_shared_dir_applies_mode_and_group_to_every_created_dir(tmp_path: Path) -> None:
    group = other_group()
    (tmp_path / "existing").mkdir(mode=0o700)
    target = tmp_path / "existing" / "a" / "b" / "c"
    old = os.umask(0o077)
    try:
        assert fsutil.ensure_shared_dir(target, mode=0o2775, group=group.gr_name) == target
    finally:
        os.umask(old)
    for directory in (tmp_path / "existing" / "a", tmp_path / "existing" / "a" / "b", target):
        st = directory.stat()
        assert stat.S_IMODE(st.st_mode) == 0o2775, directory
        assert st.st_gid == group.gr_gid, directory
    # An existing directory is not touched.
    assert stat.S_IMODE((tmp_path / "existing").stat().st_mode) == 0o700
    # Idempotent.
    fsutil.ensure_shared_dir(target, mode=0o2775, group=group.gr_name)


def test_ensure_shared_dir_without_group_and_file_in_the_way(tmp_path: Path) -> None:
    fsutil.ensure_shared_dir(tmp_path / "d", mode=0o755, group=None)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        fsutil.ensure_shared_dir(tmp_path / "file", mode=None, group=None)


def test_current_user_ignores_user_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    real = pwd.getpwuid(os.getuid()).pw_name
    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    assert fsutil.current_user() == real
    host = subprocess.run(["hostname"], capture_output=True, text=True, check=True).stdout.strip()
    assert fsutil.user_at_host() == f"{real}@{host}"


def test_host_name_is_what_socket_says_here_and_in_a_new_uts_namespace() -> None:
    """Lock holders written by older hpcenv versions named their host with socket.gethostname();
    a host that reads its own name differently would take its live holders for another host's."""
    import socket

    assert fsutil.host_name() == socket.gethostname()
    if os.geteuid() != 0:
        pytest.skip("a new UTS namespace needs root (unshare --uts)")
    code = ("import socket; from hpcenv import fsutil; "
            "print(fsutil.host_name(), socket.gethostname())")
    out = subprocess.run(["unshare", "--uts", "sh", "-c",
                          f"hostname login-x && {sys.executable} -c '{code}'"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["login-x", "login-x"]


def test_process_start_time_tells_processes_apart() -> None:
    mine = fsutil.process_start_time(os.getpid())
    assert isinstance(mine, int)
    assert fsutil.process_start_time(os.getpid()) == mine
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        theirs = fsutil.process_start_time(child.pid)
        assert theirs is not None and theirs >= mine
    finally:
        child.kill()
        child.wait()
    assert fsutil.process_start_time(child.pid) is None


def test_a_zombie_counts_as_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped yet: the child is a zombie whose /proc entry stays until wait().
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "child never exited"
            time.sleep(0.01)
        assert fsutil.process_start_time(child.pid) is None
    finally:
        child.wait()


def test_shared_dirs_are_never_world_writable_even_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        fsutil.ensure_shared_dir(tmp_path / "a" / "b", mode=None, group=None)
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o775, path
