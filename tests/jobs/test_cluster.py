"""tests/cluster/up and down: layout, idempotence, clean restarts, stopping only their own."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_slurm import CLI_TARGETS, CLUSTER_DIR, NEEDS_ROOT, SlurmCluster

pytestmark = pytest.mark.slurm


def pids(root: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in sorted((root / "run").glob("*.pid"))}


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=True)


def exports(cluster: SlurmCluster) -> str:
    return f"export SLURM_CONF={cluster.conf}\nexport PATH={cluster.bin_dir}:$PATH\n"


# Both releases: Debian's 22.05 and 25.11 built from source (skipped when it cannot be built).
@pytest.mark.parametrize("slurm_target", CLI_TARGETS, indirect=True)
def test_layout(slurm_target: SlurmCluster) -> None:
    slurm_cluster = slurm_target
    out = run(["sinfo", "-h", "-N", "-o", "%N %P %f %G %T"], slurm_cluster.env).stdout
    rows = sorted(tuple(line.split()) for line in out.splitlines())
    assert [r[:4] for r in rows] == [
        ("a100n1", "gpu-a100", "cuda12.4", "gpu:a100:2"),
        ("a100n2", "gpu-a100", "cuda12.2", "gpu:a100:2"),
        ("cpu1", "cpu*", "(null)", "(null)"),
        ("cpu2", "cpu*", "(null)", "(null)"),
        ("h100n1", "gpu-h100", "cuda12.8", "gpu:h100:4"),
        ("v100n1", "gpu-v100", "cuda11.8", "gpu:v100:2"),
    ]
    # Other tests' jobs may still hold a node; none may be down or drained.
    assert {r[4] for r in rows} <= {"idle", "mixed", "allocated", "completing"}
    # Other sessions share the 22.05 root, and an older up writes only the first line.
    assert exports(slurm_cluster).startswith((slurm_cluster.root / "env.sh").read_text())
    version = run(["sinfo", "--version"], slurm_cluster.env).stdout.split()[-1]
    assert version.startswith(slurm_cluster.release + ".")


@pytest.mark.parametrize("slurm_target", CLI_TARGETS, indirect=True)
def test_up_again_is_a_no_op(slurm_target: SlurmCluster) -> None:
    slurm_cluster = slurm_target
    before = pids(slurm_cluster.root)
    assert set(before) == {"munged", "slurmctld", "slurmd-cpu1", "slurmd-cpu2", "slurmd-a100n1",
                           "slurmd-a100n2", "slurmd-v100n1", "slurmd-h100n1"}
    proc = run([str(CLUSTER_DIR / "up")], slurm_cluster.up_env)
    assert proc.stdout == exports(slurm_cluster)
    assert "already up" in proc.stderr
    assert pids(slurm_cluster.root) == before


@pytest.fixture
def second_cluster(slurm_cluster: SlurmCluster) -> Iterator[dict[str, str]]:  # noqa: F811
    """Another cluster beside the session's, on other ports and its own root.  Not under
    pytest's tmp_path: munged wants every parent of its socket world-searchable."""
    root = Path(tempfile.mkdtemp(prefix="hpcenv-slurm-test-", dir="/tmp"))
    # The 22.05 cluster's environment: its client tools first on PATH, whichever release's
    # tests run around this one.
    env = {**slurm_cluster.env, "HPCENV_SLURM_ROOT": str(root), "HPCENV_SLURM_PORT": "7817",
           "SLURM_CONF": str(root / "etc" / "slurm.conf")}
    try:
        yield env
    finally:
        subprocess.run([str(CLUSTER_DIR / "down")], env=env, capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)
def test_up_refuses_a_root_munged_cannot_use(tmp_path: Path) -> None:
    env = {**os.environ, "HPCENV_SLURM_ROOT": str(tmp_path / "c"), "HPCENV_SLURM_PORT": "7917"}
    proc = subprocess.run([str(CLUSTER_DIR / "up")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1
    assert "world-searchable" in proc.stderr and proc.stdout == ""


def test_restart_wipes_state_and_down_stops_only_its_own(
        second_cluster: dict[str, str], slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    root = Path(second_cluster["HPCENV_SLURM_ROOT"])
    run([str(CLUSTER_DIR / "up")], second_cluster)
    job = run(["sbatch", "--parsable", "-p", "cpu", "--hold", "--wrap", "true"], second_cluster)
    assert job.stdout.strip() == "1"  # a fresh controller: ids start at 1

    first = pids(root)
    run([str(CLUSTER_DIR / "up"), "--restart"], second_cluster)
    second = pids(root)
    assert set(first) == set(second) and not any(alive(p) for p in first.values())
    # State was wiped: the held job is gone and ids start over.
    gone = subprocess.run(["scontrol", "show", "job", "1"], env=second_cluster,
                          capture_output=True, text=True, timeout=60)
    assert "Invalid job id" in gone.stderr
    again = run(["sbatch", "--parsable", "-p", "cpu", "--hold", "--wrap", "true"], second_cluster)
    assert again.stdout.strip() == "1"

    # A stale pid file naming someone else's process must not get that process killed.
    decoy = subprocess.Popen(["sleep", "60"])
    try:
        (root / "run" / "slurmd-ghost.pid").write_text(f"{decoy.pid}\n")
        run([str(CLUSTER_DIR / "down")], second_cluster)
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait()
    assert not any(alive(p) for p in second.values())
    assert all(alive(p) for p in pids(slurm_cluster.root).values())  # the session's cluster
    assert run(["sinfo", "-h", "-o", "%P"], slurm_cluster.env).stdout.split() == [
        "cpu*", "gpu-a100", "gpu-v100", "gpu-h100"]


def test_session_site_keeps_test_state_out_of_the_readme_site(
        slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    """Test runs build envs and record jobs under their own temp dir, not under the cluster
    root's site/ that the README has users try tests/cluster/site.yaml against."""
    from hpcenv.site.config import load_site

    readme = load_site(CLUSTER_DIR / "site.yaml")
    private = load_site(slurm_cluster.site)
    assert private.partitions == readme.partitions and private.channels == readme.channels
    here = slurm_cluster.site.parent
    for path in (*private.envs_dirs, *private.pkgs_dirs, private.registry, private.state_dir):
        assert Path(path).is_relative_to(here), path
    assert not Path(readme.registry).is_relative_to(here)


def test_up_names_a_release_it_cannot_start(tmp_path: Path) -> None:
    env = {**os.environ, "HPCENV_SLURM_ROOT": str(tmp_path / "c"), "HPCENV_SLURM_PORT": "7917"}
    unknown = subprocess.run([str(CLUSTER_DIR / "up"), "--release", "24.11"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == "up: unknown release '24.11': use 22.05 (Debian's) or 25.11\n"
    # Without the 25.11 build script: exit 3 and one line, which the fixture's skip repeats.
    missing = subprocess.run([str(CLUSTER_DIR / "up"), "--release=25.11"], capture_output=True,
                             text=True, timeout=60,
                             env={**env, "HPCENV_SLURM_BUILD": str(tmp_path / "no-build")})
    assert (missing.returncode, missing.stdout) == (3, "")
    assert missing.stderr == (f"up: Slurm 25.11 unavailable: no build script at "
                              f"{tmp_path / 'no-build'} (set HPCENV_SLURM_BUILD)\n")
