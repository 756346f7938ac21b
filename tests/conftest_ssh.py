"""Fixtures for the remote (SSH) tests: a real key-only sshd on 127.0.0.1 started by tests/ssh/up.

Registered for the whole suite by ``pytest_plugins`` in ``tests/conftest.py``.

- ``sshd``: a session-wide sshd whose sessions see ``HPCENV_SITE`` (a per-session local site
  config) and ``XDG_DATA_HOME`` under the test's temp dir, so the "login node" hpcenv never
  touches the real home.
- ``ssh_client_home``: an empty HOME and XDG_CONFIG_HOME for the client side (no user
  ``~/.ssh/config``, keys or known_hosts leak into a test).
- ``sshd_slurm``: an sshd whose sessions get ``SLURM_CONF`` of the ``slurm_cluster`` fixture, and
  whose hpcenv uses that cluster's site config (needs the ``slurm_cluster``, ``demo_channel`` and
  ``test_cache_dir`` fixtures registered too).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from hpcenv.site.config import Remote

SSH_DIR = Path(__file__).resolve().parent / "ssh"  # the up/down scripts


def local_hpcenv_command() -> str:
    """How the "login node" (this machine) runs the hpcenv under test, wherever it is installed."""
    return f"{shlex.quote(sys.executable)} -m hpcenv"


@dataclass(frozen=True)
class SshServer:
    root: Path
    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    pidfile: Path
    host_key_pub: Path

    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def remote(self, name: str = "testcluster", **overrides: Any) -> Remote:
        base = Remote(name=name, host=self.host, port=self.port, user=self.user,
                      identity_file=self.key, workdir=str(self.root / "work"),
                      hpcenv_command=local_hpcenv_command())
        return replace(base, **overrides)

    def connection_pids(self) -> list[int]:
        """Per-connection sshd processes: the listener's children."""
        master = self.pid()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (after "pid (comm) state") is the parent pid; comm may hold spaces.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == master:
                pids.append(int(entry.name))
        return pids

    def go_down(self) -> None:
        """Kill the listener and every open connection, as a host going down does."""
        for pid in [*self.connection_pids(), self.pid()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def come_back(self) -> None:
        """Start the listener again on the same port, with the same keys and config."""
        server_dir = self.root / "server"
        subprocess.run(["/usr/sbin/sshd", "-f", str(server_dir / "sshd_config"),
                        "-E", str(self.root / "sshd.log")], check=True, timeout=30)

    def drop_connections(self) -> int:
        """Kill every open connection (the listener keeps running); returns how many."""
        pids = self.connection_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)


def _parse_env(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def start_sshd(root: Path, setenv: Mapping[str, str] | None = None) -> SshServer:
    if os.geteuid() != 0:
        pytest.skip("needs root: tests/ssh/up runs sshd, which needs /run/sshd and may install "
                    "openssh-server")
    args = [str(SSH_DIR / "up"), "--root", str(root)]
    for key, value in (setenv or {}).items():
        args += ["--setenv", f"{key}={value}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"tests/ssh/up failed ({proc.returncode}): {proc.stderr[-2000:]}")
    env = _parse_env(proc.stdout)
    return SshServer(root=root, host=env["HPCENV_SSH_HOST"], port=int(env["HPCENV_SSH_PORT"]),
                     user=env["HPCENV_SSH_USER"], key=Path(env["HPCENV_SSH_KEY"]),
                     known_hosts=Path(env["HPCENV_SSH_KNOWN_HOSTS"]),
                     pidfile=Path(env["HPCENV_SSH_PIDFILE"]),
                     host_key_pub=root / "server" / "host_ed25519.pub")


def stop_sshd(server: SshServer) -> None:
    subprocess.run([str(SSH_DIR / "down"), "--root", str(server.root)], capture_output=True,
                   timeout=60, check=False)


def _remote_site(root: Path, extra: str = "") -> Path:
    """A site config for the "login node" side, with all state under ``root``."""
    site = root / "site.yaml"
    site.write_text(
        f"envs_dirs: [{root / 'envs'}]\n"
        f"pkgs_dirs: [{root / 'pkgs'}]\n"
        f"registry: {root / 'registry'}\n"
        f"state_dir: {root / 'state'}\n" + extra)
    return site


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    root = tmp_path_factory.mktemp("sshd")
    login = root / "login"
    login.mkdir()
    site = _remote_site(login)
    server = start_sshd(root, {"HPCENV_SITE": str(site), "XDG_DATA_HOME": str(login / "xdg")})
    try:
        yield server
    finally:
        stop_sshd(server)


@pytest.fixture(scope="session")
def sshd_slurm(slurm_cluster: Any, demo_channel: Any, test_cache_dir: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """An sshd in front of the test cluster: its sessions are a login node of that cluster
    (``SLURM_CONF``, the cluster's site config and the demo channel it builds from)."""
    root = tmp_path_factory.mktemp("sshd-slurm")
    server = start_sshd(root, {
        "SLURM_CONF": str(slurm_cluster.conf),
        "HPCENV_SITE": str(slurm_cluster.site),
        "HPCENV_SLURM_ROOT": str(slurm_cluster.root),
        "HPCENV_TEST_CACHE": str(test_cache_dir),
    })
    try:
        yield server
    finally:
        stop_sshd(server)


@pytest.fixture
def ssh_client_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty client HOME (and XDG_CONFIG_HOME) so a user's ssh setup cannot leak in."""
    home = tmp_path / "laptop-home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("HPCENV_SITE", raising=False)
    return home
