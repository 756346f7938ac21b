"""Two simulated login nodes that share a filesystem but not file locks.

Each node is a process tree in its own mount and UTS namespace (``unshare -m -u``) with its own
hostname, in which a ``bindfs`` FUSE mount is laid over the shared directory itself.  Every
mount is its own FUSE superblock, so ``flock`` taken on one node is invisible on the other (as
on Lustre mounted ``localflock``), while files, directories, renames, hardlinks and mtimes are
the underlying filesystem's.  The test process itself sees the plain directory: a third party
that checks the results.

Needs root (namespaces, FUSE mounts) and ``/dev/fuse``; installs ``bindfs`` with apt-get when it
is missing, as ``tests/cluster/up`` installs Slurm.  Without root or FUSE the tests skip with
one line saying so.  A node unmounts and exits when its stdin closes, so nothing outlives the
test session even if pytest is killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# Runs as the node's first process: name the node, mount, report, then hold the namespace
# until stdin closes and unmount (lazily if a straggler still has files open).
NODE_SCRIPT = r"""
hostname "$1"
bindfs -f --no-allow-other "$2" "$2" &
for _ in $(seq 200); do mountpoint -q "$2" && break; sleep 0.05; done
mountpoint -q "$2" || { echo "bindfs mount of $2 failed" >&2; exit 3; }
echo ready
read -r _ || true
fusermount -u "$2" 2>/dev/null || fusermount -uz "$2"
wait
"""


def _require_simulation() -> None:
    if os.geteuid() != 0:
        pytest.skip("multi-node simulation needs root (mount namespaces, FUSE mounts)")
    if not Path("/dev/fuse").exists() or shutil.which("unshare") is None:
        pytest.skip("multi-node simulation needs /dev/fuse and unshare (util-linux)")
    if shutil.which("bindfs") is None:
        proc = subprocess.run(["apt-get", "install", "-y", "-qq", "bindfs"], capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
            proc = subprocess.run(["apt-get", "install", "-y", "-qq", "bindfs"],
                                  capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or shutil.which("bindfs") is None:
            pytest.fail(f"installing bindfs failed: {proc.stderr[-2000:]}", pytrace=False)


@dataclass
class LoginNode:
    """One simulated login node: ``popen``/``run`` start processes inside it."""

    name: str
    init: subprocess.Popen[str]

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", "-t", str(self.init.pid), "-m", "-u", "--", *argv]

    def popen(self, argv: Sequence[str], *, env: dict[str, str] | None = None
              ) -> subprocess.Popen[str]:
        """Start ``argv`` on this node (nsenter execs it: the Popen pid is the program's)."""
        return subprocess.Popen(self.argv(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, env=env,
                              timeout=timeout)

    def stop(self) -> None:
        if self.init.poll() is None:
            assert self.init.stdin is not None
            self.init.stdin.close()
            try:
                self.init.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.init.kill()
                self.init.wait()


@dataclass(frozen=True)
class SimCluster:
    """Login nodes sharing ``shared`` (the same path on every node and in the test process)."""

    shared: Path
    nodes: tuple[LoginNode, ...]
    homes: Path

    def env(self, node: LoginNode) -> dict[str, str]:
        """An environment for hpcenv on ``node``: its own HOME, no user site config."""
        home = self.homes / node.name
        home.mkdir(parents=True, exist_ok=True)
        clean = {k: v for k, v in os.environ.items()
                 if k != "HPCENV_SITE" and not k.startswith("XDG_")}
        return {**clean, "HOME": str(home)}


def start_node(name: str, shared: Path) -> LoginNode:
    init = subprocess.Popen(
        ["unshare", "-m", "-u", "--propagation", "private", "bash", "-c", NODE_SCRIPT, "node",
         name, str(shared)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert init.stdout is not None
    line = init.stdout.readline().strip()
    if line != "ready":
        init.kill()
        _, err = init.communicate()
        pytest.fail(f"login node {name} did not start: {err.strip()[-1000:]}", pytrace=False)
    return LoginNode(name, init)


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[SimCluster]:
    """Login nodes ``nodeA`` and ``nodeB`` sharing ``tmp_path/shared``."""
    _require_simulation()
    shared = tmp_path / "shared"
    shared.mkdir()
    nodes: list[LoginNode] = []
    try:
        for name in ("nodeA", "nodeB"):
            nodes.append(start_node(name, shared))
        yield SimCluster(shared=shared, nodes=tuple(nodes), homes=tmp_path / "homes")
    finally:
        for node in nodes:
            node.stop()


PYTHON = sys.executable
