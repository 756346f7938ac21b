"""The Slurm backends against the real test clusters (tests/cluster/up): every test runs on each
target of ``slurm_target`` (22.05 and 25.11 through the CLI, 25.11 through pyslurm) with scripts
hpcenv did not render (their ``#SBATCH`` header is all there is); a few are about the CLI
backend itself and run on both releases through it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SIGNAL_CHILD, wait_for_file
from conftest_slurm import CLI_TARGETS, SlurmCluster

from hpcenv.errors import InvalidInput, NotFound
from hpcenv.scheduler import select_scheduler
from hpcenv.scheduler.base import Scheduler, SchedulerUnreachable
from hpcenv.scheduler.pyslurm_backend import PyslurmScheduler, pyslurm_version
from hpcenv.scheduler.slurm_cli import SlurmCLI

pytestmark = pytest.mark.slurm


def write_job(directory: Path, name: str, sbatch: list[str], body: str) -> Path:
    lines = ["#!/bin/bash", *(f"#SBATCH {opt}" for opt in sbatch), body]
    path = directory / f"{name}.sh"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def slurm_cluster(slurm_target: SlurmCluster) -> SlurmCluster:
    """This module's cluster: the target's (shadows the session's 22.05 one)."""
    return slurm_target


@pytest.fixture(scope="module")
def slurm(slurm_cluster: SlurmCluster) -> Scheduler:
    # The release's own client tools by bin_dir, not by PATH (as slurm.bin_dir in a site).
    return slurm_cluster.backend()


@pytest.fixture(scope="module")
def early_job(slurm: Scheduler, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job submitted as the module starts, so it has left slurmctld's memory (MinJobAge plus
    the controller's 60 s purge cycle) by the time the last test looks for it in sacct -c."""
    d = tmp_path_factory.mktemp("early")
    return slurm.submit(write_job(d, "early", ["-p cpu", "-J early", "-o early-%j.out"],
                                  "exit 4"), workdir=d)


def test_trivial_job_completes_with_output(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                                           tmp_path: Path, early_job: str) -> None:
    script = write_job(tmp_path, "hello", ["-p cpu", "-J hello", "-o %x-%j.out"],
                       'echo "node=$SLURMD_NODENAME id=$SLURM_JOB_ID dir=$PWD"')
    job_id = slurm.submit(script, workdir=tmp_path)
    assert job_id.isdigit() and int(job_id) > int(early_job)
    info = slurm_cluster.wait(slurm, job_id)
    assert (info.state, info.exit_code, info.partition, info.name) == ("COMPLETED", 0, "cpu", "hello")
    assert info.node in {"cpu1", "cpu2"}
    assert info.stdout == tmp_path / f"hello-{job_id}.out"
    assert info.stdout.read_text().split() == [f"node={info.node}", f"id={job_id}", f"dir={tmp_path}"]
    assert info.user == slurm_cli_user()


def slurm_cli_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def test_script_chdir_is_relative_to_the_submit_dir(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                                                    tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    script = write_job(tmp_path, "cd", ["-p cpu", "--chdir=sub", "-o out-%j"],
                       'echo "$PWD $SLURM_SUBMIT_DIR"')
    info = slurm_cluster.wait(slurm, slurm.submit(script, workdir=tmp_path))
    assert info.stdout == tmp_path / "sub" / f"out-{info.job_id}"
    assert info.stdout.read_text().split() == [str(tmp_path / "sub"), str(tmp_path)]


def test_failing_job_reports_its_exit_code(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                                           tmp_path: Path) -> None:
    job_id = slurm.submit(write_job(tmp_path, "fail", ["-p cpu"], "exit 3"), workdir=tmp_path)
    info = slurm_cluster.wait(slurm, job_id)
    assert (info.state, info.exit_code, info.reason) == ("FAILED", 3, "NonZeroExitCode")


def test_constraint_picks_the_node_with_that_feature(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                                                     tmp_path: Path) -> None:
    script = write_job(tmp_path, "a100", ["-p gpu-a100", "--gpus=1", "-C cuda12.4", "-o out-%j"],
                       "echo $SLURMD_NODENAME")
    info = slurm_cluster.wait(slurm, slurm.submit(script, workdir=tmp_path))
    assert info.state == "COMPLETED"
    assert info.node == "a100n1"
    assert info.constraint == "cuda12.4"
    assert info.stdout.read_text().strip() == "a100n1"


def test_gpu_job_sees_its_gpus(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                               tmp_path: Path) -> None:
    script = write_job(tmp_path, "h100", ["-p gpu-h100", "--gpus-per-node=h100:2", "-o out-%j"],
                       'echo "cvd=$CUDA_VISIBLE_DEVICES n=$SLURM_GPUS_ON_NODE"')
    info = slurm_cluster.wait(slurm, slurm.submit(script, workdir=tmp_path))
    assert info.node == "h100n1"
    assert info.stdout.read_text().strip() == "cvd=0,1 n=2"


def test_cpu_job_sees_no_gpus(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                              tmp_path: Path) -> None:
    script = write_job(tmp_path, "cpu", ["-p cpu", "-o out-%j"],
                       'echo "cvd=${CUDA_VISIBLE_DEVICES-unset}"')
    info = slurm_cluster.wait(slurm, slurm.submit(script, workdir=tmp_path))
    assert info.stdout.read_text().strip() == "cvd=unset"


def test_cancel_with_signal_reaches_only_the_batch_shell(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                                                         tmp_path: Path) -> None:
    # cancel(signal=) is scancel --batch: the batch shell gets the signal, its children do not
    # (hpcenv's job scripts exec the program or forward to it, so it arrives exactly once).
    # Here the shell's trap forwards TERM: the child must see TERM only, never USR1.
    body = ("trap 'echo shell-got-usr1; kill -TERM $child' USR1\n"
            + SIGNAL_CHILD.replace("python3 - <<'EOF'", "python3 - <<'EOF' &", 1)
            + "child=$!\nwait $child\nwait $child\n")
    job_id = slurm.submit(write_job(tmp_path, "sig", ["-p cpu", "-o out-%j"], body),
                          workdir=tmp_path)
    wait_for_file(tmp_path / "ready")
    slurm.cancel(job_id, signal="USR1")
    info = slurm_cluster.wait(slurm, job_id)
    assert (tmp_path / "got-signal").read_text() == "SIGTERM"
    assert (info.state, info.exit_code) == ("COMPLETED", 0)
    assert "shell-got-usr1" in info.stdout.read_text()


@pytest.mark.parametrize("slurm_target", CLI_TARGETS, indirect=True)
def test_plain_scancel_signal_misses_a_batch_script(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                                                    tmp_path: Path) -> None:
    # Why cancel() passes --batch: on 22.05 `scancel --signal=TERM` without --full/--batch signals
    # job steps only, and a batch script run without srun has none, so nothing arrives.
    job_id = slurm.submit(write_job(tmp_path, "sig", ["-p cpu", "-o out-%j"], SIGNAL_CHILD),
                          workdir=tmp_path)
    wait_for_file(tmp_path / "ready")
    subprocess.run(["scancel", "--signal=TERM", job_id], check=True, timeout=30)
    time.sleep(2)
    assert not (tmp_path / "got-signal").exists()
    assert slurm.status(job_id).state == "RUNNING"
    slurm.cancel(job_id)
    info = slurm_cluster.wait(slurm, job_id)
    assert info.state == "CANCELLED"
    assert (tmp_path / "got-signal").read_text() == "SIGTERM"  # plain cancel: TERM to all


def test_cancel_of_a_pending_job(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                                 tmp_path: Path) -> None:
    first = slurm.submit(write_job(tmp_path, "first", ["-p cpu"], "sleep 60"), workdir=tmp_path)
    waiting = write_job(tmp_path, "waits", ["-p cpu", f"--dependency=afterok:{first}"], "exit 0")
    job_id = slurm.submit(waiting, workdir=tmp_path)
    try:
        assert slurm.status(job_id).state == "PENDING"
        slurm.cancel(job_id)
        info = slurm.status(job_id)
        assert info.state == "CANCELLED"
        slurm.cancel(job_id)  # a finished job: nothing to do, no error
    finally:
        slurm.cancel(first)


def test_bad_partition_is_one_line_error_and_no_job(slurm: Scheduler, tmp_path: Path) -> None:
    before = {j.job_id for j in slurm.jobs()}
    script = write_job(tmp_path, "bad", ["-p nosuchpart"], "true")
    with pytest.raises(InvalidInput) as exc:
        slurm.submit(script, workdir=tmp_path)
    assert str(exc.value).startswith("Slurm rejected the job: Invalid partition name specified; "
                                     "check --partition")
    assert {j.job_id for j in slurm.jobs()} == before


def test_unavailable_node_configuration_is_rejected(slurm: Scheduler, tmp_path: Path) -> None:
    script = write_job(tmp_path, "bad", ["-p gpu-v100", "--gpus-per-node=a100:1"], "true")
    with pytest.raises(InvalidInput, match="Requested node configuration is not available; no "
                       "node offers what the job asks for"):
        slurm.submit(script, workdir=tmp_path)


@pytest.mark.parametrize("slurm_target", CLI_TARGETS, indirect=True)
def test_unreachable_controller(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    conf = tmp_path / "slurm.conf"
    text = slurm_cluster.conf.read_text()
    conf.write_text("\n".join("SlurmctldPort=1" if ln.startswith("SlurmctldPort=") else ln
                              for ln in text.splitlines()))
    down = SlurmCLI(env={"SLURM_CONF": str(conf)}, bin_dir=slurm_cluster.bin_dir)
    with pytest.raises(SchedulerUnreachable, match="cannot reach the Slurm controller to submit") as exc:
        down.submit(write_job(tmp_path, "x", ["-p cpu"], "true"), workdir=tmp_path)
    assert "\n" not in str(exc.value)
    with pytest.raises(SchedulerUnreachable, match=r"cannot reach the Slurm controller \(scontrol"):
        down.jobs()  # never "no jobs"


def test_unknown_and_invalid_job_ids(slurm: Scheduler) -> None:
    with pytest.raises(NotFound, match="Slurm job 987654 is unknown"):
        slurm.status("987654")
    with pytest.raises(NotFound):
        slurm.cancel("987654")  # scancel itself would exit 0
    with pytest.raises(InvalidInput):
        slurm.status("12; rm -rf /")


def test_jobs_lists_mine_with_paths_expanded(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                                             tmp_path: Path) -> None:
    script = write_job(tmp_path, "long", ["-p cpu", "-J listed", "-o log-%x-%j.txt"], "sleep 60")
    job_id = slurm.submit(script, workdir=tmp_path)
    try:
        mine = {j.job_id: j for j in slurm.jobs()}
        assert job_id in mine
        assert mine[job_id].name == "listed"
        assert mine[job_id].partition == "cpu"
        assert mine[job_id].stdout == tmp_path / f"log-listed-{job_id}.txt"
        assert mine[job_id].state in {"PENDING", "RUNNING"}
        assert job_id not in {j.job_id for j in slurm.jobs(user="nobody")}
    finally:
        slurm.cancel(job_id)


def test_nodes_and_partitions_report_features_and_gpus(slurm: Scheduler, slurm_cluster: SlurmCluster,  # noqa: F811
                                                       tmp_path: Path) -> None:
    nodes = {n.name: n for n in slurm.nodes()}
    assert set(nodes) == {"cpu1", "cpu2", "a100n1", "a100n2", "v100n1", "h100n1"}
    assert nodes["a100n1"].features == ("cuda12.4",)
    assert nodes["a100n2"].features == ("cuda12.2",)
    assert (nodes["h100n1"].gpu_type, nodes["h100n1"].gpus) == ("h100", 4)
    assert (nodes["cpu1"].gpu_type, nodes["cpu1"].gpus) == (None, 0)

    parts = {p.name: p for p in slurm.partitions()}
    assert list(parts) == ["cpu", "gpu-a100", "gpu-v100", "gpu-h100"]
    assert parts["cpu"].default and not parts["gpu-a100"].default
    assert parts["gpu-a100"].features == ("cuda12.2", "cuda12.4")
    assert (parts["gpu-v100"].gpu_types, parts["gpu-v100"].gpus_total) == (("v100",), 2)
    assert 0 <= parts["gpu-h100"].gpus_free <= parts["gpu-h100"].gpus_total == 4

    # Free GPUs come from the nodes' allocated GRES while a job holds some.  The cluster is
    # shared with other tests: while ours holds 3 of the 4, at most 1 can be free.
    job_id = slurm.submit(write_job(tmp_path, "hold", ["-p gpu-h100", "--gpus=3"], "sleep 60"),
                          workdir=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while slurm.status(job_id).state != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        h100 = {p.name: p for p in slurm.partitions()}["gpu-h100"]
        assert h100.gpus_total == 4 and h100.gpus_free <= 1
    finally:
        slurm.cancel(job_id)


@pytest.mark.parametrize("slurm_target", CLI_TARGETS, indirect=True)
def test_slurm_picks_pyslurm_only_for_its_release(slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    cli = SlurmCLI(bin_dir=slurm_cluster.bin_dir)
    assert cli.version().startswith(slurm_cluster.release + ".")
    chosen = select_scheduler("slurm", bin_dir=slurm_cluster.bin_dir)
    built_for = pyslurm_version()
    if built_for is not None and built_for.startswith(slurm_cluster.release + "."):
        assert isinstance(chosen.scheduler, PyslurmScheduler)
        assert chosen.why == f"scheduler: slurm; pyslurm {built_for} matches Slurm {cli.version()}"
    else:
        assert isinstance(chosen.scheduler, SlurmCLI)
        assert chosen.why.endswith("so the Slurm CLI") and "pyslurm" in chosen.why


def test_status_after_the_job_left_the_queue(slurm: Scheduler, early_job: str) -> None:
    # Runs last: the early job has been purged from slurmctld (MinJobAge + purge cycle).
    deadline = time.monotonic() + 150
    while subprocess.run(["scontrol", "show", "job", early_job.split("_")[0]], capture_output=True,
                         timeout=30).returncode == 0:
        assert time.monotonic() < deadline, "slurmctld kept the job for over 150 s"
        time.sleep(2)
    info = slurm.status(early_job)
    assert info.source == "jobcomp"
    assert (info.state, info.exit_code, info.name, info.partition) == ("FAILED", 4, "early", "cpu")
    assert info.node in {"cpu1", "cpu2"}
    assert info.elapsed is not None and info.end_time is not None


def test_statuses_of_many_jobs_agree_with_status_of_each(slurm: Scheduler, early_job: str,
                                                         tmp_path: Path) -> None:
    # After the test above: the early job is only in the job completion log by now.  One batch
    # covers a running job, a pending array (one queue line for all its tasks), a purged job
    # and an id Slurm never gave out.
    running = slurm.submit(write_job(tmp_path, "long", ["-p cpu"], "sleep 60"), workdir=tmp_path)
    array = slurm.submit(write_job(tmp_path, "arr", ["-p cpu", "--array=0-1",
                                                     f"--dependency=afterok:{running}"], "exit 0"),
                         workdir=tmp_path)
    try:
        unknown = str(int(array) + 1000)
        batch = slurm.statuses([early_job, running, array, unknown])
        assert set(batch) == {early_job, running, array}
        for job_id, info in batch.items():
            one = slurm.status(job_id)
            assert (info.job_id, info.state, info.source, info.exit_code, info.tasks) == \
                (one.job_id, one.state, one.source, one.exit_code, one.tasks)
        assert batch[early_job].source == "jobcomp" and batch[array].state == "PENDING"
        if isinstance(slurm, SlurmCLI):
            # Past _SACCT_BY_ID ids, sacct lists the whole log once: the same record comes back.
            many = [early_job, *(str(int(array) + 1000 + i) for i in range(60))]
            assert slurm.completed_jobs(many) == {early_job: slurm.completed_job(early_job)}
    finally:
        slurm.cancel(array)
        slurm.cancel(running)
