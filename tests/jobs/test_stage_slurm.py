"""submit --stage on the real test Slurm cluster (tests/cluster/up): the job runs from the
node-local copy of a real pack, on one node and on two (staged by one srun task per node)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest_slurm import SlurmCluster

from hpcenv.demo.site import write_demo_site
from hpcenv.jobs.control import wait_for
from hpcenv.jobs.submit import SubmitOptions, site_scheduler, submit
from hpcenv.site.config import SiteConfig, load_site
from hpcenv.store import store_for
from hpcenv.store.pack import create_pack, find_pack

pytestmark = pytest.mark.slurm

ENV = "name: stagecpu\ndependencies:\n  - python=3.11\n  - hpcdemo-kernels\n  - hpcdemo-tools\n"

SHOW = """\
import json, os, sys
import hpcdemo_kernels
print(json.dumps({"prefix": sys.prefix, "conda_prefix": os.environ.get("CONDA_PREFIX"),
                  "kernels_home": os.environ.get("HPCDEMO_KERNELS_HOME"),
                  "nodes": os.environ.get("SLURM_JOB_NUM_NODES"),
                  "node": os.environ.get("SLURMD_NODENAME")}))
"""


@pytest.fixture(scope="module")
def stage_site(slurm_cluster: SlurmCluster, demo_channel,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[SiteConfig, Path, str]:
    from hpcenv.build.builder import build_env
    from hpcenv.spec.environment import parse_spec

    root = tmp_path_factory.mktemp("stage-slurm")
    node_dir = root / "node-local"
    # $SLURM_JOB_ID is expanded in the job: every job gets a fresh stage dir here.
    site = load_site(write_demo_site(
        root, demo_channel, scheduler="slurm", slurm="{time: '5'}",
        stage_dir=f'"{node_dir}/$SLURM_JOB_ID"', extra="partitions:\n  - {name: cpu}\n"))
    record = build_env(parse_spec(ENV), site).record
    create_pack(store_for(site), record)
    return site, node_dir, record.prefix


def run_staged(site: SiteConfig, workdir: Path,
               **opts: object) -> tuple[list[dict], list[str], str]:
    script = workdir / "show.py"
    script.write_text(SHOW)
    result = submit(script, env_name="stagecpu", site=site,
                    options=SubmitOptions(workdir=workdir, stage=True,
                                          error=str(workdir / "err-%j.txt"), **opts))  # type: ignore[arg-type]
    info = wait_for(site_scheduler(site), result.job_id or "", first=0.2, most=1.0)
    out = workdir / f"slurm-{result.job_id}.out"
    err = (workdir / f"err-{result.job_id}.txt").read_text().splitlines()
    assert info.state == "COMPLETED", (out.read_text() if out.exists() else info, err)
    # One line per task: a multi-node job runs the program once on every node (srun).
    return [json.loads(line) for line in out.read_text().splitlines()], err, result.job_id or ""


def test_staged_job_runs_from_the_node_local_copy(stage_site, tmp_path: Path) -> None:
    site, node_dir, shared = stage_site
    [seen], err, job_id = run_staged(site, tmp_path)
    copy = node_dir / job_id / f"hpcenv-{os.getuid()}" / Path(shared).name
    assert err == []
    assert seen["prefix"] == seen["conda_prefix"] == str(copy)
    assert seen["kernels_home"] == f"{copy}/share/hpcdemo-kernels"
    assert (copy / ".hpcenv-staged").is_file()


def test_two_node_job_stages_through_srun(stage_site, tmp_path: Path) -> None:
    site, node_dir, shared = stage_site
    seen, err, job_id = run_staged(site, tmp_path, nodes=2, partition="cpu")
    copy = node_dir / job_id / f"hpcenv-{os.getuid()}" / Path(shared).name
    # SLURM_JOB_NUM_NODES=2 took the srun branch (one staging task per node); a failed step
    # would have left a warning and the shared prefix.  The program runs once per node, each
    # from that node's copy.
    assert err == [] and sorted(line["node"] for line in seen) == ["cpu1", "cpu2"]
    assert all(line["nodes"] == "2" and line["prefix"] == str(copy) for line in seen)


def test_missing_pack_on_slurm_warns_and_runs_shared(stage_site, tmp_path: Path) -> None:
    site, _node_dir, shared = stage_site
    record = store_for(site).registry().resolve("stagecpu")
    pack = find_pack(store_for(site), record)
    assert pack is not None
    hidden = pack.with_name(pack.name + ".hidden")
    script = tmp_path / "show.py"
    script.write_text(SHOW)
    result = submit(script, env_name="stagecpu", site=site,
                    options=SubmitOptions(workdir=tmp_path, stage=True,
                                          error=str(tmp_path / "err-%j.txt"),
                                          extra_args=("--hold",)))
    # The pack goes away between submission and start: the job finds out on the node.
    pack.rename(hidden)
    try:
        subprocess.run(["scontrol", "release", result.job_id or ""], check=True)
        wait_for(site_scheduler(site), result.job_id or "", first=0.2, most=1.0)
    finally:
        hidden.rename(pack)
    seen = json.loads((tmp_path / f"slurm-{result.job_id}.out").read_text())
    err = (tmp_path / f"err-{result.job_id}.txt").read_text().splitlines()
    assert seen["prefix"] == shared
    assert len(err) == 1 and err[0].startswith("hpcenv: warning: not staged (no pack ")
