"""Remote login nodes over SSH: pure helpers, then a real key-only sshd on 127.0.0.1.

The "login node" is this machine: its hpcenv is the one under test (``sys.executable -m hpcenv``)
and its sessions get their own site config through sshd's ``SetEnv``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import REPO

from hpcenv.cli import build_parser, main
from hpcenv.cli.argtypes import LocalFile
from hpcenv.cli.remote import remote_argv
from hpcenv.errors import HpcenvError
from hpcenv.remote.errors import (
    AuthRefused,
    HostKeyMismatch,
    HostUnreachable,
    IncompatibleVersion,
    RemoteCommandFailed,
    RemoteHpcenvMissing,
    UnknownHostKey,
)
from hpcenv.remote.jobs import job_info
from hpcenv.remote.session import Backoff, RemoteSession, _SkippingWriter
from hpcenv.remote.sync import (
    FileStat,
    is_excluded,
    local_manifest,
    parse_find_manifest,
    plan_upload,
    sync_dir,
)
from hpcenv.remote.uploads import PathMap

if TYPE_CHECKING:
    from conftest_ssh import SshServer


# --- pure helpers ------------------------------------------------------------------------------

def test_excludes_match_components_or_anchored_paths() -> None:
    assert is_excluded("a/__pycache__/x.pyc", ["__pycache__"])
    assert is_excluded("x.pyc", ["*.pyc"])
    assert is_excluded("data/raw/big.bin", ["data/raw"])
    assert is_excluded("outputs/run1/log", ["/outputs"])
    assert not is_excluded("src/outputs.py", ["/outputs"])
    assert not is_excluded("src/data/raw.txt", ["data/raw"])
    assert not is_excluded("train.py", ["*.pyc", ".git"])


def test_plan_upload_sends_missing_and_changed_only() -> None:
    local = {"a": FileStat(3, 100), "b": FileStat(4, 100), "c": FileStat(5, 100)}
    remote = {"a": FileStat(3, 100), "b": FileStat(4, 99), "d": FileStat(1, 1)}
    assert plan_upload(local, remote) == ["b", "c"]
    assert plan_upload(local, dict(local)) == []


def test_parse_find_manifest_handles_fractional_mtime_and_spaces() -> None:
    text = "a b/c.txt\t12\t1700000000.9876543210\nx\t0\t5.0000000000\n"
    assert parse_find_manifest(text) == {"a b/c.txt": FileStat(12, 1700000000), "x": FileStat(0, 5)}


def test_sync_and_exclude_are_submit_options_parsed_anywhere(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--remote", "c", "submit", "train.py", "--env", "a", "--sync", "data",
         "--exclude=*.pyc", "--", "--sync", "kept"])
    assert args.sync == [Path("data")] and args.exclude == ["*.pyc"]
    assert args.script == "train.py" and args.program_args == ["--sync", "kept"]
    assert "--sync DIR" in build_parser()._subparsers._group_actions[0].choices[  # type: ignore[union-attr]
        "submit"].format_help()


def test_sync_without_remote_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "x.py", "--env", "a", "--sync", "."]) == 2
    assert "--sync/--exclude upload files to a remote login node" in capsys.readouterr().err


def test_path_map_places_files_inside_synced_trees(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    paths = PathMap(((project, "/scratch/w/project"),))
    assert paths.remote_path(project / "src" / "train.py") == "/scratch/w/project/src/train.py"
    assert paths.remote_path(project) == "/scratch/w/project"
    assert paths.remote_path(tmp_path / "elsewhere.py") is None


def test_local_globals_are_not_sent() -> None:
    parser = build_parser()
    args = parser.parse_args(["--remote", "c", "--site=/x.yaml", "env", "list", "--json", "-v"])
    assert remote_argv(parser, args) == ["-v", "env", "list"]


def test_skipping_writer_replays_only_new_text() -> None:
    out = io.StringIO()
    sink = _SkippingWriter(out)
    sink.write("line1\nli")
    sink.rewind()  # a reconnect: the command replays from the start
    sink.write("line1\n")
    sink.write("line2\nline3\n")
    assert out.getvalue() == "line1\nline2\nline3\n"


def test_local_manifest_skips_symlink_loops_once_and_keeps_shared_links(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    (project / "sub" / "deeper").mkdir(parents=True)
    (project / "train.py").write_text("print(1)\n")
    (project / "sub" / "deeper" / "x.txt").write_text("x")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "s.csv").write_text("a,b\n")
    (project / "sub" / "loop").symlink_to("..")                  # back to project
    (project / "sub" / "deeper" / "up").symlink_to("../..")     # back to project too
    (project / "data").symlink_to("../shared")                  # two links to one outside dir:
    (project / "data2").symlink_to("../shared")                 # both are real paths a job uses
    (project / "dangling").symlink_to("nowhere")
    manifest = local_manifest(project)
    assert sorted(manifest) == ["data/s.csv", "data2/s.csv", "sub/deeper/x.txt", "train.py"]
    err = capsys.readouterr().err
    # One line for all loops, naming each link and its target.
    assert err.count("\n") == 1 and "2 symlink loop(s)" in err
    assert "sub/loop -> .." in err and "sub/deeper/up -> ../.." in err
    # Told to a caller's sink instead of stderr when it gives one.
    told: list[str] = []
    assert local_manifest(project, ["data2"], warn=told.append) == {
        k: v for k, v in manifest.items() if not k.startswith("data2/")}
    assert len(told) == 1 and capsys.readouterr().err == ""


def test_local_manifest_turns_read_errors_into_one_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "ok.py").write_text("")
    (project / "self").symlink_to("self")  # ELOOP when followed: no file, no directory
    with pytest.raises(HpcenvError) as err:
        local_manifest(project)
    message = str(err.value)
    assert str(project / "self") in message and "symbolic links" in message
    assert "--exclude" in message and "\n" not in message
    assert sorted(local_manifest(project, ["self"])) == ["ok.py"]


def test_remote_argv_is_built_from_the_parsed_values() -> None:
    # The job name, the env file and a program argument all read "train.py" too: only the
    # parsed script is replaced, whatever its spelling.
    parser = build_parser()
    args = parser.parse_args(["submit", "--job-name", "train.py", "--env-file=train.py", "-p",
                              "gpu", "--gpus", "2", "--sbatch-arg=--exclusive", "--env", "x",
                              "./train.py", "train.py", "--", "-x", "train.py"])
    files = {dest for dest, value in vars(args).items() if isinstance(value, LocalFile)}
    assert files == {"script", "env_file"}
    argv = remote_argv(parser, args, {"script": "/w/1/train.py", "env_file": "/w/2/train.py"})
    # Options in the parser's order (whatever it is), then SCRIPT, then the program's words.
    assert argv[0] == "submit" and argv[-5:] == ["/w/1/train.py", "--", "train.py", "-x",
                                                 "train.py"]
    assert sorted(argv[1:-5]) == sorted(["--env=x", "--env-file=/w/2/train.py", "--gpus=2",
                                         "--partition=gpu", "--job-name=train.py",
                                         "--sbatch-arg=--exclusive"])
    assert parser.parse_args(argv).program_args == ["train.py", "-x", "train.py"]
    build = parser.parse_args(["env", "build", "--name", "spec.yml", "spec.yml"])
    assert remote_argv(parser, build, {"file": "/w/spec.yml"}) == \
        ["env", "build", "--name=spec.yml", "/w/spec.yml"]
    lock = parser.parse_args(["env", "build", "--from-lock", "./env.lock", "--name", "e", "-q"])
    assert remote_argv(parser, lock, {"from_lock": "/w/env.lock"}) == \
        ["-q", "env", "build", "--name=e", "--from-lock=/w/env.lock"]
    command = parser.parse_args(["submit", "--env", "x", "--wait", "--", "python", "-c", "1"])
    assert remote_argv(parser, command) == ["submit", "--env=x", "--wait", "--", "python",
                                            "-c", "1"]
    run = parser.parse_args(["run", "-n", "x", "--", "python", "--version"])
    assert remote_argv(parser, run) == ["run", "--name=x", "--", "python", "--version"]


def test_job_info_from_remote_status_records() -> None:
    from hpcenv.jobs.control import job_exit_code, status_line

    failed = job_info({"job_id": "7", "name": "train", "state": "FAILED", "exit_code": 3,
                       "signal": None, "node": "cpu1", "elapsed": 2.0, "partition": "cpu",
                       "stdout": "/remote/slurm-7.out", "finished": True})
    assert failed.finished and job_exit_code(failed) == 3
    assert status_line(failed) == "job 7 FAILED on cpu1 [cpu] 0:00:02 exit 3"
    killed = job_info({"job_id": "8", "name": "x", "state": "CANCELLED", "signal": 15})
    assert job_exit_code(killed) == 143
    pending = job_info({"job_id": "9", "name": "x", "state": "PENDING", "elapsed": "bogus"})
    assert not pending.finished and pending.elapsed is None


# --- a real sshd -------------------------------------------------------------------------------

def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def session(sshd: SshServer, known_hosts: Path | None = None, **overrides: object) -> RemoteSession:
    return RemoteSession("testcluster", sshd.remote(**overrides),
                         known_hosts=[known_hosts or sshd.known_hosts], connect_timeout=5,
                         backoff=Backoff(attempts=5, first=0.1, cap=0.5))


@pytest.mark.ssh
def test_connect_and_run_reuse_one_connection(sshd: SshServer, ssh_client_home: Path) -> None:
    with session(sshd) as s:
        first = s.run("echo hello; echo oops >&2")
        transport = s.connection.transport
        second = s.run("echo $HPCENV_SITE")
        assert s.connection.transport is transport
    assert (first.stdout, first.stderr, first.exit_code) == ("hello\n", "oops\n", 0)
    # sshd's SetEnv reaches remote sessions (the cluster tests rely on it for SLURM_CONF).
    assert second.stdout.strip().endswith("site.yaml")


@pytest.mark.ssh
def test_remote_command_failure_carries_its_stderr(sshd: SshServer, ssh_client_home: Path) -> None:
    with session(sshd) as s, pytest.raises(RemoteCommandFailed) as err:
        s.run("echo first >&2; echo 'disk quota exceeded' >&2; exit 3", what="the step")
    assert err.value.remote_exit_code == 3
    assert "the step failed" in str(err.value) and "disk quota exceeded" in str(err.value)


@pytest.mark.ssh
def test_wrong_host_key_is_a_mismatch(sshd: SshServer, ssh_client_home: Path,
                                      tmp_path: Path) -> None:
    other = _keygen(tmp_path / "other_host_key")
    known = tmp_path / "known_hosts"
    key_type, key = other.with_suffix(".pub").read_text().split()[:2]
    known.write_text(f"[{sshd.host}]:{sshd.port} {key_type} {key}\n")
    with session(sshd, known) as s, pytest.raises(HostKeyMismatch) as err:
        s.connect()
    message = str(err.value)
    assert "HOST KEY MISMATCH" in message and f"[{sshd.host}]:{sshd.port}" in message
    assert "ssh-keygen -R" in message and "\n" not in message


@pytest.mark.ssh
def test_unknown_host_key_is_refused_not_added(sshd: SshServer, ssh_client_home: Path,
                                               tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with session(sshd, empty) as s, pytest.raises(UnknownHostKey) as err:
        s.connect()
    assert f"ssh-keyscan -p {sshd.port} {sshd.host}" in str(err.value)
    # Never auto-accepted: nothing was written anywhere.
    assert empty.read_text() == ""
    assert not (ssh_client_home / ".ssh" / "known_hosts").exists()


@pytest.mark.ssh
def test_user_known_hosts_is_honoured(sshd: SshServer, ssh_client_home: Path) -> None:
    (ssh_client_home / ".ssh" / "known_hosts").write_text(sshd.known_hosts.read_text())
    s = RemoteSession("testcluster", sshd.remote(), connect_timeout=5)
    with s:
        assert s.run("true").exit_code == 0


@pytest.mark.ssh
def test_per_remote_known_hosts_file_is_trusted(sshd: SshServer, ssh_client_home: Path,
                                                tmp_path: Path) -> None:
    # The laptop's own known_hosts knows nothing; the lab ships the login node's key.
    (ssh_client_home / ".ssh" / "known_hosts").write_text("")
    lab_file = tmp_path / "lab_known_hosts"
    lab_file.write_text(sshd.known_hosts.read_text())
    with RemoteSession("testcluster", sshd.remote(known_hosts=lab_file), connect_timeout=5) as s:
        assert s.run("echo trusted").stdout == "trusted\n"
    # Without it, the same host is unknown: the file is what made the difference.
    with RemoteSession("testcluster", sshd.remote(), connect_timeout=5) as s, \
            pytest.raises(UnknownHostKey):
        s.connect()
    assert (ssh_client_home / ".ssh" / "known_hosts").read_text() == ""


@pytest.mark.ssh
def test_a_missing_per_remote_known_hosts_file_is_named(sshd: SshServer, ssh_client_home: Path,
                                                        tmp_path: Path) -> None:
    missing = tmp_path / "typo_known_hosts"
    with RemoteSession("testcluster", sshd.remote(known_hosts=missing, source="site.yaml:12"),
                       connect_timeout=5) as s, pytest.raises(HpcenvError) as err:
        s.connect()
    assert str(missing) in str(err.value) and "site.yaml:12" in str(err.value)


@pytest.mark.ssh
def test_a_fractional_connect_timeout_is_kept(sshd: SshServer, ssh_client_home: Path) -> None:
    import socket

    s = RemoteSession("testcluster", sshd.remote(), known_hosts=[sshd.known_hosts],
                      connect_timeout=0.5)
    with s:
        assert s.run("echo fast").stdout == "fast\n"
    # A port that accepts but never speaks SSH: the handshake wait is bounded by the 0.5 s
    # (fabric alone would make it 0, meaning no limit, and paramiko's banner wait 15 s).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = RemoteSession("testcluster", sshd.remote(port=silent.getsockname()[1]),
                             connect_timeout=0.5)
        with mute, pytest.raises(HostUnreachable) as err:
            mute.connect()
    assert "no SSH handshake within 0.5s" in str(err.value)


@pytest.mark.ssh
def test_default_login_user_is_this_account_not_user_env(
        sshd: SshServer, ssh_client_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As ssh does: the account this process runs as, whatever $USER/$LOGNAME say.
    import pwd

    monkeypatch.setenv("USER", "not-a-login")
    monkeypatch.setenv("LOGNAME", "not-a-login")
    me = pwd.getpwuid(os.getuid()).pw_name
    assert me == sshd.user
    with session(sshd, user=None) as s:
        assert s.run("id -un").stdout.strip() == me


@pytest.mark.ssh
def test_proxy_jump_through_a_gateway(sshd: SshServer, ssh_client_home: Path) -> None:
    # The same sshd serves as jump host and target: the hop is real (a direct-tcpip channel).
    jump = f"{sshd.user}@{sshd.host}:{sshd.port}"
    with session(sshd, proxy_jump=jump) as s:
        assert s.run("echo via-jump").stdout == "via-jump\n"
        assert s.connection.gateway is not None and s.connection.gateway.is_connected


@pytest.mark.ssh
def test_jump_host_key_is_checked_too(sshd: SshServer, ssh_client_home: Path,
                                      tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    jump = f"{sshd.user}@{sshd.host}:{sshd.port}"
    with session(sshd, empty, proxy_jump=jump) as s, pytest.raises(UnknownHostKey) as err:
        s.connect()
    assert f"via jump host {jump}" in str(err.value)


@pytest.mark.ssh
def test_ssh_config_alias_is_honoured(sshd: SshServer, ssh_client_home: Path) -> None:
    (ssh_client_home / ".ssh" / "config").write_text(
        f"Host login-alias\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.key}\n  UserKnownHostsFile {sshd.known_hosts}\n")
    alias = RemoteSession("testcluster", sshd.remote(host="login-alias", port=None, user=None,
                                                     identity_file=None), connect_timeout=5)
    with alias:
        assert alias.run("echo aliased").stdout == "aliased\n"


@pytest.mark.ssh
def test_refused_key_names_the_key(sshd: SshServer, ssh_client_home: Path,
                                   tmp_path: Path) -> None:
    stranger = _keygen(tmp_path / "stranger")
    with session(sshd, identity_file=stranger) as s, pytest.raises(AuthRefused) as err:
        s.connect()
    assert str(stranger) in str(err.value) and "authorized_keys" in str(err.value)


@pytest.mark.ssh
def test_closed_port_is_unreachable(sshd: SshServer, ssh_client_home: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    with session(sshd, port=free_port) as s, pytest.raises(HostUnreachable) as err:
        s.connect()
    assert "refused" in str(err.value) and str(free_port) in str(err.value)


@pytest.mark.ssh
def test_remote_hpcenv_missing(sshd: SshServer, ssh_client_home: Path) -> None:
    with session(sshd, hpcenv_command="/opt/nowhere/bin/hpcenv") as s, \
            pytest.raises(RemoteHpcenvMissing) as err:
        s.check_version()
    assert "/opt/nowhere/bin/hpcenv" in str(err.value) and "hpcenv_command" in str(err.value)


@pytest.mark.ssh
def test_remote_version_mismatch(sshd: SshServer, ssh_client_home: Path, tmp_path: Path) -> None:
    old = tmp_path / "old-hpcenv"
    old.write_text("#!/bin/sh\necho 'hpcenv 9.3.1'\n")
    old.chmod(0o755)
    with session(sshd, hpcenv_command=str(old)) as s, pytest.raises(IncompatibleVersion) as err:
        s.check_version()
    assert "hpcenv 9.3.1" in str(err.value) and "major.minor" in str(err.value)


@pytest.mark.ssh
def test_remote_version_of_the_real_hpcenv(sshd: SshServer, ssh_client_home: Path) -> None:
    from hpcenv import __version__

    with session(sshd) as s:
        assert s.check_version() == f"hpcenv {__version__}"


@pytest.mark.ssh
def test_sync_sends_only_changed_files(sshd: SshServer, ssh_client_home: Path,
                                       tmp_path: Path) -> None:
    src = tmp_path / "project"
    (src / "data").mkdir(parents=True)
    (src / "__pycache__").mkdir()
    (src / "train.py").write_text("print('train')\n")
    (src / "data" / "a b.csv").write_text("x,y\n1,2\n")
    (src / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0" * 10)
    (src / "notes.tmp").write_text("scratch")
    (src / "data" / "back").symlink_to("..")  # a loop: skipped, and said once per sync
    dest = str(sshd.root / "work" / "sync-test")
    excludes = ["__pycache__", "*.tmp"]
    messages: list[str] = []
    with session(sshd) as s:
        s.info = messages.append
        first = sync_dir(s, src, dest, excludes)
        second = sync_dir(s, src, dest, excludes)
        (src / "train.py").write_text("print('train v2')\n")
        third = sync_dir(s, src, dest, excludes)
    assert first.uploaded == ("data/a b.csv", "train.py")
    assert len(messages) == 3 and all("data/back -> .." in m for m in messages), messages
    assert second.uploaded == () and second.unchanged == 2
    assert third.uploaded == ("train.py",)
    assert (Path(dest) / "train.py").read_text() == "print('train v2')\n"
    assert (Path(dest) / "data" / "a b.csv").read_text() == "x,y\n1,2\n"
    assert not (Path(dest) / "__pycache__").exists() and not (Path(dest) / "notes.tmp").exists()
    assert local_manifest(src, excludes) == local_manifest(Path(dest))


class OnceAt(io.StringIO):
    """An output stream that calls ``action`` once, as soon as ``marker`` has been written:
    something happening to the connection in the middle of a command's output."""

    def __init__(self, marker: str, action: Callable[[], object]) -> None:
        super().__init__()
        self.marker, self.action, self.fired = marker, action, False

    def write(self, text: str) -> int:
        n = super().write(text)
        if not self.fired and self.marker in self.getvalue():
            self.fired = True
            self.action()
        return n


@pytest.mark.ssh
def test_follow_resumes_after_the_connection_drops(sshd: SshServer,
                                                   ssh_client_home: Path) -> None:
    lines = 40
    # Both streams replay after a reconnect (as hpcenv logs -f copies a job's stderr file).
    command = f"for i in $(seq 1 {lines}); do echo line$i; echo err$i >&2; sleep 0.05; done"
    dropped: list[int] = []
    out, err = OnceAt("line10\n", lambda: dropped.append(sshd.drop_connections())), io.StringIO()
    with session(sshd) as s:
        first_transport = s.connection.transport
        code = s.follow(command, out, err)
        assert s.connection.transport is not first_transport  # it really reconnected
    assert out.fired and dropped[0] >= 1 and code == 0
    assert out.getvalue() == "".join(f"line{i}\n" for i in range(1, lines + 1))
    assert err.getvalue() == "".join(f"err{i}\n" for i in range(1, lines + 1))


@pytest.mark.ssh
def test_follow_waits_with_backoff_for_a_host_that_went_down(ssh_client_home: Path,
                                                            tmp_path: Path) -> None:
    from conftest_ssh import start_sshd, stop_sshd

    server = start_sshd(tmp_path / "own-sshd")  # private: it goes down and comes back
    lines = 40
    command = f"for i in $(seq 1 {lines}); do echo line$i; sleep 0.05; done"

    def go_down() -> None:
        server.go_down()
        threading.Timer(1.0, server.come_back).start()

    messages: list[str] = []
    out = OnceAt("line10\n", go_down)
    s = RemoteSession("testcluster", server.remote(), known_hosts=[server.known_hosts],
                      connect_timeout=5, backoff=Backoff(attempts=10, first=0.2, cap=1.0),
                      info=messages.append)
    try:
        with s:
            code = s.follow(command, out)
    finally:
        stop_sshd(server)
    assert out.fired and code == 0
    assert out.getvalue() == "".join(f"line{i}\n" for i in range(1, lines + 1))
    # Refused while down: retried on the backoff schedule, not given up at the first failure.
    assert any("retrying in 0.2s" in m for m in messages), messages


@pytest.mark.ssh
def test_wait_outlasts_a_host_that_goes_down_between_polls(ssh_client_home: Path,
                                                           tmp_path: Path) -> None:
    from conftest_ssh import start_sshd, stop_sshd

    from hpcenv.remote.jobs import wait_for_job

    # The remote hpcenv's status: RUNNING for three polls, then COMPLETED.
    polls = tmp_path / "polls"
    status = tmp_path / "hpcenv-status"
    status.write_text(
        "#!/bin/sh\n"
        f"n=$(($(cat {polls} 2>/dev/null || echo 0) + 1)); echo $n > {polls}\n"
        "if [ $n -ge 4 ]; then state=COMPLETED; else state=RUNNING; fi\n"
        'echo "{\\"job_id\\": \\"5\\", \\"name\\": \\"t\\", \\"state\\": \\"$state\\", '
        '\\"exit_code\\": 0}"\n')
    status.chmod(0o755)
    server = start_sshd(tmp_path / "own-sshd")
    messages: list[str] = []
    s = RemoteSession("testcluster", server.remote(hpcenv_command=str(status)),
                      known_hosts=[server.known_hosts], connect_timeout=5,
                      backoff=Backoff(attempts=10, first=0.2, cap=1.0), info=messages.append)
    result: list[object] = []
    try:
        with s:
            waiter = threading.Thread(target=lambda: result.append(
                wait_for_job(s, "5", show_status=False, first_poll=0.5, max_poll=0.5)))
            waiter.start()
            while not polls.exists() and waiter.is_alive():
                threading.Event().wait(0.01)
            server.go_down()  # while the waiter sleeps before its second poll
            threading.Timer(1.0, server.come_back).start()
            waiter.join(timeout=60)
    finally:
        stop_sshd(server)
    assert result and getattr(result[0], "state", None) == "COMPLETED", messages
    assert polls.read_text().strip() == "4"
    assert any("retrying in 0.2s" in m for m in messages), messages


@pytest.mark.ssh
def test_reconnect_gives_up_after_its_backoff(sshd: SshServer, ssh_client_home: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    s = session(sshd, port=free_port)
    s.backoff = Backoff(attempts=3, first=0.01, cap=0.02)
    with s, pytest.raises(HostUnreachable) as err:
        s.reconnect()
    assert "gave up after 3 reconnect attempts" in str(err.value)


# --- the CLI over --remote ---------------------------------------------------------------------

def _write_remotes(home: Path, sshd: SshServer, *, trust: bool = True, **fields: object) -> None:
    """The user's remotes.yaml naming ``sshd`` as testcluster; with ``trust`` its host key goes
    into the laptop's ~/.ssh/known_hosts."""
    remote = sshd.remote()
    values = {"host": remote.host, "port": remote.port, "user": remote.user or "",
              "identity_file": str(remote.identity_file), "workdir": remote.workdir or "",
              "hpcenv_command": remote.hpcenv_command, **fields}
    body = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in values.items())
    path = home / ".config" / "hpcenv" / "remotes.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("testcluster:\n" + body)
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts.read_text() if trust else "")


@pytest.mark.ssh
def test_cli_runs_the_command_on_the_remote(sshd: SshServer, ssh_client_home: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _write_remotes(ssh_client_home, sshd)
    assert main(["--remote", "testcluster", "--json", "site", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    # The remote's site config (set by sshd's SetEnv), not this side's embedded default.
    remote_site = os.path.join(str(sshd.root), "login", "site.yaml")
    assert remote_site in json.dumps(shown)


@pytest.mark.ssh
def test_cli_uses_the_remotes_own_known_hosts(sshd: SshServer, ssh_client_home: Path,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    lab_file = tmp_path / "lab_known_hosts"
    lab_file.write_text(sshd.known_hosts.read_text())
    _write_remotes(ssh_client_home, sshd, trust=False)
    assert main(["--remote", "testcluster", "env", "list"]) == 1
    assert "unknown host key" in capsys.readouterr().err
    _write_remotes(ssh_client_home, sshd, trust=False, known_hosts=str(lab_file))
    assert main(["--remote", "testcluster", "--json", "env", "list"]) == 0, capsys.readouterr().err
    assert isinstance(json.loads(capsys.readouterr().out), list)


@pytest.mark.ssh
def test_cli_uploads_a_local_spec_for_env_inspect(sshd: SshServer, ssh_client_home: Path,
                                                  tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "laptop-only.yml"
    spec.write_text("name: laptop-only\nchannels: [conda-forge]\ndependencies:\n"
                    "  - python=3.11\n  - pytorch-cuda=12.1\n")
    _write_remotes(ssh_client_home, sshd)
    assert main(["--remote", "testcluster", "env", "inspect", str(spec), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "laptop-only" and shown["cuda"] == "12.1"
    uploaded = list((Path(sshd.remote().workdir or "") / "inputs").glob("*/laptop-only.yml"))
    assert [p.read_text() for p in uploaded] == [spec.read_text()]


@pytest.mark.ssh
def test_uploads_never_overwrite_and_are_sent_once(sshd: SshServer, ssh_client_home: Path,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # Two projects, each with its own spec.yml: a queued job of one must keep reading its file.
    specs = []
    for name in ("proj-a", "proj-b"):
        (tmp_path / name).mkdir()
        spec = tmp_path / name / "spec.yml"
        spec.write_text(f"name: {name}\nchannels: [conda-forge]\ndependencies: [python=3.11]\n")
        specs.append(spec)
    _write_remotes(ssh_client_home, sshd)
    for spec in specs:
        assert main(["--remote", "testcluster", "--json", "env", "inspect", str(spec)]) == 0
        assert json.loads(capsys.readouterr().out)["name"] == spec.parent.name
    assert main(["--remote", "testcluster", "--json", "env", "inspect", str(specs[0])]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["name"] == "proj-a"
    assert "uploading" not in captured.err  # the same contents are already there
    remote = sorted(p.read_text() for p in
                    (Path(sshd.remote().workdir or "") / "inputs").glob("*/spec.yml"))
    assert remote == sorted(spec.read_text() for spec in specs)


@pytest.mark.ssh
def test_cli_errors_are_one_line(sshd: SshServer, ssh_client_home: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    _write_remotes(ssh_client_home, sshd, hpcenv_command="/opt/nowhere/hpcenv")
    assert main(["--remote", "testcluster", "site", "show"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hpcenv: error: remote 'testcluster': hpcenv not found")
    assert err.count("\n") == 1
    assert main(["--remote", "nosuch", "site", "show"]) == 2
    assert "unknown remote 'nosuch' (known: testcluster)" in capsys.readouterr().err


@pytest.mark.ssh
def test_remote_exit_code_and_stderr_pass_through(sshd: SshServer, ssh_client_home: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _write_remotes(ssh_client_home, sshd)
    assert main(["--remote", "testcluster", "env", "inspect", "/no/such/spec.yml"]) == 2
    assert "/no/such/spec.yml" in capsys.readouterr().err


@pytest.mark.ssh
def test_a_port_that_is_no_ssh_server_fails_in_one_line(sshd: SshServer, ssh_client_home: Path,
                                                       ) -> None:
    # A user's shell, not pytest: nothing may add paramiko's transport traceback to the line.
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.close()

        server = threading.Thread(target=hang_up, daemon=True)
        server.start()
        _write_remotes(ssh_client_home, sshd, port=port)
        proc = subprocess.run([sys.executable, "-m", "hpcenv", "--remote", "testcluster", "env",
                               "list"], capture_output=True, text=True, timeout=60)
        server.join(timeout=10)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"hpcenv: error: remote 'testcluster': SSH connection to "
                                  f"{sshd.user}@127.0.0.1:{port} failed")
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_help_does_not_import_fabric() -> None:
    code = ("import sys; from hpcenv.cli import build_parser; build_parser(); "
            "import hpcenv.cli.remote, hpcenv.remote.sync; print('fabric' in sys.modules, "
            "'paramiko' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.split() == ["False", "False"]


def test_sync_only_with_submit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--remote", "testcluster", "site", "show", "--sync", "."])
    assert exit_.value.code == 2
    assert "unknown option --sync" in capsys.readouterr().err




# --- through sshd to the real test cluster -------------------------------------------------------

EXAMPLES = REPO / "examples"


def _laptop_project(tmp_path: Path) -> Path:
    project = tmp_path / "laptop-project"
    (project / "__pycache__").mkdir(parents=True)
    shutil.copy(EXAMPLES / "train.py", project / "train.py")
    shutil.copy(EXAMPLES / "llm-finetune.yml", project / "llm-finetune.yml")
    (project / "__pycache__" / "stale.pyc").write_bytes(b"\0")
    return project


@pytest.mark.slurm
@pytest.mark.ssh
def test_remote_submit_lands_on_the_partition_its_cuda_needs(
        sshd_slurm: SshServer, ssh_client_home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SLURM_CONF", raising=False)  # a laptop shell knows no Slurm
    monkeypatch.chdir(_laptop_project(tmp_path))
    _write_remotes(ssh_client_home, sshd_slurm)
    # As the redesign issue types it: --sync after the script, --remote after the command.
    code = main(["--json", "submit", "train.py", "--env", "llm-finetune", "--sync", ".",
                 "--exclude", "__pycache__", "--wait", "--remote", "testcluster"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    submitted = json.loads(captured.out)
    # llm-finetune needs CUDA 12.4: gpu-a100, kept off a100n2 (12.2 driver) by a constraint.
    assert submitted["partition"] == "gpu-a100" and "cuda12.4" in submitted["constraint"]
    assert submitted["remote"] == "testcluster"
    job_id = str(submitted["job_id"])

    assert main(["--remote", "testcluster", "logs", job_id]) == 0
    log = capsys.readouterr().out
    assert "SLURMD_NODENAME: a100n1" in log and f"SLURM_JOB_ID: {job_id}" in log
    assert "done: w=" in log
    assert main(["--remote", "testcluster", "--json", "status", job_id]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "COMPLETED"
    synced = Path(sshd_slurm.remote().workdir or "") / "laptop-project"
    assert (synced / "train.py").is_file() and not (synced / "__pycache__").exists()


@pytest.mark.slurm
@pytest.mark.ssh
def test_remote_submit_rewrites_the_script_not_a_job_name_that_reads_the_same(
        sshd_slurm: SshServer, ssh_client_home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.chdir(_laptop_project(tmp_path))
    _write_remotes(ssh_client_home, sshd_slurm)
    code = main(["--remote", "testcluster", "--json", "submit", "--job-name", "train.py",
                 "train.py", "--env", "llm-finetune", "--wait"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    job_id = str(json.loads(captured.out)["job_id"])
    assert main(["--remote", "testcluster", "--json", "status", job_id]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["name"], status["state"]) == ("train.py", "COMPLETED")
    assert main(["--remote", "testcluster", "logs", job_id]) == 0
    assert "done: w=" in capsys.readouterr().out  # the uploaded script is what ran


@pytest.mark.slurm
@pytest.mark.ssh
def test_remote_wait_survives_a_dropped_connection(
        sshd_slurm: SshServer, ssh_client_home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from hpcenv.remote.jobs import wait_for_job

    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.chdir(_laptop_project(tmp_path))
    _write_remotes(ssh_client_home, sshd_slurm)
    # No --sync: the script and the env file a local submit would find are uploaded.
    assert main(["--remote", "testcluster", "--json", "submit", "train.py",
                 "--env", "llm-finetune"]) == 0
    job_id = str(json.loads(capsys.readouterr().out)["job_id"])
    with session(sshd_slurm) as s:
        s.connect()
        assert sshd_slurm.drop_connections() >= 1
        info = wait_for_job(s, job_id, show_status=False, first_poll=0.2)
        assert (info.state, info.exit_code) == ("COMPLETED", 0)
        out = io.StringIO()
        follow = s.hpcenv_line(["logs", "-f", job_id])
        assert s.follow(follow, out) == 0
    log = out.getvalue()
    assert log.count("done: w=") == 1 and "SLURMD_NODENAME: a100n1" in log


@pytest.mark.slurm
@pytest.mark.ssh
def test_remote_env_build_once_then_reuse_and_from_lock(
        sshd_slurm: SshServer, ssh_client_home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"remote-build-{os.getpid()}"
    monkeypatch.chdir(tmp_path)
    shutil.copy(EXAMPLES / "cuda118.yml", tmp_path / "spec.yml")
    _write_remotes(ssh_client_home, sshd_slurm)
    remote = ["--remote", "testcluster", "--json"]
    assert main([*remote, "env", "build", "./spec.yml", "--name", name]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main([*remote, "env", "build", "./spec.yml", "--name", name]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (first["status"], second["status"]) == ("built", "reused")
    assert first["prefix"] == second["prefix"] and first["cuda"] == "11.8"
    assert main([*remote, "env", "list"]) == 0
    assert name in capsys.readouterr().out

    # A lock exported on the cluster, kept on the laptop, recreates the env there (Path option).
    assert main(["--remote", "testcluster", "env", "export", name, "--lock"]) == 0
    (tmp_path / "env.lock").write_text(capsys.readouterr().out)
    assert main([*remote, "env", "build", "--from-lock", "./env.lock",
                 "--name", f"{name}-locked"]) == 0
    locked = json.loads(capsys.readouterr().out)
    assert locked["status"] == "built" and locked["prefix"] != first["prefix"]


def _logins(server: SshServer) -> int:
    """SSH logins the server accepted so far (sshd logs one line per authenticated connection)."""
    return (server.root / "sshd.log").read_text().count("Accepted publickey")


@pytest.mark.slurm
@pytest.mark.ssh
def test_laptop_submit_builds_once_and_each_command_is_one_connection(
        sshd_slurm: SshServer, ssh_client_home: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's "done when", as a user types it: no --sync, no --env-file, no SLURM_CONF;
    an env the cluster has never seen, so the login node builds it from the uploaded file."""
    env = f"laptop-{uuid.uuid4().hex[:8]}"
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLES / "train.py", tmp_path / "examples" / "train.py")
    spec = (EXAMPLES / "llm-finetune.yml").read_text().replace("name: llm-finetune",
                                                               f"name: {env}")
    assert f"name: {env}" in spec
    (tmp_path / "examples" / f"{env}.yml").write_text(spec)
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.chdir(tmp_path)
    _write_remotes(ssh_client_home, sshd_slurm)
    remote = ["--remote", "testcluster"]

    def one_connection(args: list[str]) -> tuple[int, str, str]:
        before = _logins(sshd_slurm)
        code = main([*remote, *args])
        captured = capsys.readouterr()
        assert _logins(sshd_slurm) - before == 1, (args, captured.err)
        return code, captured.out, captured.err

    code, out, err = one_connection(["submit", "examples/train.py", "--env", env, "--wait"])
    assert code == 0, err
    assert f"building env {env}" in err and "COMPLETED on a100n1" in err
    job_id = err.split("submitted job ", 1)[1].split()[0]

    code, out, err = one_connection(["--json", "submit", "examples/train.py", "--env", env])
    again = json.loads(out)
    assert code == 0 and again["env_status"] == "existing" and "uploading" not in err

    code, out, _ = one_connection(["logs", "-f", job_id])
    assert code == 0 and "SLURMD_NODENAME: a100n1" in out and out.count("done: w=") == 1
    code, out, _ = one_connection(["status", job_id])
    assert code == 0 and "COMPLETED" in out and f"{env} v1" in out
    code, out, _ = one_connection(["jobs", "--all"])
    assert code == 0 and out.startswith("JOB") and job_id in out
    code, out, _ = one_connection(["env", "show", env])
    assert code == 0 and f"{env} version 1" in out
    code, out, _ = one_connection(["--json", "env", "list"])
    assert code == 0 and env in {record["name"] for record in json.loads(out)}

    code, out, _ = one_connection(["--json", "submit", "--env", env, "--partition", "cpu",
                                   "--gpus", "0", "--", "sleep", "120"])
    sleeper = str(json.loads(out)["job_id"])
    code, out, _ = one_connection(["cancel", sleeper])
    assert code == 0 and f"cancelled job {sleeper}" in out
    code, out, _ = one_connection(["--json", "submit", "--env", env, "--wait", "--partition",
                                   "cpu", "--gpus", "0", "--", "sh", "-c", "exit 7"])
    ended = json.loads(out)
    assert code == 7 and (ended["state"], ended["exit_code"]) == ("FAILED", 7)
