"""hpcenv submit on the real test Slurm clusters (tests/cluster/up): routing by CUDA, the env's
prefix inside the job, argument safety, signals under both launchers, multi-task jobs under srun,
requeued jobs' logs, arrays, dependencies and purged jobs.  Every test runs on each target of
``slurm_target``: Slurm 22.05 and 25.11 through the CLI backend, 25.11 through pyslurm.

conda-run uses a fake ``conda`` (the real one: tests/jobs/test_conda_run_slurm.py): it activates
and stays the program's parent without forwarding signals, as ``conda run`` does, so a signal
that reaches the program proves the job script's own forwarding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import COUNT_SIGNALS, write_fake_conda
from conftest_slurm import SlurmCluster

from hpcenv.demo.site import write_demo_site
from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.jobs.control import job_exit_code, list_submissions, load_submission, wait_for
from hpcenv.jobs.submit import SubmitOptions, site_scheduler, submit
from hpcenv.site.config import SiteConfig, load_site

pytestmark = pytest.mark.slurm

ENVS = {
    "cpu-env": "dependencies:\n  - python=3.11\n  - hpcdemo-tools\n",
    "cuda118-env": "dependencies:\n  - python=3.11\n  - cuda-version=11.8\n  - hpcdemo-kernels\n",
    "cuda124-env": "dependencies:\n  - python=3.11\n  - cuda-version=12.4\n  - hpcdemo-kernels\n",
    "cuda128-env": "dependencies:\n  - python=3.11\n  - cuda-version=12.8\n  - hpcdemo-kernels\n",
}

# The test cluster's partitions (tests/cluster/nodes.tsv), oldest GPUs first.
PARTITIONS = """\
partitions:
  - {name: cpu}
  - {name: gpu-v100, gpu_type: v100, gpus_per_node: 2, driver: "520.61.05"}
  - {name: gpu-a100, gpu_type: a100, gpus_per_node: 2, node_feature: "cuda{cuda}"}
  - {name: gpu-h100, gpu_type: h100, gpus_per_node: 4, max_cuda: "12.8"}
"""

SHOW = """\
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "prefix": sys.prefix,
                  "conda_prefix": os.environ.get("CONDA_PREFIX"),
                  "node": os.environ.get("SLURMD_NODENAME"),
                  "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}))
"""


def write_site(path: Path, root: Path, demo_channel, extra: str = "",
               partitions: str = PARTITIONS, *, cluster: SlurmCluster) -> SiteConfig:
    """The demo site on the test cluster: the target's backend and client tools, its
    partitions, strict CUDA.  Job state is per target (job ids of the two releases' clusters
    overlap); the envs are shared."""
    return load_site(write_demo_site(
        root, demo_channel, path=path, extra=partitions + extra, scheduler=cluster.scheduler,
        slurm=f"{{time: '5', bin_dir: {cluster.bin_dir}}}", cuda_compat="strict",
        state_dir=str(root / f"state-{cluster.release}-{cluster.scheduler}")))


@pytest.fixture(scope="session")
def envs_root(demo_channel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The envs every target's site uses, built once."""
    from hpcenv.build.builder import build_env
    from hpcenv.spec.environment import parse_spec

    root = tmp_path_factory.mktemp("slurm-site")
    site = load_site(write_demo_site(root, demo_channel, path=root / "build.yaml"))
    for name, text in ENVS.items():
        build_env(parse_spec(text), site, name=name)
    return root


@pytest.fixture(scope="module")
def slurm_cluster(slurm_target: SlurmCluster) -> SlurmCluster:
    """This module's cluster: the target's (shadows the session's 22.05 one)."""
    return slurm_target


@pytest.fixture(scope="module")
def site(slurm_cluster: SlurmCluster, demo_channel, envs_root: Path) -> SiteConfig:  # noqa: F811
    name = f"site-{slurm_cluster.release}-{slurm_cluster.scheduler}.yaml"
    return write_site(envs_root / name, envs_root, demo_channel, cluster=slurm_cluster)


@pytest.fixture(scope="module")
def conda_site(site: SiteConfig, slurm_cluster: SlurmCluster, demo_channel,
               tmp_path_factory: pytest.TempPathFactory) -> SiteConfig:
    """The same envs, launched through (fake) conda run."""
    root = Path(site.registry).parent
    fake = write_fake_conda(tmp_path_factory.mktemp("fakeconda"))
    return write_site(root / f"conda-{Path(str(site.source)).name}", root, demo_channel,
                      f"launcher: conda-run\nconda_exe: {fake}\n", cluster=slurm_cluster)


@pytest.fixture(scope="module")
def early_cli_job(site: SiteConfig, slurm_cluster: SlurmCluster,  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A job submitted through the CLI as the module starts, with separate stdout and stderr
    files, so that slurmctld has purged it by the time the module's last test looks at it."""
    workdir = tmp_path_factory.mktemp("early-cli")
    proc = subprocess.run(
        [sys.executable, "-m", "hpcenv", "--site", str(site.source), "--json", "submit", "--env",
         "cpu-env", "--job-name", "early", "-o", "out-%x-%j.txt", "-e", "err-%x-%j.txt", "--",
         "python", "-c", "import sys; print('to stdout'); print('to stderr', file=sys.stderr); "
         "sys.exit(6)"], cwd=workdir, capture_output=True, text=True, timeout=120,
        env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["job_id"], workdir


@pytest.fixture(scope="module")
def early_array_job(site: SiteConfig, slurm_cluster: SlurmCluster,  # noqa: F811
                    tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """An array submitted as the module starts (purged by its last test), its output in a
    directory that does not exist yet: sbatch would not create it, submit must."""
    workdir = tmp_path_factory.mktemp("early-array")
    proc = subprocess.run(
        [sys.executable, "-m", "hpcenv", "--site", str(site.source), "--json", "submit", "--env",
         "cpu-env", "--array", "0-2", "-o", "logs/new/%A_%a.txt", "--", "python", "-c",
         "import os, sys; t = os.environ['SLURM_ARRAY_TASK_ID']; print('task', t); "
         "sys.exit(3 if t == '1' else 0)"], cwd=workdir, capture_output=True, text=True,
        timeout=120, env=slurm_cluster.env)
    assert proc.returncode == 0, proc.stderr
    assert (workdir / "logs" / "new").is_dir()
    return json.loads(proc.stdout)["job_id"], workdir


def run_show(site: SiteConfig, env: str, workdir: Path, **opts: object) -> tuple[dict, object]:
    script = workdir / "show.py"
    script.write_text(SHOW)
    result = submit(script, ["$(touch pwned)", "a\nb"], env_name=env, site=site,
                    options=SubmitOptions(workdir=workdir, **opts))  # type: ignore[arg-type]
    info = wait_for(site_scheduler(site), result.job_id or "", first=0.2, most=1.0)
    out = workdir / f"slurm-{result.job_id}.out"
    assert info.state == "COMPLETED", out.read_text() if out.exists() else info
    data = json.loads(out.read_text())
    assert data["argv"] == ["$(touch pwned)", "a\nb"]
    assert data["prefix"] == data["conda_prefix"] == result.prefix
    assert not (workdir / "pwned").exists()
    return data, result


@pytest.mark.parametrize(("env", "partition", "nodes", "constraint"), [
    ("cpu-env", "cpu", {"cpu1", "cpu2"}, None),
    ("cuda118-env", "gpu-v100", {"v100n1"}, None),
    ("cuda124-env", "gpu-a100", {"a100n1"}, "cuda12.4"),
    ("cuda128-env", "gpu-h100", {"h100n1"}, None),
])
def test_env_lands_where_its_cuda_runs(site: SiteConfig, tmp_path: Path, env: str, partition: str,
                                       nodes: set[str], constraint: str | None,
                                       early_cli_job: tuple[str, Path]) -> None:
    data, result = run_show(site, env, tmp_path)
    assert (result.partition, result.constraint) == (partition, constraint)
    assert data["node"] in nodes
    assert (data["gpus"] is None) == (partition == "cpu")
    # The record holds what Slurm got, read back after the submit: partition, features, GPUs
    # (22.05 spells them gres:gpu:1, 25.11 gres/gpu:1) and the build in the comment.
    record = load_submission(site.state_dir, "slurm", result.job_id or "")
    assert record is not None and record.read_back
    assert (record.partition, record.constraint) == (partition, constraint)
    if partition == "cpu":
        assert record.gres is None
    else:
        assert record.gres in ("gres:gpu:1", "gres/gpu:1")
    assert record.comment == f"hpcenv-build={Path(result.prefix).resolve()}"


def test_cuda124_with_both_a100_gpus_busy_still_never_uses_a100n2(site: SiteConfig,
                                                                   tmp_path: Path) -> None:
    # Two jobs that each take every GPU of a node: the second must wait for a100n1 rather than
    # run on the idle a100n2, whose driver (CUDA 12.2) is too old.
    first = submit(["sleep", "2"], env_name="cuda124-env", site=site,
                   options=SubmitOptions(workdir=tmp_path, gpus=2, gpu_type="a100"))
    data, second = run_show(site, "cuda124-env", tmp_path, gpus=2, gpu_type="a100")
    assert data["node"] == "a100n1"
    assert wait_for(site_scheduler(site), first.job_id or "").node == "a100n1"


def test_the_record_says_where_slurm_put_the_job_not_where_hpcenv_meant_to(
        site: SiteConfig, slurm_cluster: SlurmCluster, demo_channel, tmp_path: Path) -> None:
    if slurm_cluster.scheduler == "pyslurm":
        pytest.skip("pyslurm submits hpcenv's options, not the script's #SBATCH header: a "
                    "site template's own lines never reach Slurm there")
    # A site template whose own #SBATCH lines come after hpcenv's: sbatch takes the last.
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "sbatch_header.sh.j2").write_text(
        "{% for line in sbatch %}#SBATCH {{ line }}\n{% endfor %}"
        "#SBATCH --partition=gpu-h100\n#SBATCH --comment=site\n")
    root = Path(site.registry).parent
    templated = write_site(tmp_path / "templated.yaml", root, demo_channel,
                           f"templates_dir: {templates}\n", cluster=slurm_cluster)
    result = submit(["true"], env_name="cpu-env", site=templated,
                    options=SubmitOptions(workdir=tmp_path))
    assert result.routing is not None and result.routing.partition == "cpu"  # hpcenv's choice
    record = load_submission(templated.state_dir, "slurm", result.job_id or "")
    assert record is not None and record.read_back
    assert (record.partition, record.comment, result.partition) == ("gpu-h100", "site", "gpu-h100")
    # The job's comment lost the build it runs in: submit says env rm/gc cannot see it.
    assert any("does not name the env build" in w and "env gc" in w for w in result.warnings)


def test_explicit_incompatible_partition_is_refused_before_slurm(site: SiteConfig, tmp_path: Path) -> None:
    before = len(list_submissions(site.state_dir, "slurm"))
    with pytest.raises(InvalidInput, match="gpu-v100 cannot run this job"):
        submit(["true"], env_name="cuda124-env", site=site,
               options=SubmitOptions(workdir=tmp_path, partition="gpu-v100"))
    with pytest.raises(InvalidInput) as err:
        submit(["true"], env_name="cuda128-env", site=site,
               options=SubmitOptions(workdir=tmp_path, gpu_type="a100"))
    assert "needs CUDA 12.8; best available is 12.4 on gpu-a100" in str(err.value)
    assert "a100n2 CUDA 12.2" in err.value.table  # type: ignore[attr-defined]  # live node state
    assert len(list_submissions(site.state_dir, "slurm")) == before


def test_slurm_rejection_is_one_line_and_not_recorded(site: SiteConfig, tmp_path: Path) -> None:
    before = len(list_submissions(site.state_dir, "slurm"))
    with pytest.raises(HpcenvError) as err:
        submit(["true"], env_name="cpu-env", site=site,
               options=SubmitOptions(workdir=tmp_path, constraint="nosuchfeature",
                                     output="made/for/it/%j.out"))
    assert "\n" not in str(err.value)
    assert len(list_submissions(site.state_dir, "slurm")) == before
    assert not (tmp_path / "made").exists()  # the log dir made for the refused job went too
    submit(["true"], env_name="cpu-env", site=site, options=SubmitOptions(workdir=tmp_path))
    assert len(list_submissions(site.state_dir, "slurm")) == before + 1  # records do get written


def test_cli_slurm_errors_are_one_line_and_nothing_is_recorded(
        site: SiteConfig, demo_channel, slurm_cluster: SlurmCluster,  # noqa: F811
        tmp_path: Path) -> None:
    # A site that lists no partitions hands --partition and --gpu-type to Slurm unchecked, so
    # Slurm itself refuses them.
    root = Path(site.registry).parent
    bare = write_site(tmp_path / "bare.yaml", root, demo_channel, partitions="",
                      cluster=slurm_cluster)
    down_conf = tmp_path / "down.conf"
    down_conf.write_text("\n".join("SlurmctldPort=1" if ln.startswith("SlurmctldPort=") else ln
                                   for ln in slurm_cluster.conf.read_text().splitlines()))
    jobs_dir = Path(site.state_dir, "jobs")
    jobs_dir.mkdir(parents=True, exist_ok=True)  # (when this test runs alone)
    before = (len(list_submissions(site.state_dir, "slurm")), set(jobs_dir.iterdir()))

    def cli(site_file: Path, *argv: str, conf: Path = slurm_cluster.conf) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site_file), "submit",
                               "--env", "cpu-env", *argv, "--", "true"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120,
                              env={**slurm_cluster.env, "SLURM_CONF": str(conf)})

    cases = [
        (cli(bare.source, "--partition", "nosuch"), 2,
         "hpcenv: error: Slurm rejected the job: Invalid partition name specified; check --partition"),
        (cli(bare.source, "--gpus", "1", "--gpu-type", "k80"), 2,
         "hpcenv: error: Slurm rejected the job: Requested node configuration is not available; "),
        (cli(site.source, conf=down_conf), 1, "hpcenv: error: cannot reach the Slurm controller"),
    ]
    for proc, code, start in cases:
        assert (proc.returncode, proc.stdout) == (code, ""), proc.stderr
        assert proc.stderr.startswith(start) and proc.stderr.count("\n") == 1, proc.stderr
    assert (len(list_submissions(site.state_dir, "slurm")), set(jobs_dir.iterdir())) == before


def test_cli_routing_errors_show_what_would_work(site: SiteConfig,
                                                 slurm_cluster: SlurmCluster,  # noqa: F811
                                                 tmp_path: Path) -> None:
    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site.source), "submit",
                               *argv, "--", "true"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env=slurm_cluster.env)

    a100 = cli("--env", "cuda128-env", "--gpu-type", "a100")
    assert (a100.returncode, a100.stdout) == (2, "")
    first, *table = a100.stderr.splitlines()
    assert first == ("hpcenv: error: no partition can run this job (env needs CUDA 12.8, 1 GPU of "
                     "type a100 per node); needs CUDA 12.8; best available is 12.4 on gpu-a100 (an "
                     "env built for CUDA 12.4 or older would run there); without --gpu-type a100 "
                     "it would run on gpu-h100 (h100)")
    assert table[0].split() == ["partition", "gpu", "cuda", "support", "free", "verdict"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert "nodes: a100n1 CUDA 12.4, a100n2 CUDA 12.2" in rows["gpu-a100"]  # read from sinfo
    assert "refused: GPU type h100, not a100" in rows["gpu-h100"]

    unknown = cli("--env", "cuda128-env", "--partition", "gpu-b200")
    assert (unknown.returncode, unknown.stdout) == (2, "")
    assert unknown.stderr == ("hpcenv: error: --partition gpu-b200: not in the site config (known: "
                              "cpu, gpu-v100, gpu-a100, gpu-h100); pick one of those or "
                              "--partition auto\n")


def _start_catch(site: SiteConfig, env: str, workdir: Path) -> str:
    script = workdir / "catch.py"
    script.write_text(COUNT_SIGNALS)
    result = submit(script, env_name=env, site=site, options=SubmitOptions(workdir=workdir))
    out = workdir / f"slurm-{result.job_id}.out"
    deadline = time.monotonic() + 60
    while "ready" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, f"job {result.job_id} did not start"
        time.sleep(0.2)
    return result.job_id or ""


@pytest.mark.parametrize("launcher", ["activate", "conda-run"])
def test_cancel_signal_reaches_the_program_exactly_once(site: SiteConfig, conda_site: SiteConfig,
                                                       slurm_cluster: SlurmCluster,  # noqa: F811
                                                       tmp_path: Path, launcher: str) -> None:
    chosen = conda_site if launcher == "conda-run" else site
    job_id = _start_catch(chosen, "cuda118-env", tmp_path)
    script = Path(json.loads(Path(chosen.state_dir, "submissions", f"slurm-{job_id}.json")
                             .read_text())["script"]).read_text()
    assert ("conda run -p" in script) == (launcher == "conda-run")
    sent = subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(chosen.source), "cancel",
                           job_id, "--signal", "USR1"], capture_output=True, text=True,
                          timeout=60, env=slurm_cluster.env)
    assert (sent.returncode, sent.stdout) == (0, f"sent USR1 to job {job_id}\n"), sent.stderr
    info = wait_for(site_scheduler(chosen), job_id, first=0.2, most=1.0)
    out = (tmp_path / f"slurm-{job_id}.out").read_text().splitlines()
    assert [line for line in out if line.startswith("got")] == ["got SIGUSR1"]
    assert (info.state, job_exit_code(info)) == ("FAILED", 41)


def test_cli_submit_wait_status_logs(site: SiteConfig, slurm_cluster: SlurmCluster,  # noqa: F811
                                     tmp_path: Path) -> None:
    script = tmp_path / "show.py"
    script.write_text(SHOW + "sys.exit(3)\n")

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site.source), *argv],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=slurm_cluster.env)

    dry = cli("submit", str(script), "--env", "cuda124-env", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "#SBATCH --constraint=cuda12.4" in dry.stdout and "# partition: gpu-a100" in dry.stdout

    waited = cli("submit", str(script), "--env", "cuda124-env", "--wait", "--", "--x", "$(id)")
    assert waited.returncode == 3, waited.stderr
    job_id = waited.stderr.split("submitted job ", 1)[1].split()[0]
    status = json.loads(cli("--json", "status", job_id).stdout)
    assert status["state"] == "FAILED" and status["exit_code"] == 3
    assert status["partition"] == "gpu-a100" and status["env"] == "cuda124-env"
    logs = cli("logs", job_id)
    assert json.loads(logs.stdout)["argv"] == ["--x", "$(id)"]


def test_array_tasks_run_in_the_env_with_their_own_output(site: SiteConfig,
                                                           slurm_cluster: SlurmCluster,  # noqa: F811
                                                           tmp_path: Path) -> None:
    script = tmp_path / "task.py"
    script.write_text("import os, sys\n"
                      "print(os.environ['SLURM_ARRAY_TASK_ID'], sys.prefix == os.environ['CONDA_PREFIX'])\n"
                      "sys.exit(int(os.environ['SLURM_ARRAY_TASK_ID']) == 2 and 5)\n")

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site.source), *argv],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=slurm_cluster.env)

    waited = cli("--json", "submit", str(script), "--env", "cpu-env", "--array", "0-2", "--wait")
    data = json.loads(waited.stdout)
    job_id = data["job_id"]
    # The array ends when its last task does, with the worst task's exit code.
    assert (waited.returncode, data["state"], data["exit_code"]) == (5, "FAILED", 5), waited.stderr
    for task in range(3):
        assert (tmp_path / f"slurm-{job_id}_{task}.out").read_text() == f"{task} True\n"
    status = json.loads(cli("--json", "status", job_id).stdout)
    assert status["tasks"] == [f"{job_id}_{t}" for t in range(3)]
    assert status["reason"] == "job array: 2 COMPLETED, 1 FAILED"
    whole = cli("logs", job_id)
    assert whole.returncode == 2 and f"give one, e.g. hpcenv logs {job_id}_2" in whole.stderr
    assert cli("logs", f"{job_id}_1").stdout == "1 True\n"


def test_dependency_afterok(site: SiteConfig, tmp_path: Path) -> None:
    first = submit(["sleep", "2"], env_name="cpu-env", site=site,
                   options=SubmitOptions(workdir=tmp_path))
    second = submit(["true"], env_name="cpu-env", site=site,
                    options=SubmitOptions(workdir=tmp_path, dependency=f"afterok:{first.job_id}"))
    scheduler = site_scheduler(site)
    done = wait_for(scheduler, second.job_id or "", first=0.2, most=1.0)
    assert done.state == "COMPLETED"
    assert (done.start_time or 0) >= (scheduler.status(first.job_id or "").end_time or 0)

    failed = submit(["false"], env_name="cpu-env", site=site, options=SubmitOptions(workdir=tmp_path))
    never = submit(["true"], env_name="cpu-env", site=site,
                   options=SubmitOptions(workdir=tmp_path, dependency=f"afterok:{failed.job_id}"))
    try:
        with pytest.raises(HpcenvError, match="can never start.*DependencyNeverSatisfied"):
            wait_for(scheduler, never.job_id or "", first=0.2, most=1.0)
    finally:
        scheduler.cancel(never.job_id or "")


def test_status_and_logs_after_the_job_was_purged(site: SiteConfig,
                                                   slurm_cluster: SlurmCluster,  # noqa: F811
                                                   early_cli_job: tuple[str, Path],
                                                   early_array_job: tuple[str, Path]) -> None:
    # Runs last in the module: the early job has left slurmctld (MinJobAge 30 s plus its purge
    # cycle, 45-60 s here); the bound below is generous for a loaded machine.
    job_id, workdir = early_cli_job
    deadline = time.monotonic() + 150
    while subprocess.run(["scontrol", "show", "job", job_id], capture_output=True,
                         timeout=60, env=slurm_cluster.env).returncode == 0:
        assert time.monotonic() < deadline, f"slurmctld kept job {job_id} for over 150 s"
        time.sleep(2)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site.source), *argv],
                              cwd=workdir, capture_output=True, text=True, timeout=120,
                              env=slurm_cluster.env)

    def status_json(job: str) -> dict[str, Any]:
        proc = cli("--json", "status", job)
        assert proc.returncode == 0, f"hpcenv status {job}: exit {proc.returncode}: {proc.stderr}"
        return json.loads(proc.stdout)

    status = status_json(job_id)
    assert (status["source"], status["state"], status["exit_code"]) == ("jobcomp", "FAILED", 6)
    assert (status["name"], status["env"], status["partition"]) == ("early", "cpu-env", "cpu")
    assert status["stdout"] == str(workdir / f"out-early-{job_id}.txt")  # from hpcenv's record
    assert status["stderr"] == str(workdir / f"err-early-{job_id}.txt")
    logs = cli("logs", job_id)
    assert (logs.returncode, logs.stdout, logs.stderr) == (0, "to stdout\n", "to stderr\n")

    # The array too, although sacct -c knows nothing of arrays: the completion file does.
    array_id, array_dir = early_array_job
    while subprocess.run(["scontrol", "show", "job", array_id], capture_output=True,
                         timeout=60, env=slurm_cluster.env).returncode == 0:
        assert time.monotonic() < deadline, f"slurmctld kept job {array_id} for over 150 s"
        time.sleep(2)
    whole = status_json(array_id)
    assert (whole["source"], whole["state"], whole["exit_code"]) == ("jobcomp", "FAILED", 3)
    assert whole["tasks"] == [f"{array_id}_{t}" for t in range(3)]
    assert whole["reason"] == "job array: 2 COMPLETED, 1 FAILED"
    task = status_json(f"{array_id}_1")
    assert (task["state"], task["exit_code"], task["env"]) == ("FAILED", 3, "cpu-env")
    assert task["stdout"] == str(array_dir / "logs" / "new" / f"{array_id}_1.txt")
    assert cli("logs", f"{array_id}_2").stdout == "task 2\n"


def test_a_submit_dir_with_spaces_and_quotes_needs_no_output_option(
        site: SiteConfig, slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    workdir = tmp_path / "my runs" / "it's \"q\""
    workdir.mkdir(parents=True)
    (workdir / "show.py").write_text(SHOW)
    proc = _cli(site, slurm_cluster, workdir, "--json", "submit", "show.py", "a b", "--env",
                "cpu-env", "--wait")
    assert proc.returncode == 0, proc.stderr
    job_id = json.loads(proc.stdout)["job_id"]
    assert json.loads((workdir / f"slurm-{job_id}.out").read_text())["argv"] == ["a b"]
    logs = _cli(site, slurm_cluster, tmp_path, "logs", job_id)
    assert json.loads(logs.stdout)["argv"] == ["a b"], logs.stderr


def _cli(site: SiteConfig, cluster: SlurmCluster, cwd: Path, *argv: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site.source), *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=180,
                          env=env or cluster.env)


def test_probe_lands_by_feature_reports_its_backend_and_gets_its_argument(
        site: SiteConfig, slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    probe = tmp_path / "probe.py"
    probe.write_text(SHOW)
    hostile = "a b $(echo pwned)"
    proc = _cli(site, slurm_cluster, tmp_path, "-v", "submit", str(probe), hostile, "--env",
                "cuda124-env", "--gpus", "1", "--wait", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    # -v says which backend the site's scheduler setting picked, --json names it.
    assert data["scheduler"] == slurm_cluster.scheduler
    assert f"hpcenv: scheduler backend {slurm_cluster.scheduler} (scheduler: " in proc.stderr
    assert (data["state"], data["node"], data["partition"]) == ("COMPLETED", "a100n1", "gpu-a100")
    assert data["constraint"] == "cuda12.4" and data["options"]["gpus"] == 1
    assert "#SBATCH --gpus=1\n" in Path(data["script"]).read_text()  # the whole job's
    shown = json.loads((tmp_path / f"slurm-{data['job_id']}.out").read_text())
    assert shown["argv"] == [hostile] and shown["gpus"] == "0"
    status = json.loads(_cli(site, slurm_cluster, tmp_path, "--json", "status", data["job_id"]).stdout)
    assert (status["state"], status["exit_code"]) == ("COMPLETED", 0)
    check = _cli(site, slurm_cluster, tmp_path, "site", "check").stdout
    assert f"backend {slurm_cluster.scheduler} (scheduler: {slurm_cluster.scheduler}); " \
           f"sbatch at {slurm_cluster.bin_dir}/sbatch" in check

    running = json.loads(_cli(site, slurm_cluster, tmp_path, "--json", "submit", "--env", "cpu-env",
                              "--", "sleep", "120").stdout)["job_id"]
    scheduler = site_scheduler(site)
    deadline = time.monotonic() + 60
    while scheduler.status(running).state != "RUNNING":
        assert time.monotonic() < deadline, f"job {running} did not start"
        time.sleep(0.3)
    cancelled = _cli(site, slurm_cluster, tmp_path, "cancel", running)
    assert (cancelled.returncode, cancelled.stdout) == (0, f"cancelled job {running}\n")
    assert wait_for(scheduler, running, first=0.2, most=1.0).state == "CANCELLED"


RANKS = ("import os, sys; print(os.environ['SLURM_PROCID'], os.environ['SLURMD_NODENAME'], "
         "sys.prefix == os.environ['CONDA_PREFIX'], *sys.argv[1:])")


@pytest.mark.parametrize("launcher", ["activate", "conda-run"])
def test_two_nodes_with_two_tasks_each_run_four_ranks(site: SiteConfig, conda_site: SiteConfig,
                                                      tmp_path: Path, launcher: str) -> None:
    chosen = conda_site if launcher == "conda-run" else site
    result = submit(["python", "-c", RANKS, "x y"], env_name="cpu-env", site=chosen,
                    options=SubmitOptions(workdir=tmp_path, nodes=2, ntasks_per_node=2))
    assert 'hpcenv_cmd=(srun ' in result.script_text and result.launcher == launcher
    info = wait_for(site_scheduler(chosen), result.job_id or "", first=0.2, most=1.0)
    out = (tmp_path / f"slurm-{result.job_id}.out").read_text()
    assert info.state == "COMPLETED", out
    rows = sorted(line.split(" ", 3) for line in out.splitlines())
    assert [r[0] for r in rows] == ["0", "1", "2", "3"], out
    assert sorted(r[1] for r in rows) == ["cpu1", "cpu1", "cpu2", "cpu2"]
    assert {(r[2], r[3]) for r in rows} == {("True", "x y")}  # the env, the argument intact


def test_a_requeued_jobs_log_holds_both_runs(site: SiteConfig, slurm_cluster: SlurmCluster,  # noqa: F811
                                             tmp_path: Path) -> None:
    body = 'echo "run ${SLURM_RESTART_COUNT:-0}"; [ "${SLURM_RESTART_COUNT:-0}" -ge 1 ] || sleep 300'
    result = submit(["bash", "-c", body], env_name="cpu-env", site=site,
                    options=SubmitOptions(workdir=tmp_path, requeue=True))
    assert "#SBATCH --requeue\n" in result.script_text
    assert "#SBATCH --open-mode=append\n" in result.script_text
    log = tmp_path / f"slurm-{result.job_id}.out"
    deadline = time.monotonic() + 60
    while "run 0" not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline, f"job {result.job_id} did not start"
        time.sleep(0.3)
    # What a node failure or preemption does: the job goes back to the queue.  Slurm holds a
    # requeued job back for a while (BeginTime); releasing it now keeps the test short.
    subprocess.run(["scontrol", "requeue", result.job_id or ""], check=True, timeout=60,
                   env=slurm_cluster.env)
    while subprocess.run(["scontrol", "update", f"JobId={result.job_id}", "StartTime=now"],
                         capture_output=True, timeout=60, env=slurm_cluster.env).returncode:
        assert time.monotonic() < deadline + 60, "the requeued job could not be released"
        time.sleep(0.5)
    info = wait_for(site_scheduler(site), result.job_id or "", first=0.2, most=1.0)
    runs = [line for line in log.read_text().splitlines() if line.startswith("run ")]
    assert (info.state, runs) == ("COMPLETED", ["run 0", "run 1"])


def test_dry_run_needs_no_controller(site: SiteConfig, slurm_cluster: SlurmCluster,  # noqa: F811
                                     tmp_path: Path) -> None:
    dead = tmp_path / "dead.conf"
    dead.write_text("\n".join("SlurmctldPort=1" if ln.startswith("SlurmctldPort=") else ln
                              for ln in slurm_cluster.conf.read_text().splitlines()))
    started = time.monotonic()
    proc = _cli(site, slurm_cluster, tmp_path, "submit", "--env", "cuda124-env", "--dry-run",
                "--", "true", env={**slurm_cluster.env, "SLURM_CONF": str(dead)})
    # A Slurm client waits 9-18 s for a controller that does not answer; a dry run gives up
    # after DRY_RUN_QUERY_TIMEOUT and routes on the site config alone.
    assert proc.returncode == 0 and time.monotonic() - started < 12, proc.stderr
    # Without the nodes' features gpu-a100 cannot be judged: gpu-h100 (max CUDA 12.8) it is.
    assert "# partition: gpu-h100\n" in proc.stdout
    assert f"# scheduler: {slurm_cluster.scheduler}\n" in proc.stdout
    assert "# live:      not consulted (dry run, no answer from Slurm: " in proc.stdout
    live = _cli(site, slurm_cluster, tmp_path, "submit", "--env", "cuda124-env", "--dry-run",
                "--", "true")
    assert "#SBATCH --constraint=cuda12.4\n" in live.stdout and "# live:" not in live.stdout
