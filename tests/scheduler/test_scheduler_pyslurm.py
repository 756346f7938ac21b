"""What can be tested of the pyslurm backend without pyslurm (it needs Slurm 25.11; see the
module docstring of hpcenv.scheduler.pyslurm_backend for what stays untested)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.scheduler import get_scheduler
from hpcenv.scheduler.pyslurm_backend import (
    PyslurmScheduler,
    job_info,
    node_state,
    pyslurm_version,
    same_release,
)

HAVE_PYSLURM = pyslurm_version() is not None


def test_release_matching() -> None:
    assert same_release("25.11.2", "25.11.0")
    assert not same_release("25.11.2", "22.05.8")
    assert not same_release("25.11.2", "25.5.1")
    assert not same_release("25.11.2", "")


@pytest.mark.skipif(HAVE_PYSLURM, reason="checks behaviour without pyslurm installed")
def test_without_pyslurm_the_factory_falls_back() -> None:
    assert pyslurm_version() is None
    assert PyslurmScheduler.create() is None
    with pytest.raises(HpcenvError, match="pyslurm module does not import"):
        get_scheduler("pyslurm")


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
        "cuda12.4", 12.0, 122, "pyslurm")

    running = job_info(SimpleNamespace(id=7, name="x", state="RUNNING", state_reason="None",
                                       exit_code=0, run_time=5, end_time=999))
    assert (running.exit_code, running.end_time, running.reason) == (None, None, None)


def test_node_conversion_counts_typed_and_allocated_gpus() -> None:
    node = SimpleNamespace(
        name="h100n1", partitions=["gpu-h100"], active_features=["cuda12.8"], state="MIXED",
        configured_gres={"gpu:h100": 4}, allocated_gres={"gpu": 3, "gpu:h100": 3},
        total_cpus=2, allocated_cpus=1)
    state = node_state(node)
    assert (state.gpu_type, state.gpus, state.gpus_allocated, state.gpus_free) == ("h100", 4, 3, 1)
    assert (state.features, state.state, state.partitions) == (("cuda12.8",), "mixed", ("gpu-h100",))
    idle = node_state(SimpleNamespace(name="cpu1", partitions=["cpu"], active_features=[],
                                      state="IDLE", configured_gres={}, allocated_gres={}))
    assert (idle.gpu_type, idle.gpus, idle.gpus_free) == (None, 0, 0)
