"""The pyslurm backend's pure logic: release matching, the factory's fallback, conversion of
pyslurm's records, and the job description built from hpcenv's options.  Its calls into pyslurm
run against a real Slurm 25.11 controller in test_scheduler_slurm.py and test_submit_slurm.py
(target ``25.11-pyslurm``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.scheduler import get_scheduler
from hpcenv.scheduler.job_options import JobOptions
from hpcenv.scheduler.pyslurm_backend import (
    PyslurmScheduler,
    description_fields,
    gpus_in_use,
    job_info,
    node_state,
    same_release,
)


def test_release_matching() -> None:
    assert same_release("25.11.2", "25.11.0")
    assert not same_release("25.11.2", "22.05.8")
    assert not same_release("25.11.2", "25.5.1")
    assert not same_release("25.11.2", "")


def test_without_pyslurm_the_factory_falls_back(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    import hpcenv.scheduler as factory
    import hpcenv.scheduler.pyslurm_backend as backend
    from hpcenv.scheduler import select_scheduler

    # As on a machine without pyslurm: no distribution, and the import fails.
    monkeypatch.setattr(backend, "pyslurm_version", lambda: None)
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    assert PyslurmScheduler.create() is None
    with pytest.raises(HpcenvError, match="pyslurm module does not import"):
        get_scheduler("pyslurm")
    # A fake sinfo (no Slurm needed): "slurm" takes the CLI and says why.
    fake = tmp_path / "sinfo"
    fake.write_text("#!/bin/sh\necho slurm 25.11.7\n")
    fake.chmod(0o755)
    chosen = select_scheduler("slurm", bin_dir=tmp_path)
    assert (chosen.scheduler.kind, chosen.why) == (
        "slurm-cli", "scheduler: slurm; pyslurm is not installed, so the Slurm CLI")
    # A pyslurm distribution whose module fails to import (linked against another libslurm).
    monkeypatch.setattr(backend, "pyslurm_version", lambda: "25.11.2")
    monkeypatch.setattr(factory, "pyslurm_installed", lambda: True)
    assert select_scheduler("slurm", bin_dir=tmp_path).why.startswith(
        "scheduler: slurm; pyslurm 25.11.2 does not import (")


def test_an_unimportable_pyslurm_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # A pyslurm linked against another libslurm fails at import; None in sys.modules makes
    # `import pyslurm` raise ImportError the same way.
    monkeypatch.setitem(sys.modules, "pyslurm", None)
    assert PyslurmScheduler.create() is None


def test_invalid_job_ids_are_refused_before_any_rpc() -> None:
    backend = PyslurmScheduler(SimpleNamespace())
    with pytest.raises(InvalidInput, match="invalid Slurm job id"):
        backend.status("1; true")


def test_job_conversion_uses_pyslurm_25_11_attribute_names() -> None:
    job = SimpleNamespace(
        id=42, name="train", state="FAILED", state_reason="NonZeroExitCode", exit_code=3,
        exit_code_signal=0, allocated_nodes="a100n1", run_time=12, partition="gpu-a100",
        standard_output="/w/train-42.out", standard_error="", working_directory="/w",
        submit_time=100, start_time=110, end_time=122, user_name="ana", comment=None,
        constraints=["cuda12.4"])
    info = job_info(job)
    assert (info.job_id, info.state, info.exit_code, info.signal, info.node) == (
        "42", "FAILED", 3, None, "a100n1")
    assert str(info.stdout) == str(info.stderr) == "/w/train-42.out"
    assert (info.constraint, info.elapsed, info.end_time, info.source) == (
        "cuda12.4", 12.0, 122, "queue")
    task = job_info(SimpleNamespace(id=44, array_id=40, array_task_id=2, state="PENDING"))
    assert task.job_id == "40_2"  # as sbatch's %A_%a and the CLI backend name a task
    # pyslurm 25.11 reads task 0 as None; the record of the still waiting tasks has none.
    first = job_info(SimpleNamespace(id=41, array_id=40, array_task_id=None, state="RUNNING"))
    waiting = job_info(SimpleNamespace(id=40, array_id=40, array_task_id=None,
                                       array_tasks_waiting="1-9", state="PENDING"))
    assert (first.job_id, waiting.job_id) == ("40_0", "40")

    running = job_info(SimpleNamespace(id=7, name="x", state="RUNNING", state_reason="None",
                                       exit_code=0, run_time=5, end_time=999))
    assert (running.exit_code, running.end_time, running.reason) == (None, None, None)


def test_node_conversion_counts_typed_and_allocated_gpus() -> None:
    node = SimpleNamespace(
        name="h100n1", partitions=["gpu-h100"], active_features=["cuda12.8"], state="MIXED",
        configured_gres={"gpu:h100": 4}, allocated_gres={}, total_cpus=2, allocated_cpus=1)
    # allocated_gres stays empty without AccountingStorageTRES=gres/gpu: the jobs count.
    jobs = [SimpleNamespace(state="RUNNING", get_resource_layout_per_node=lambda: {
                "h100n1": {"gres": {"gpu:h100": {"count": 3, "indexes": "0-2"}}}}),
            SimpleNamespace(state="COMPLETED", get_resource_layout_per_node=lambda: {
                "h100n1": {"gres": {"gpu:h100": {"count": 1}}}})]
    used = gpus_in_use(jobs)
    assert used == {"h100n1": 3}
    state = node_state(node, used["h100n1"])
    assert (state.gpu_type, state.gpus, state.gpus_allocated, state.gpus_free) == ("h100", 4, 3, 1)
    assert (state.features, state.state, state.partitions) == (("cuda12.8",), "mixed", ("gpu-h100",))
    idle = node_state(SimpleNamespace(name="cpu1", partitions=["cpu"], active_features=[],
                                      state="IDLE", configured_gres={}, allocated_gres={}))
    assert (idle.gpu_type, idle.gpus, idle.gpus_free) == (None, 0, 0)


def test_job_description_sets_the_fields_sbatch_would(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    options = JobOptions(
        job_name="train", partition="gpu-a100", constraint="cuda12.4", nodes="2",
        ntasks_per_node=2, gpus_per_node=1, gpu_type="a100", time="1:30:00", mem="4G",
        signal="USR1@90", requeue=True, output="logs/%j.out", mail_type="END", chdir="sub")
    kw = description_fields(options, script=script, workdir=tmp_path)
    assert kw["script"] == str(script) and kw["working_directory"] == str(tmp_path / "sub")
    assert (kw["name"], kw["partitions"], kw["constraints"]) == ("train", "gpu-a100", "cuda12.4")
    # sbatch's arithmetic for the tasks; GPUs per node as a typed GRES; minutes rounded up.
    assert (kw["nodes"], kw["ntasks"], kw["ntasks_per_node"]) == ("2", 4, 2)
    assert (kw["gres_per_node"], kw["time_limit"], kw["memory_per_node"]) == ("gpu:a100:1", 90, "4G")
    # pyslurm's own signal parser fails on names: a dict with the number, for the batch shell.
    assert kw["signal"] == {"signal": 10, "time": 90, "batch_only": True}
    assert (kw["log_files_open_mode"], kw["is_requeueable"]) == ("append", True)
    assert kw["standard_output"] == str(tmp_path / "sub" / "logs" / "%j.out")
    assert kw["environment"]["SLURM_SUBMIT_DIR"] == str(tmp_path)
    assert description_fields(JobOptions(gpus=3, gpu_type="h100"), script=script,
                              workdir=tmp_path)["gpus"] == "h100:3"
    with pytest.raises(InvalidInput, match="pyslurm backend cannot pass --gres=gpu:1 on"):
        description_fields(JobOptions(extra_args=("--gres=gpu:1",)), script=script, workdir=tmp_path)


def test_without_pyslurm_the_slurm_cli_is_chosen_without_loading_the_pyslurm_backend(
        tmp_path: Path) -> None:
    # Every status, jobs and submit picks a backend: on the usual site (no pyslurm) that must
    # not cost the pyslurm backend's module or importlib.metadata.
    # (A None entry hides a pyslurm that tests/run installed, as on a machine without it.)
    code = ("import sys; sys.modules['pyslurm'] = None; "
            "from hpcenv.scheduler import select_scheduler; "
            "print(select_scheduler('slurm').scheduler.kind, "
            "'hpcenv.scheduler.pyslurm_backend' in sys.modules, 'importlib.metadata' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.stdout.split() == ["slurm-cli", "False", "False"], result.stderr
