"""The ``slurm_cluster`` session fixture: the real test Slurm cluster of ``tests/cluster/up``.

Registered for the whole suite by ``pytest_plugins`` in ``tests/conftest.py`` (pytest puts
``tests/`` on ``sys.path``).

The fixture runs ``tests/cluster/up`` (a no-op when the cluster is already up, ~5 s to start it,
~15 s on a machine without Slurm installed), points ``SLURM_CONF`` at it for the session, and
stops the cluster at the end only if it started it (set ``HPCENV_SLURM_KEEP=1`` to keep it).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcenv.scheduler.base import JobInfo, Scheduler

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"


@dataclass(frozen=True)
class SlurmCluster:
    root: Path
    conf: Path          # the slurm.conf to export as SLURM_CONF
    # tests/cluster/site.yaml with envs, registry and job state in the session's temp dir:
    # the state under the cluster root is the README's to try, and no test run leaks into it.
    site: Path
    log_dir: Path

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess that talks to this cluster (e.g. the hpcenv CLI)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def wait(self, scheduler: Scheduler, job_id: str, timeout: float = 60.0) -> JobInfo:
        """Poll ``scheduler.status(job_id)`` until the job finished; return its JobInfo."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            info = scheduler.status(job_id)
            if info.finished:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not finished after {timeout} s: {info}")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)


def _running(root: Path) -> bool:
    pid_file = root / "run" / "slurmctld.pid"
    try:
        pid = int(pid_file.read_text())
        return Path(f"/proc/{pid}/comm").read_text().strip() == "slurmctld"
    except (OSError, ValueError):
        return False


NEEDS_ROOT = ("needs root: tests/cluster/up installs Slurm and runs slurmctld, slurmd and munge "
              "as root")


def private_site(dest: Path) -> Path:
    """``tests/cluster/site.yaml`` with its envs, package cache, registry and state under
    ``dest`` instead of the cluster root."""
    text = (CLUSTER_DIR / "site.yaml").read_text()
    shared = "${HPCENV_SLURM_ROOT:-/tmp/hpcenv-slurm}/site"
    assert text.count(shared) == 4, f"{CLUSTER_DIR / 'site.yaml'} changed its dirs"
    path = dest / "cluster-site.yaml"
    path.write_text(text.replace(shared, str(dest)))
    return path


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    if os.geteuid() != 0:
        pytest.skip(NEEDS_ROOT)
    root = Path(os.environ.get("HPCENV_SLURM_ROOT") or "/tmp/hpcenv-slurm")
    was_running = _running(root)
    proc = subprocess.run([str(CLUSTER_DIR / "up")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"tests/cluster/up failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}",
                    pytrace=False)
    exports = dict(line.removeprefix("export ").split("=", 1)
                   for line in proc.stdout.splitlines() if line.startswith("export "))
    conf = Path(exports["SLURM_CONF"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        yield SlurmCluster(root=root, conf=conf,
                           site=private_site(tmp_path_factory.mktemp("cluster-site")),
                           log_dir=root / "log")
    if not was_running and os.environ.get("HPCENV_SLURM_KEEP") != "1":
        subprocess.run([str(CLUSTER_DIR / "down")], capture_output=True, timeout=120)
