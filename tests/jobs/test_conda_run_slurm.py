"""The conda-run launcher with a real conda on the real test Slurm cluster: the program runs
inside the env through ``conda run``, receives USR1 exactly once (``conda run`` itself forwards
no signal; the job script does) and its exit code is the job's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import COUNT_SIGNALS
from conftest_slurm import SlurmCluster

from hpcenv.build.builder import build_env
from hpcenv.demo.site import write_demo_site
from hpcenv.jobs.control import job_exit_code, wait_for
from hpcenv.jobs.submit import SubmitOptions, site_scheduler, submit
from hpcenv.site.config import SiteConfig, load_site
from hpcenv.spec.environment import parse_spec

pytestmark = pytest.mark.slurm

SPEC = """\
dependencies:
  - python=3.11
  - hpcdemo-kernels
variables:
  RUN_SETTING: "through conda run"
"""


@pytest.fixture(scope="module")
def conda_run_site(slurm_cluster: SlurmCluster, real_conda: Path, demo_channel,  # noqa: F811
                   tmp_path_factory: pytest.TempPathFactory) -> SiteConfig:
    root = tmp_path_factory.mktemp("conda-run-slurm")
    site = load_site(write_demo_site(root, demo_channel, scheduler="slurm",
                                     slurm="{time: '5'}", launcher="conda-run",
                                     conda_exe=str(real_conda),
                                     extra="partitions:\n  - {name: cpu}\n"))
    build_env(parse_spec(SPEC), site, name="viarun")
    return site


def test_program_runs_in_the_env_and_keeps_its_exit_code(conda_run_site: SiteConfig,
                                                         tmp_path: Path) -> None:
    script = tmp_path / "show.py"
    script.write_text("import json, os, sys\n"
                      "print(json.dumps([sys.prefix, os.environ.get('RUN_SETTING'), "
                      "os.environ.get('HPCDEMO_KERNELS_VARIANT'), os.environ.get('SLURMD_NODENAME')]))\n"
                      "sys.exit(3)\n")
    result = submit(script, env_name="viarun", site=conda_run_site,
                    options=SubmitOptions(workdir=tmp_path))
    assert f"{conda_run_site.conda_exe} run -p" in Path(result.script).read_text()
    info = wait_for(site_scheduler(conda_run_site), result.job_id or "", first=0.2, most=1.0)
    out = (tmp_path / f"slurm-{result.job_id}.out").read_text()
    assert (info.state, job_exit_code(info)) == ("FAILED", 3), out
    # conda run adds a line of its own on stderr when the program fails
    assert "`conda run " in out and "failed" in out
    prefix, setting, variant, node = json.loads(next(ln for ln in out.splitlines()
                                                     if ln.startswith("[")))
    assert prefix == result.prefix
    assert (setting, variant) == ("through conda run", "cpu")
    assert node and node.startswith("cpu")


def test_usr1_reaches_the_program_exactly_once(conda_run_site: SiteConfig,
                                               slurm_cluster: SlurmCluster,  # noqa: F811
                                               tmp_path: Path) -> None:
    script = tmp_path / "catch.py"
    script.write_text(COUNT_SIGNALS)
    result = submit(script, env_name="viarun", site=conda_run_site,
                    options=SubmitOptions(workdir=tmp_path))
    job_id = result.job_id or ""
    out = tmp_path / f"slurm-{job_id}.out"
    deadline = time.monotonic() + 90  # conda run takes a second or two to start the program
    while "ready" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, f"job {job_id} did not start"
        time.sleep(0.2)
    sent = subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(conda_run_site.source),
                           "cancel", job_id, "--signal", "USR1"], capture_output=True, text=True,
                          timeout=60, env=slurm_cluster.env)
    assert sent.returncode == 0, sent.stderr
    info = wait_for(site_scheduler(conda_run_site), job_id, first=0.2, most=1.0)
    lines = out.read_text().splitlines()
    assert [line for line in lines if line.startswith("got")] == ["got SIGUSR1"]
    assert (info.state, job_exit_code(info)) == ("FAILED", 41)
