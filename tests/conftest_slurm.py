"""The ``slurm_cluster`` session fixture: the real test Slurm clusters of ``tests/cluster/up``.

Registered for the whole suite by ``pytest_plugins`` in ``tests/conftest.py`` (pytest puts
``tests/`` on ``sys.path``).

``slurm_cluster`` is Debian's 22.05 cluster (shared with other sessions on the machine, and with
the ssh fixtures).  ``slurm_target`` is parametrized over the targets the scheduler and submit
tests run against:

* ``22.05-cli``: Debian's Slurm 22.05 through the Slurm CLI backend;
* ``25.11-cli``: Slurm 25.11 (built once per machine by ``../shared/slurm/build``, see
  ``tests/cluster/up --release``) through the CLI backend;
* ``25.11-pyslurm``: the same cluster through the pyslurm backend (pyslurm built against it;
  ``tests/run`` installs it).

Each release runs under its own root and ports (:data:`RELEASES`), so the two clusters never meet
and other test sessions keep using the 22.05 one.  A module restricts the targets with
``pytestmark = pytest.mark.parametrize("slurm_target", CLI_TARGETS, indirect=True)``.  A target
that cannot run here (no 25.11 build script, no matching pyslurm) skips with one line saying why.

While a target's tests run, ``SLURM_CONF`` and ``PATH`` point at its cluster and release, so
Slurm clients of one release only ever talk to that release's controller.  A cluster the
fixture started is stopped at the end of the session (set ``HPCENV_SLURM_KEEP=1`` to keep it).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from hpcenv.scheduler import get_scheduler
from hpcenv.scheduler.base import JobInfo, Scheduler
from hpcenv.scheduler.pyslurm_backend import pyslurm_version, same_release

CLUSTER_DIR = Path(__file__).resolve().parent / "cluster"


@dataclass(frozen=True)
class Release:
    root: Path
    port: int


# Root and slurmctld port per release (slurmds use port+10 onwards).  22.05 keeps the defaults of
# tests/cluster/up, which other sessions on this machine share.
RELEASES = {
    "22.05": Release(Path(os.environ.get("HPCENV_SLURM_ROOT") or "/tmp/hpcenv-slurm"),
                     int(os.environ.get("HPCENV_SLURM_PORT") or 6817)),
    "25.11": Release(Path(os.environ.get("HPCENV_SLURM_ROOT_25_11") or "/tmp/hpcenv-slurm-25.11"),
                     int(os.environ.get("HPCENV_SLURM_PORT_25_11") or 6917)),
}


@dataclass(frozen=True)
class Target:
    release: str
    scheduler: str       # the site config's scheduler: slurm-cli or pyslurm


TARGETS = {"22.05-cli": Target("22.05", "slurm-cli"), "25.11-cli": Target("25.11", "slurm-cli"),
           "25.11-pyslurm": Target("25.11", "pyslurm")}
CLI_TARGETS = ["22.05-cli", "25.11-cli"]


@dataclass(frozen=True)
class SlurmCluster:
    root: Path
    conf: Path          # the slurm.conf to export as SLURM_CONF
    # tests/cluster/site.yaml with envs, registry and job state in the session's temp dir:
    # the state under the cluster root is the README's to try, and no test run leaks into it.
    site: Path
    log_dir: Path
    release: str = "22.05"
    port: int = 6817
    bin_dir: Path = Path("/usr/bin")   # this release's client tools
    scheduler: str = "slurm-cli"       # the backend the tests of this target use
    started: bool = field(default=False, compare=False)

    @property
    def env(self) -> dict[str, str]:
        """Environment for a subprocess that talks to this cluster (e.g. the hpcenv CLI)."""
        return {**os.environ, "SLURM_CONF": str(self.conf),
                "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '')}"}

    @property
    def up_env(self) -> dict[str, str]:
        """Environment for tests/cluster/up and down of this cluster."""
        return {**self.env, "HPCENV_SLURM_ROOT": str(self.root),
                "HPCENV_SLURM_PORT": str(self.port), "HPCENV_SLURM_RELEASE": self.release}

    def backend(self, timeout: float = 60.0) -> Scheduler:
        return get_scheduler(self.scheduler, timeout=timeout, bin_dir=self.bin_dir)

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



class Clusters:
    """Starts each release's cluster once, on first use; remembers which it started."""

    def __init__(self, site_dir: Path) -> None:
        self._up: dict[str, SlurmCluster | str] = {}   # release -> cluster, or why it cannot run
        self._site_dir = site_dir                       # where the private site copies go

    def get(self, release: str) -> SlurmCluster:
        if os.geteuid() != 0:
            pytest.skip(NEEDS_ROOT)
        if release not in self._up:
            self._up[release] = self._start(release)
        found = self._up[release]
        if isinstance(found, str):
            pytest.skip(found)
        return found

    def _start(self, release: str) -> SlurmCluster | str:
        spec = RELEASES[release]
        was_running = _running(spec.root)
        env = {**os.environ, "HPCENV_SLURM_ROOT": str(spec.root),
               "HPCENV_SLURM_PORT": str(spec.port), "HPCENV_SLURM_RELEASE": release}
        # The first 25.11 start on a machine builds Slurm (6-12 min on 2 cores).
        proc = subprocess.run([str(CLUSTER_DIR / "up")], capture_output=True, text=True,
                              timeout=3600, env=env)
        if proc.returncode == 3:  # the release cannot be had here: say why, in one line
            lines = proc.stderr.strip().splitlines()
            return lines[-1].removeprefix("up: ") if lines else f"Slurm {release} unavailable"
        if proc.returncode != 0:
            pytest.fail(f"tests/cluster/up --release {release} failed (exit {proc.returncode}):\n"
                        f"{proc.stderr[-3000:]}", pytrace=False)
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in proc.stdout.splitlines() if line.startswith("export "))
        bin_dir = Path(exports["PATH"].split(":", 1)[0])
        site_dir = self._site_dir / release
        site_dir.mkdir(parents=True, exist_ok=True)
        return SlurmCluster(root=spec.root, conf=Path(exports["SLURM_CONF"]),
                            site=private_site(site_dir), log_dir=spec.root / "log",
                            release=release, port=spec.port, bin_dir=bin_dir,
                            started=not was_running)

    def stop_started(self) -> None:
        if os.environ.get("HPCENV_SLURM_KEEP") == "1":
            return
        for release, cluster in self._up.items():
            if isinstance(cluster, SlurmCluster) and cluster.started:
                env = {**os.environ, "HPCENV_SLURM_ROOT": str(RELEASES[release].root)}
                subprocess.run([str(CLUSTER_DIR / "down")], capture_output=True, timeout=120,
                               env=env)


@pytest.fixture(scope="session")
def slurm_clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clusters]:
    clusters = Clusters(tmp_path_factory.mktemp("cluster-sites"))
    yield clusters
    clusters.stop_started()


def pyslurm_problem(release: str) -> str | None:
    """Why the pyslurm backend cannot run against ``release`` here, or None."""
    version = pyslurm_version()
    if version is None:
        return ("pyslurm is not installed (tests/run builds it against Slurm 25.11: "
                "SLURM_INCLUDE_DIR=PREFIX/include SLURM_LIB_DIR=PREFIX/lib pip install pyslurm)")
    if not same_release(version, release):
        return f"pyslurm {version} is built for another Slurm than {release}"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(slurm_clusters: Clusters) -> Iterator[SlurmCluster]:
    """Debian's Slurm 22.05 cluster, ``SLURM_CONF`` pointing at it for the session."""
    cluster = slurm_clusters.get("22.05")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster


@pytest.fixture(scope="session", params=list(TARGETS))
def slurm_target(request: pytest.FixtureRequest, slurm_clusters: Clusters) -> Iterator[SlurmCluster]:
    """One target (release and backend) per parameter; see the module doc."""
    target = TARGETS[request.param]
    cluster = slurm_clusters.get(target.release)
    if target.scheduler == "pyslurm" and (problem := pyslurm_problem(target.release)):
        pytest.skip(problem)
    with pytest.MonkeyPatch.context() as mp:
        # pyslurm reads SLURM_CONF once, when it is first imported: in this process that is
        # under the 25.11 target (nothing imports it for 22.05, whose release it does not match).
        mp.setenv("SLURM_CONF", str(cluster.conf))
        mp.setenv("PATH", f"{cluster.bin_dir}:{os.environ.get('PATH', '')}")
        yield replace(cluster, scheduler=target.scheduler)


@pytest.fixture(autouse=True)
def _slurm_tools_of_the_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests on the 22.05 cluster (``slurm_cluster`` without a ``slurm_target``) get its client
    tools first on PATH: a session-scoped ``slurm_target`` of another release may still hold
    PATH, and one release's tools must not talk to another's controller."""
    if "slurm_cluster" not in request.fixturenames or "slurm_target" in request.fixturenames:
        yield
        return
    cluster: SlurmCluster = request.getfixturevalue("slurm_cluster")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{cluster.bin_dir}:{os.environ.get('PATH', '')}")
        mp.setenv("SLURM_CONF", str(cluster.conf))
        yield
