"""The Slurm CLI backend's parsers on output recorded from real clusters of both releases
(tests/data/slurm-22.05, tests/data/slurm-25.11, written by tests/cluster/record): no Slurm and no
root needed.  Each recording holds a running GPU job with a constraint, a failed job with
separate stdout/stderr, and a three-task array whose task 1 failed."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcenv.scheduler.slurm_cli import (
    SlurmCLI,
    array_info,
    parse_jobs,
    parse_nodes,
    parse_partitions,
    parse_sacct,
    parse_scontrol_line,
)

DATA = Path(__file__).resolve().parents[1] / "data"
RELEASES = ["22.05", "25.11"]


def recorded(release: str, name: str) -> str:
    return (DATA / f"slurm-{release}" / name).read_text()


def ids(release: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in recorded(release, "ids.txt").split())


@pytest.mark.parametrize("release", RELEASES)
def test_recording_is_of_that_release(release: str) -> None:
    assert recorded(release, "version.txt").split()[-1].startswith(release + ".")


@pytest.mark.parametrize("release", RELEASES)
def test_nodes_and_partitions(release: str) -> None:
    nodes = {n.name: n for n in parse_nodes(recorded(release, "node.txt"))}
    assert set(nodes) == {"cpu1", "cpu2", "a100n1", "a100n2", "v100n1", "h100n1"}
    a100n1 = nodes["a100n1"]
    assert (a100n1.partitions, a100n1.features, a100n1.gpu_type, a100n1.gpus) == (
        ("gpu-a100",), ("cuda12.4",), "a100", 2)
    # The recording's running job holds one of a100n1's GPUs (--gres=gpu:a100:1 -C cuda12.4).
    assert a100n1.gpus_allocated >= 1 and a100n1.state in {"mixed", "allocated"}
    assert a100n1.cpus == 2 and a100n1.cpus_allocated >= 1
    assert (nodes["cpu1"].gpu_type, nodes["cpu1"].gpus, nodes["cpu1"].features) == (None, 0, ())
    assert (nodes["h100n1"].gpus, nodes["h100n1"].gpus_allocated) == (4, 0)
    parts = {p.name: p for p in parse_partitions(recorded(release, "partition.txt"),
                                                  list(nodes.values()))}
    assert list(parts) == ["cpu", "gpu-a100", "gpu-v100", "gpu-h100"]
    assert parts["cpu"].default and not parts["gpu-h100"].default
    assert parts["gpu-a100"].features == ("cuda12.2", "cuda12.4") and parts["gpu-a100"].state == "up"
    assert (parts["gpu-h100"].gpus_total, parts["gpu-h100"].gpus_free) == (4, 4)


@pytest.mark.parametrize("release", RELEASES)
def test_jobs(release: str) -> None:
    known = ids(release)
    jobs = {j.job_id: j for j in parse_jobs(recorded(release, "job.txt"))}
    gpu = jobs[known["gpu"]]
    assert (gpu.state, gpu.name, gpu.partition, gpu.node) == ("RUNNING", "gpu-run", "gpu-a100", "a100n1")
    assert (gpu.constraint, gpu.comment, gpu.exit_code, gpu.end_time) == ("cuda12.4", "rec", None, None)
    # What the job asked for in GPUs, as each release spells it (read back into records).
    assert gpu.gres == {"22.05": "gres:gpu:a100:1", "25.11": "gres/gpu:a100:1"}[release]
    assert gpu.stdout is not None and gpu.stdout.name == f"gpu-run-{known['gpu']}.out"
    assert gpu.stderr == gpu.stdout  # 25.11 prints StdErr= empty when it goes with stdout
    assert gpu.elapsed is not None and gpu.start_time and gpu.user

    failed = jobs[known["fail"]]
    assert (failed.state, failed.exit_code, failed.signal, failed.reason) == (
        "FAILED", 7, None, "NonZeroExitCode")
    assert failed.stdout.name == f"fails-{known['fail']}.out"  # type: ignore[union-attr]
    assert failed.stderr.name == f"fails-{known['fail']}.err"  # type: ignore[union-attr]

    # Array tasks are named ARRAY_TASK (the array's own record is its last task).
    array = known["array"]
    tasks = [j for j in jobs.values() if j.job_id.startswith(f"{array}_")]
    assert sorted(t.job_id for t in tasks) == [f"{array}_{i}" for i in range(3)]
    whole = array_info(array, tasks)
    assert (whole.state, whole.exit_code, whole.reason) == ("FAILED", 3, "job array: 2 COMPLETED, 1 FAILED")
    assert jobs[f"{array}_1"].stdout.name == f"arr-{array}_1.out"  # type: ignore[union-attr]


@pytest.mark.parametrize("release", RELEASES)
def test_job_completion_log(release: str) -> None:
    known = ids(release)
    failed = parse_sacct(recorded(release, "sacct.txt"), known["fail"])
    assert failed is not None
    assert (failed.source, failed.state, failed.exit_code, failed.name, failed.partition) == (
        "jobcomp", "FAILED", 7, "fails", "cpu")
    assert failed.node in {"cpu1", "cpu2"} and failed.end_time is not None
    assert parse_sacct(recorded(release, "sacct.txt"), "999999") is None
    # sacct -c cannot read arrays; the backend reads the file's task lines itself.
    lines = [parse_scontrol_line(line) for line in recorded(release, "jobcomp.txt").splitlines()]
    tasks = [SlurmCLI.from_jobcomp(f) for f in lines if f.get("ArrayJobId") == known["array"]]
    whole = array_info(known["array"], tasks)
    assert whole.tasks == tuple(f"{known['array']}_{i}" for i in range(3))
    assert (whole.state, whole.exit_code, whole.source) == ("FAILED", 3, "jobcomp")
