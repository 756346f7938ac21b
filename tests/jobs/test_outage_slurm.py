"""A controller outage on the real Slurm 22.05 test cluster: slurmctld is stopped for 40 s while
``hpcenv submit --wait`` waits for a job, which ends during the outage.  ``--wait`` rides the
outage out and reports the job's real exit code; meanwhile removing a build that a job might run
in is refused in one line, since nobody can say whether one does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest_slurm import SlurmCluster

from hpcenv.demo.site import write_demo_site

pytestmark = pytest.mark.slurm

OUTAGE = 40.0
V1 = "name: q\ndependencies:\n  - python=3.11\n"
V2 = "name: q\ndependencies:\n  - python=3.11\n  - hpcdemo-tools\n"
V3 = "name: q\ndependencies:\n  - python=3.11\n  - hpcdemo-kernels\n"


def _ctld_pid(cluster: SlurmCluster) -> int | None:
    try:
        pid = int((cluster.root / "run" / "slurmctld.pid").read_text())
        return pid if Path(f"/proc/{pid}/comm").read_text().strip() == "slurmctld" else None
    except (OSError, ValueError):
        return None


def _stop_ctld(cluster: SlurmCluster) -> None:
    pid = _ctld_pid(cluster)
    assert pid is not None, "slurmctld is not running"
    os.kill(pid, 15)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "slurmctld ignored SIGTERM for 30 s"
        time.sleep(0.1)


def _start_ctld(cluster: SlurmCluster) -> None:
    """Start slurmctld again on its saved state (no -c, unlike tests/cluster/up): the jobs it
    had come back, and every node answers before the next test."""
    if _ctld_pid(cluster) is None:
        subprocess.run([str(cluster.bin_dir.parent / "sbin" / "slurmctld"), "-f", str(cluster.conf)],
                       check=True, env=cluster.env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        sinfo = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                               env=cluster.env)
        states = set(sinfo.stdout.split())
        if sinfo.returncode == 0 and states and states <= {"idle", "mix", "alloc"}:
            return
        assert time.monotonic() < deadline, f"cluster not healthy after restart: {sinfo.stdout}"
        time.sleep(0.5)


def _cli(site: Path, *argv: str, cluster: SlurmCluster, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hpcenv", "--site", str(site), *argv],
                            cwd=cwd, env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_wait_rides_out_a_stopped_controller_and_gets_the_exit_code(
        slurm_cluster: SlurmCluster, demo_channel, tmp_path: Path) -> None:
    from hpcenv.build.builder import build_env
    from hpcenv.scheduler.slurm_cli import SlurmCLI
    from hpcenv.site.config import load_site
    from hpcenv.spec.environment import parse_spec

    site_file = write_demo_site(tmp_path / "site", demo_channel, scheduler="slurm-cli",
                                slurm=f"{{bin_dir: {slurm_cluster.bin_dir}}}")
    site = load_site(site_file)
    v1, v2 = (build_env(parse_spec(text), site).record for text in (V1, V2))
    build_env(parse_spec(V3), site)  # v3 current: v1 and v2 are versions nobody runs as current

    name = f"outage-{os.getpid()}"
    waiting = _cli(site_file, "submit", "--env", "q", "--job-name", name, "--wait", "--",
                   "bash", "-c", "sleep 10; exit 7", cluster=slurm_cluster, cwd=tmp_path)
    slurm = SlurmCLI(bin_dir=slurm_cluster.bin_dir)
    try:
        deadline = time.monotonic() + 60
        while not any(j.name == name and j.state == "RUNNING" for j in slurm.jobs()):
            assert waiting.poll() is None, waiting.communicate()
            assert time.monotonic() < deadline, "the job did not start within 60 s"
            time.sleep(0.2)
        _stop_ctld(slurm_cluster)
        stopped = time.monotonic()

        # Whether a job runs in v1 cannot be known now: its removal is refused, in one line;
        # --force removes v2 regardless and says what that risks.  (Side by side: each waits
        # for scontrol to give up, ~18 s.)
        refused = _cli(site_file, "env", "rm", "q", "--version", "1", cluster=slurm_cluster,
                       cwd=tmp_path)
        forced = _cli(site_file, "env", "rm", "q", "--version", "2", "--force",
                      cluster=slurm_cluster, cwd=tmp_path)
        _, err = refused.communicate(timeout=120)
        assert refused.returncode == 1, err
        assert err.count("\n") == 1 and "cannot ask the scheduler" in err and "--force" in err
        _, forced_err = forced.communicate(timeout=120)
        assert forced.returncode == 0, forced_err
        assert "deleting q version 2 anyway (--force): a pending or running job in it fails" \
            in forced_err
        assert Path(v1.prefix, "bin", "python").exists() and not Path(v2.prefix).exists()
        history = _cli(site_file, "--json", "env", "history", "q", cluster=slurm_cluster,
                       cwd=tmp_path)
        assert [r["status"] for r in json.loads(history.communicate(timeout=60)[0])] == [
            "ready", "retired", "ready"]

        time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
        assert waiting.poll() is None, "--wait gave up during the outage"
        _start_ctld(slurm_cluster)
        out, err = waiting.communicate(timeout=300)
    finally:
        _start_ctld(slurm_cluster)
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 7, err
    assert "does not answer" in err and "answers again" in err
