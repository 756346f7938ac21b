"""Partition routing by CUDA: pure data in, RoutingDecision (or InvalidInput) out."""

from __future__ import annotations

import pytest

from hpcenv.errors import InvalidInput
from hpcenv.jobs.routing import NoPartitionFits, RouteRequest, route
from hpcenv.scheduler.base import NodeState, PartitionState
from hpcenv.site.config import Partition
from hpcenv.spec.cuda_target import NO_CUDA, CudaTarget

# The test cluster's layout, in the order a site would prefer: older GPUs first, so a job that
# runs on a V100 does not take an H100.
SITE = (
    Partition(name="cpu"),
    Partition(name="gpu-v100", gpu_type="v100", gpus_per_node=2, driver="520.61.05"),
    Partition(name="gpu-a100", gpu_type="a100", gpus_per_node=2, node_feature="cuda{cuda}"),
    Partition(name="gpu-h100", gpu_type="h100", gpus_per_node=4, max_cuda=CudaTarget.of("12.8")),
)


def node(name: str, part: str, features: tuple[str, ...] = (), gpus: int = 0, used: int = 0,
         state: str = "idle", gpu_type: str | None = None) -> NodeState:
    return NodeState(name=name, partitions=(part,), features=features, state=state,
                     gpu_type=gpu_type, gpus=gpus, gpus_allocated=used, cpus=4)


def live(v100_used: int = 0, a100n1_used: int = 0, a100n2_used: int = 0, h100_used: int = 0,
         a100n1_state: str = "idle") -> list[PartitionState]:
    return [
        PartitionState("cpu", (node("cpu1", "cpu"), node("cpu2", "cpu"))),
        PartitionState("gpu-v100", (node("v100n1", "gpu-v100", ("cuda11.8",), 2, v100_used,
                                         gpu_type="v100"),)),
        PartitionState("gpu-a100", (
            node("a100n1", "gpu-a100", ("cuda12.4",), 2, a100n1_used, a100n1_state, "a100"),
            node("a100n2", "gpu-a100", ("cuda12.2",), 2, a100n2_used, gpu_type="a100"))),
        PartitionState("gpu-h100", (node("h100n1", "gpu-h100", ("cuda12.8",), 4, h100_used,
                                         gpu_type="h100"),)),
    ]


def test_cpu_env_goes_to_cpu_partition() -> None:
    d = route(RouteRequest(cuda=NO_CUDA), SITE, live=live())
    assert (d.partition, d.constraint, d.gpus) == ("cpu", None, 0)
    assert "CPU env" in d.reason and "site order" in d.reason


def test_cpu_job_skips_a_cpu_partition_whose_nodes_are_all_down() -> None:
    site = (Partition(name="cpu-old"), *SITE)
    state = [PartitionState("cpu-old", (node("old1", "cpu-old", state="down"),)), *live()]
    d = route(RouteRequest(cuda=NO_CUDA), site, live=state)
    assert d.partition == "cpu" and "cpu-old preferred by the site but busy or down" in d.reason


def test_cpu_env_with_gpus_goes_to_a_gpu_partition() -> None:
    d = route(RouteRequest(cuda=NO_CUDA, gpus=1), SITE, live=live())
    assert d.partition == "gpu-v100" and d.gpus == 1


def test_cuda_118_env_lands_on_v100() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("11.8")), SITE, live=live())
    assert d.partition == "gpu-v100"
    assert d.gpus == 1  # a CUDA env asks for one GPU when --gpus is not given
    assert d.constraint is None


def test_cuda_124_env_never_on_v100_and_only_on_a100n1() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("12.4")), SITE, live=live())
    assert d.partition == "gpu-a100"
    assert d.constraint == "cuda12.4"
    by_name = {v.name: v for v in d.verdicts}
    assert not by_name["gpu-v100"].eligible
    assert "11.8" in by_name["gpu-v100"].why
    assert by_name["gpu-a100"].nodes == ("a100n1",)


def test_cuda_122_env_may_use_both_a100_nodes() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("12.2")), SITE, live=live())
    assert d.partition == "gpu-a100"
    assert d.constraint == "cuda12.2|cuda12.4"


def test_cuda_128_env_only_on_h100() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("12.8")), SITE, live=live())
    assert d.partition == "gpu-h100" and d.constraint is None
    assert [v.name for v in d.verdicts if v.eligible] == ["gpu-h100"]


def test_minor_compat_admits_older_driver_of_same_major() -> None:
    strict = route(RouteRequest(cuda=CudaTarget.of("12.6")), SITE, live=live())
    assert strict.partition == "gpu-h100"
    minor = route(RouteRequest(cuda=CudaTarget.of("12.6")), SITE, live=live(), compat="minor")
    assert minor.partition == "gpu-a100"
    assert minor.constraint == "cuda12.2|cuda12.4"


def test_gpu_type_filters() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("11.8"), gpu_type="h100"), SITE, live=live())
    assert d.partition == "gpu-h100" and d.gpu_type == "h100"
    refused = {v.name: v.why for v in d.verdicts if not v.eligible}
    assert "not h100" in refused["gpu-v100"]


def test_busy_preferred_partition_yields_to_one_with_free_gpus() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("11.8")), SITE, live=live(v100_used=2))
    assert d.partition == "gpu-a100"
    assert "gpu-v100" in d.reason and "busy" in d.reason


def test_all_busy_queues_on_preferred_partition() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("11.8")), SITE,
              live=live(v100_used=2, a100n1_used=2, a100n2_used=2, h100_used=4))
    assert d.partition == "gpu-v100"


def test_free_gpus_count_only_admitted_nodes() -> None:
    # a100n2 is idle but its driver is too old for 12.4: the A100 partition cannot start the job
    # now, so the idle H100 wins over the site's preference.
    d = route(RouteRequest(cuda=CudaTarget.of("12.4")), SITE, live=live(a100n1_used=2))
    assert d.partition == "gpu-h100"
    a100 = next(v for v in d.verdicts if v.name == "gpu-a100")
    assert a100.free_gpus == 0


def test_drained_node_gives_no_free_gpus_but_keeps_constraint() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("12.4"), gpu_type="a100"), SITE, live=live(a100n1_state="drained"))
    assert d.partition == "gpu-a100" and d.constraint == "cuda12.4"


def test_too_many_gpus_per_node() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("11.8"), gpus=4), SITE, live=live())
    assert d.partition == "gpu-h100"
    why = {v.name: v.why for v in d.verdicts}
    assert "2 GPUs per node" in why["gpu-v100"]


def test_no_eligible_partition_explains_with_table_and_hint() -> None:
    with pytest.raises(NoPartitionFits) as err:
        route(RouteRequest(cuda=CudaTarget.of("13.0")), SITE, live=live())
    assert "\n" not in str(err.value)  # the CLI prints the table under the one-line error
    assert "needs CUDA 13.0; best available is 12.8 on gpu-h100" in str(err.value)
    table = err.value.table.splitlines()
    assert table[0].split()[:2] == ["partition", "gpu"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert set(rows) == {"cpu", "gpu-v100", "gpu-a100", "gpu-h100"}
    assert "driver 520.61.05 (CUDA 11.8)" in rows["gpu-v100"]
    assert "a100n1 CUDA 12.4" in rows["gpu-a100"] and "a100n2 CUDA 12.2" in rows["gpu-a100"]
    assert "refused" in rows["gpu-h100"]
    assert err.value.exit_code == 2


def test_hint_names_best_a100_and_what_would_work() -> None:
    with pytest.raises(NoPartitionFits) as err:
        route(RouteRequest(cuda=CudaTarget.of("12.8"), gpu_type="a100"), SITE, live=live())
    assert str(err.value) == (
        "no partition can run this job (env needs CUDA 12.8, 1 GPU of type a100 per node); "
        "needs CUDA 12.8; best available is 12.4 on gpu-a100 (an env built for CUDA 12.4 or "
        "older would run there); without --gpu-type a100 it would run on gpu-h100 (h100)")


def test_unknown_gpu_type() -> None:
    with pytest.raises(InvalidInput, match="no partition has GPU type k80.*without --gpu-type "
                       "k80 it would run on gpu-v100 .v100., gpu-a100 .a100., gpu-h100 .h100."):
        route(RouteRequest(cuda=CudaTarget.of("11.8"), gpu_type="k80"), SITE, live=live())


def test_too_many_gpus_hint_names_the_most_per_node() -> None:
    with pytest.raises(NoPartitionFits, match="with --gpus 4 it would run on gpu-h100"):
        route(RouteRequest(cuda=CudaTarget.of("12.4"), gpus=8), SITE, live=live())


def test_explicit_refusal_says_where_it_would_run() -> None:
    with pytest.raises(NoPartitionFits) as err:
        route(RouteRequest(cuda=CudaTarget.of("12.8"), partition="gpu-a100"), SITE, live=live())
    assert str(err.value).endswith("it would run on gpu-h100 (--partition auto picks for you)")
    assert "ok: supports CUDA 12.8" in err.value.table


def test_explicit_partition_validated() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("11.8"), partition="gpu-h100"), SITE, live=live())
    assert d.partition == "gpu-h100" and "--partition" in d.reason
    with pytest.raises(InvalidInput, match="--partition gpu-v100 cannot run this job.*too old"):
        route(RouteRequest(cuda=CudaTarget.of("12.4"), partition="gpu-v100"), SITE, live=live())
    with pytest.raises(InvalidInput, match="not in the site config"):
        route(RouteRequest(cuda=NO_CUDA, partition="nope"), SITE, live=live())


def test_explicit_mixed_partition_gets_constraint() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("12.4"), partition="gpu-a100"), SITE, live=live())
    assert (d.partition, d.constraint) == ("gpu-a100", "cuda12.4")


def test_explicit_cpu_partition_for_cuda_env_needs_gpus_0() -> None:
    with pytest.raises(InvalidInput, match="--gpus 0"):
        route(RouteRequest(cuda=CudaTarget.of("12.4"), partition="cpu"), SITE, live=live())
    d = route(RouteRequest(cuda=CudaTarget.of("12.4"), gpus=0, partition="cpu"), SITE, live=live())
    assert (d.partition, d.gpus) == ("cpu", 0)


def test_cpu_env_on_explicit_gpu_partition_is_allowed() -> None:
    d = route(RouteRequest(cuda=NO_CUDA, partition="gpu-h100"), SITE, live=live())
    assert d.partition == "gpu-h100" and d.gpus == 0


def test_explicit_partition_unknown_to_slurm() -> None:
    with pytest.raises(InvalidInput, match="scheduler has no such partition"):
        route(RouteRequest(cuda=NO_CUDA, partition="gpu-h100"), SITE, live=live()[:2])


def test_node_feature_partition_without_live_state_is_refused_with_reason() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("12.4")), SITE, live=None)
    assert d.partition == "gpu-h100"  # A100's nodes are unknown; static partitions still work
    a100 = next(v for v in d.verdicts if v.name == "gpu-a100")
    assert not a100.eligible and "could not be asked" in a100.why


def test_site_without_partitions_leaves_choice_to_scheduler() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("12.4")), (), live=None)
    assert d.partition is None and d.gpus == 1 and "lists no partitions" in d.reason


def test_cpu_job_without_cpu_partition_uses_default() -> None:
    d = route(RouteRequest(cuda=NO_CUDA), SITE[1:], live=live())
    assert d.partition is None and "no CPU partition" in d.reason


def test_env_not_needing_gpu_despite_cuda() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("12.4"), gpu_required=False), SITE, live=live())
    assert d.partition == "cpu"


def test_gpu_env_without_a_cuda_version_goes_to_a_gpu_partition() -> None:
    # e.g. a ROCm build: the registry records gpu_required but no CUDA.
    d = route(RouteRequest(cuda=NO_CUDA, gpu_required=True), SITE, live=live())
    assert (d.partition, d.gpus) == ("gpu-v100", 1)
    assert "env needs a GPU but names no CUDA version" in d.reason
    d = route(RouteRequest(cuda=NO_CUDA, gpu_required=True, gpu_type="h100"), SITE, live=live())
    assert (d.partition, d.gpu_type) == ("gpu-h100", "h100")
    with pytest.raises(InvalidInput, match="no GPUs .pass --gpus 0"):
        route(RouteRequest(cuda=NO_CUDA, gpu_required=True, partition="cpu"), SITE, live=live())


def test_node_feature_pattern_with_text_around_the_version() -> None:
    site = (Partition(name="g", gpu_type="a100", gpus_per_node=2, node_feature="drv-cuda{cuda}-x"),)
    state = [PartitionState("g", (node("n1", "g", ("drv-cuda12.4-x", "cuda12.8"), 2),
                                  node("n2", "g", ("drv-cuda12.2-x",), 2)))]
    d = route(RouteRequest(cuda=CudaTarget.of("12.4")), site, live=state)
    # "cuda12.8" does not follow the site's pattern: it says nothing about n1's driver.
    assert (d.partition, d.constraint) == ("g", "drv-cuda12.4-x")
    assert d.verdicts[0].nodes == ("n1",)


@pytest.mark.parametrize(("cuda", "why"), [
    ("twelve", "the env's CUDA requirement: invalid CUDA version 'twelve'"),
    ("12.7", "the env's CUDA requirement: unknown CUDA version '12.7'"),
])
def test_bad_env_cuda_is_the_envs_fault_not_every_partitions(cuda: str, why: str) -> None:
    with pytest.raises(InvalidInput) as err:
        route(RouteRequest(cuda=CudaTarget.of(cuda)), SITE, live=live())
    assert not isinstance(err.value, NoPartitionFits) and why in str(err.value)


# A node whose driver is newer than hpcenv's driver table (CUDA 13.1): routing must go on for
# every job, reading the newer version by number.
NEWER = (
    Partition(name="cpu"),
    Partition(name="gpu-v100", gpu_type="v100", gpus_per_node=2, driver="520.61.05"),
    Partition(name="gpu-a100", gpu_type="a100", gpus_per_node=2, node_feature="cuda{cuda}"),
    Partition(name="gpu-b200", gpu_type="b200", gpus_per_node=8, max_cuda=CudaTarget.of("13.1")),
)


def newer_live() -> list[PartitionState]:
    return [
        PartitionState("cpu", (node("cpu1", "cpu"),)),
        PartitionState("gpu-v100", (node("v100n1", "gpu-v100", ("cuda11.8",), 2, gpu_type="v100"),)),
        PartitionState("gpu-a100", (
            node("a100n1", "gpu-a100", ("cuda12.4",), 2, gpu_type="a100"),
            node("a100n3", "gpu-a100", ("cuda13.1",), 2, gpu_type="a100"))),
        PartitionState("gpu-b200", (node("b200n1", "gpu-b200", ("cuda13.1",), 8, gpu_type="b200"),)),
    ]


def test_a_node_newer_than_the_driver_table_does_not_break_routing() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("12.4")), NEWER, live=newer_live())
    assert (d.partition, d.constraint) == ("gpu-a100", "cuda12.4|cuda13.1")
    a100 = next(v for v in d.verdicts if v.name == "gpu-a100")
    assert a100.nodes == ("a100n1", "a100n3") and a100.best_cuda == "13.1"
    assert route(RouteRequest(cuda=NO_CUDA), NEWER, live=newer_live()).partition == "cpu"


def test_an_env_newer_than_the_driver_table_runs_where_the_nodes_say_so() -> None:
    d = route(RouteRequest(cuda=CudaTarget.of("13.1")), NEWER, live=newer_live())
    assert (d.partition, d.constraint) == ("gpu-a100", "cuda13.1")
    by_name = {v.name: v for v in d.verdicts}
    # 13.1 is in the driver table (590.44.01): a 520 driver is simply too old.
    assert not by_name["gpu-v100"].eligible
    assert "driver too old for CUDA 13.1" in by_name["gpu-v100"].why
    assert by_name["gpu-b200"].eligible
    d = route(RouteRequest(cuda=CudaTarget.of("13.1"), gpu_type="b200"), NEWER, live=newer_live())
    assert d.partition == "gpu-b200" and d.constraint is None
    # Past the table, a 13.x release is judged by the 13.x family floor (driver 580), not
    # refused: nodes that run 13.1 (driver >= 590) qualify, the 520 driver does not.
    d = route(RouteRequest(cuda=CudaTarget.of("13.7")), NEWER, live=newer_live())
    assert (d.partition, d.constraint) == ("gpu-a100", "cuda13.1")
    by_name = {v.name: v for v in d.verdicts}
    assert not by_name["gpu-v100"].eligible and by_name["gpu-b200"].eligible
    # ...and each verdict says that the driver floor is an assumption.
    floor = "assuming the 13.x minor-version-compatibility floor, driver 580"
    assert all(floor in by_name[p].why for p in ("gpu-v100", "gpu-a100", "gpu-b200"))


def test_decision_to_dict_is_json_ready() -> None:
    import json

    d = route(RouteRequest(cuda=CudaTarget.of("12.4")), SITE, live=live())
    data = json.loads(json.dumps(d.to_dict()))
    assert data["partition"] == "gpu-a100" and data["constraint"] == "cuda12.4"
    assert len(data["partitions"]) == 4
