"""CUDA-aware partition routing: which partition (and node constraint) a job should go to.

Pure logic: the inputs are the env's CUDA requirement, what the user asked for, the site's
partitions and, when a scheduler could be asked, the live node state (features and free GPUs).
Nothing here talks to Slurm; :func:`route` is called by ``hpcenv.jobs.submit`` with the scheduler's
``partitions()`` and is unit-tested with plain data.

Rules (issue 4):

* A CPU job (the env needs no GPU and ``--gpus`` is absent or 0) goes to the first CPU partition
  in site order.
* A GPU job is eligible on a GPU partition whose driver supports the env's CUDA under the site's
  ``cuda_compat``.  A partition's driver is known from ``driver`` or ``max_cuda`` in the site
  config, or per node from a Slurm feature (``node_feature: "cuda{cuda}"``); in the last case the
  decision carries a ``--constraint`` naming exactly the node features whose CUDA suffices.
  A CUDA newer than hpcenv's driver table on the nodes' side (a feature ``cuda13.1``) is read
  by number (:mod:`hpcenv.spec.drivers`).  What one partition's description does not let hpcenv
  judge (a ``driver`` for an env CUDA newer than the table) refuses that partition with the
  reason in its verdict: it never fails the routing of every job.
* A partition is a GPU partition exactly when :attr:`hpcenv.site.config.Partition.is_gpu` says so.
* ``--gpu-type`` filters, site order is the preference, free GPUs decide between them: the first
  eligible partition (site order) that can start the job right now wins; when none can, the first
  eligible one does and the job queues there.  Site order alone would make free GPUs irrelevant,
  free GPUs alone would ignore the admins' preference.
* An explicit ``--partition`` is validated the same way; an incompatible one is an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from hpcenv.errors import InvalidInput
from hpcenv.records import JsonRecord, json_meta
from hpcenv.scheduler.base import NodeState, PartitionState
from hpcenv.site.config import Partition
from hpcenv.spec.cuda_target import NO_CUDA, CudaTarget
from hpcenv.spec.drivers import (
    CudaCompat,
    cuda_satisfies,
    driver_supports,
    driver_table_note,
    max_cuda_for_driver,
    newer_than_table,
    normalize_cuda,
    parse_cuda,
)
from hpcenv.text_table import text_table


class NoPartitionFits(InvalidInput):
    """No partition can run the job.  The message is one line (what the job needs, what would
    work); ``verdicts`` say for every partition its CUDA support and why it was refused, and
    ``details`` (printed by the CLI under the message) is their table."""

    def __init__(self, message: str, verdicts: Sequence[PartitionVerdict]) -> None:
        super().__init__(message, details=format_table(verdicts))
        self.verdicts = tuple(verdicts)

    @property
    def table(self) -> str:
        return self.details or ""


@dataclass(frozen=True)
class RouteRequest:
    """What the job needs: the env's CUDA and the user's resource options."""

    cuda: CudaTarget = NO_CUDA           # the env's CUDA (the __cuda its build was solved with)
    gpu_required: bool | None = None     # from CUDA inference: None means "if cuda is set"
    gpus: int | None = None              # --gpus; None = not given
    gpu_type: str | None = None          # --gpu-type
    partition: str | None = None         # --partition; None or "auto" = route
    nodes: int = 1                       # --nodes (GPUs are requested per node)

    @property
    def needs_gpu_env(self) -> bool:
        if self.gpu_required is not None:
            return self.gpu_required
        return bool(self.cuda)

    @property
    def gpus_wanted(self) -> int:
        """GPUs per node to request: explicit ``--gpus``, else 1 for a CUDA env or ``--gpu-type``."""
        if self.gpus is not None:
            return self.gpus
        return 1 if (self.needs_gpu_env or self.gpu_type) else 0


@dataclass(frozen=True)
class PartitionVerdict(JsonRecord):
    """How one partition fared for this job."""

    name: str = field(metadata=json_meta(key="partition"))
    gpu_type: str | None
    # human form: "driver 520.61.05 (CUDA 11.8)", "cpu only"
    cuda_support: str = field(metadata=json_meta(key="cuda"))
    # newest CUDA the partition (or its best node) supports
    best_cuda: str | None = field(metadata=json_meta(omit=True))
    free_gpus: int | None              # GPUs free right now on usable nodes; None if unknown
    eligible: bool
    why: str                           # why refused, or what makes it fit
    constraint: str | None = None
    nodes: tuple[str, ...] = ()        # nodes the constraint admits (node-feature partitions)
    can_start_now: bool = field(default=False, metadata=json_meta(omit=True))


@dataclass(frozen=True)
class RoutingDecision(JsonRecord):
    """The partition (and constraint, GPUs) a job is sent to, why, and every partition's
    verdict."""

    partition: str | None              # None: let the scheduler use its default partition
    constraint: str | None
    gpus: int                          # GPUs per node to request (0: none)
    gpu_type: str | None
    reason: str
    verdicts: tuple[PartitionVerdict, ...] = field(default=(), metadata=json_meta(key="partitions"))


def _cuda_order(version: str) -> tuple[int, int]:
    """Sort key of a CUDA version the nodes offer (any well-formed version, see drivers)."""
    return parse_cuda(version)


def check_needed_cuda(cuda: str) -> None:
    """The env's CUDA must be a real release (or newer than hpcenv's table): a bad one is the
    env's fault (exit 2), not a reason to refuse every partition."""
    try:
        if not newer_than_table(cuda):
            normalize_cuda(cuda)
    except InvalidInput as exc:
        raise InvalidInput(f"the env's CUDA requirement: {exc}") from None


def _usable_nodes(live: PartitionState | None) -> tuple[NodeState, ...]:
    return tuple(n for n in live.nodes if n.available) if live is not None else ()


def _start_now(nodes: Sequence[NodeState], gpus: int, wanted_nodes: int) -> bool:
    return sum(1 for n in nodes if n.available and n.gpus_free >= gpus) >= max(wanted_nodes, 1)


def _judge_gpu(p: Partition, req: RouteRequest, compat: CudaCompat,
               live: PartitionState | None) -> PartitionVerdict:
    gpus = req.gpus_wanted
    cuda = req.cuda.version
    nodes = live.nodes if live is not None else ()
    free = sum(n.gpus_free for n in nodes) if live is not None else None

    def verdict(support: str, best: str | None, eligible: bool, why: str,
                constraint: str | None = None, admitted: Sequence[NodeState] = ()) -> PartitionVerdict:
        pool = admitted if constraint else nodes
        pool_free = sum(n.gpus_free for n in pool) if live is not None else None
        return PartitionVerdict(
            name=p.name, gpu_type=p.gpu_type, cuda_support=support, best_cuda=best,
            free_gpus=pool_free if eligible else free, eligible=eligible, why=why,
            constraint=constraint, nodes=tuple(n.name for n in admitted),
            can_start_now=eligible and live is not None and _start_now(pool, gpus, req.nodes))

    # CUDA capability of the partition, in the form the site described it.
    if p.driver:
        best = max_cuda_for_driver(p.driver)
        support = f"driver {p.driver} (CUDA {best})"
        try:
            cuda_ok = cuda is None or driver_supports(p.driver, cuda, compat)
        except InvalidInput as exc:
            # e.g. an env CUDA newer than hpcenv's driver table: its minimum driver is unknown.
            return verdict(support, best, False, f"cannot tell whether driver {p.driver} runs "
                           f"CUDA {cuda}: {exc}")
    elif p.max_cuda:
        best = p.max_cuda
        support = f"CUDA {best}"
        cuda_ok = cuda is None or cuda_satisfies(best, cuda, compat)
    elif p.node_feature:
        per_node = [(n, c, f) for n in nodes for f in n.features
                    if (c := p.feature_cuda(f)) is not None]
        if live is None:
            return verdict(f"per node ({p.node_feature})", None, False,
                           "node features unknown: the scheduler could not be asked")
        if not per_node:
            return verdict(f"per node ({p.node_feature})", None, False,
                           f"no node carries a feature matching {p.node_feature!r}")
        best = max((c for _, c, _ in per_node), key=_cuda_order)
        support = "nodes: " + ", ".join(f"{n.name} CUDA {c}" for n, c, _ in per_node)
        fits: list[tuple[NodeState, str]] = []
        skipped: list[str] = []
        for n, c, f in per_node:
            try:
                if cuda is None or cuda_satisfies(c, cuda, compat):
                    fits.append((n, f))
            except InvalidInput as exc:
                # One odd feature must not stop the jobs every other node can run.
                skipped.append(f"{n.name} feature {f} skipped: {exc}")
        if skipped:
            support += " (" + "; ".join(skipped) + ")"
        if not fits:
            return verdict(support, best, False, f"no node's driver supports CUDA {cuda}")
        admitted = tuple(dict.fromkeys(n for n, _ in fits))
        constraint = "|".join(sorted(dict.fromkeys(f for _, f in fits), key=_feature_sort))
        problem = _gpu_count_problem(p, req, gpus)
        if problem:
            return verdict(support, best, False, problem)
        names = ", ".join(n.name for n in admitted)
        note = f" ({driver_table_note(cuda)})" if cuda and driver_table_note(cuda) else ""
        return verdict(support, best, True,
                       f"CUDA {cuda} on {names}{note}" if cuda else f"any GPU node ({names})",
                       constraint=constraint, admitted=admitted)
    else:
        best = None
        support = "driver not described"
        cuda_ok = cuda is None
    # A CUDA whose own minimum driver hpcenv does not know is judged by its family's floor.
    note = f" ({driver_table_note(cuda)})" if cuda and driver_table_note(cuda) else ""
    if not cuda_ok:
        why = (f"driver too old for CUDA {cuda} (supports up to {best}){note}" if best
               else f"site config gives no driver/max_cuda/node_feature, CUDA {cuda} unverifiable")
        return verdict(support, best, False, why)
    problem = _gpu_count_problem(p, req, gpus)
    if problem:
        return verdict(support, best, False, problem)
    return verdict(support, best, True, f"supports CUDA {cuda}{note}" if cuda else "GPU partition")


def _feature_sort(feature: str) -> tuple[tuple[int, ...], str]:
    digits = re.findall(r"\d+", feature)
    return tuple(int(d) for d in digits), feature


def _gpu_count_problem(p: Partition, req: RouteRequest, gpus: int) -> str | None:
    if req.gpu_type and p.gpu_type != req.gpu_type:
        return f"GPU type {p.gpu_type or 'unknown'}, not {req.gpu_type}"
    if p.gpus_per_node and gpus > p.gpus_per_node:
        return f"{p.gpus_per_node} GPUs per node, job asks for {gpus}"
    return None


def _judge_cpu(p: Partition, live: PartitionState | None) -> PartitionVerdict:
    return PartitionVerdict(name=p.name, gpu_type=None, cuda_support="no GPUs", best_cuda=None,
                            free_gpus=None, eligible=True, why="CPU partition",
                            can_start_now=bool(_usable_nodes(live)))


def _live_map(live: Sequence[PartitionState] | None) -> Mapping[str, PartitionState] | None:
    return None if live is None else {p.name: p for p in live}


def route(req: RouteRequest, partitions: Sequence[Partition], *, compat: CudaCompat = "strict",
          live: Sequence[PartitionState] | None = None) -> RoutingDecision:
    """Choose the partition for a job; InvalidInput (exit 2) when none fits or an explicit one
    cannot run it.  ``live`` is the scheduler's ``partitions()`` (None when it was not asked)."""
    if req.cuda.version is not None:
        check_needed_cuda(req.cuda.version)  # early: a bad version must not read as "no partition fits"
    gpus = req.gpus_wanted
    if gpus < 0:
        raise InvalidInput(f"--gpus {gpus}: must be 0 or more")
    explicit = req.partition if req.partition not in (None, "", "auto") else None
    live_by_name = _live_map(live)
    if not partitions:
        # Nothing described: the scheduler decides (local executor, or a site that lists none).
        reason = ("requested with --partition; CUDA not checked: the site config lists no "
                  "partitions" if explicit else "the site config lists no partitions")
        if explicit and live_by_name is not None and explicit not in live_by_name:
            raise InvalidInput(f"--partition {explicit}: the scheduler has no such partition "
                               f"(it has: {', '.join(live_by_name) or 'none'})")
        return RoutingDecision(explicit, None, gpus, req.gpu_type, reason)

    gpu_job = gpus > 0
    verdicts = _judge_all(req, partitions, compat, live_by_name, explicit)

    what = _describe(req, gpus)
    if explicit is not None:
        return _explicit(explicit, req, gpus, verdicts, partitions, live_by_name, what)

    eligible = [v for v in verdicts if v.eligible]
    if not eligible:
        if not gpu_job:
            return RoutingDecision(None, None, 0, None, "the site config lists no CPU partition",
                                   tuple(verdicts))
        raise NoPartitionFits(f"no partition can run this job ({what}); "
                              + _hint(req, verdicts, partitions, compat, live_by_name),
                              verdicts)
    now = [v for v in eligible if v.can_start_now]
    chosen = now[0] if now else eligible[0]
    if chosen is eligible[0]:
        reason = "first eligible partition in site order"
    else:
        skipped = ", ".join(v.name for v in eligible[:eligible.index(chosen)])
        room = f"{_gpus_text(gpus)} free" if gpu_job else "a usable node"
        reason = (f"first eligible partition with {room} now "
                  f"({skipped} preferred by the site but busy or down)")
    reason = f"{reason}; {what}; {chosen.why}"
    return RoutingDecision(chosen.name, chosen.constraint, gpus, req.gpu_type if gpu_job else None,
                           reason, tuple(verdicts))


def _judge_all(req: RouteRequest, partitions: Sequence[Partition], compat: CudaCompat,
               live: Mapping[str, PartitionState] | None, explicit: str | None) -> list[PartitionVerdict]:
    gpu_job = req.gpus_wanted > 0
    verdicts: list[PartitionVerdict] = []
    for p in partitions:
        p_live = live.get(p.name) if live is not None else None
        if not p.is_gpu:
            v = _judge_cpu(p, p_live)
            if gpu_job:
                v = _refuse(v, "no GPUs")
        elif not gpu_job:
            v = _judge_gpu(p, req, compat, p_live)
            if v.eligible and p.name != explicit:
                v = _refuse(v, "GPU partition: a CPU job goes to a CPU partition (or pass --partition)")
        else:
            v = _judge_gpu(p, req, compat, p_live)
        verdicts.append(v)
    return verdicts


def _refuse(v: PartitionVerdict, why: str) -> PartitionVerdict:
    return replace(v, eligible=False, why=why, constraint=None, nodes=(), can_start_now=False)


def _explicit(name: str, req: RouteRequest, gpus: int, verdicts: list[PartitionVerdict],
              partitions: Sequence[Partition], live: Mapping[str, PartitionState] | None,
              what: str) -> RoutingDecision:
    known = [p.name for p in partitions]
    if name not in known:
        raise InvalidInput(f"--partition {name}: not in the site config (known: {', '.join(known)}); "
                           "pick one of those or --partition auto")
    if live is not None and name not in live:
        raise InvalidInput(f"--partition {name}: the scheduler has no such partition "
                           f"(it has: {', '.join(live) or 'none'}); fix the site config")
    v = next(v for v in verdicts if v.name == name)
    if not v.eligible:
        extra = " (pass --gpus 0 to run this CUDA env without a GPU)" if (
            req.needs_gpu_env and req.gpus is None and v.why == "no GPUs") else ""
        fitting = [o.name for o in verdicts if o.eligible]
        if fitting:
            extra += f"; it would run on {', '.join(fitting)} (--partition auto picks for you)"
        raise NoPartitionFits(f"--partition {name} cannot run this job ({what}): {v.why}{extra}",
                              verdicts)
    return RoutingDecision(name, v.constraint, gpus, req.gpu_type if gpus else None,
                           f"requested with --partition; {what}; {v.why}", tuple(verdicts))


def _describe(req: RouteRequest, gpus: int) -> str:
    parts = [f"env needs CUDA {req.cuda}" if req.cuda else
             ("env needs a GPU but names no CUDA version (any GPU partition; --gpu-type "
              "picks the kind)" if req.needs_gpu_env else "CPU env")]
    if gpus:
        parts.append(f"{_gpus_text(gpus)}{' of type ' + req.gpu_type if req.gpu_type else ''} per node")
    return ", ".join(parts)


def _gpus_text(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _hint(req: RouteRequest, verdicts: Sequence[PartitionVerdict], partitions: Sequence[Partition],
          compat: CudaCompat, live: Mapping[str, PartitionState] | None) -> str:
    """What would work instead: the same job without --gpu-type or with fewer GPUs, if that
    fits somewhere, and the newest CUDA the cluster offers when the env needs more."""
    def fits(relaxed: RouteRequest) -> list[PartitionVerdict]:
        return [v for v in _judge_all(relaxed, partitions, compat, live, None) if v.eligible]

    hints: list[str] = []
    with_cuda = [v for v in verdicts if v.best_cuda is not None
                 and (not req.gpu_type or v.gpu_type == req.gpu_type)]
    if req.cuda.version is not None and with_cuda:
        best = max(with_cuda, key=lambda v: _cuda_order(v.best_cuda or "0"))
        if _cuda_order(best.best_cuda or "0") < _cuda_order(req.cuda.version):
            hints.append(f"needs CUDA {req.cuda}; best available is {best.best_cuda} on "
                         f"{best.name} (an env built for CUDA {best.best_cuda} or older would "
                         "run there)")
    if req.gpu_type:
        if not any(v.gpu_type == req.gpu_type for v in verdicts):
            types = sorted({v.gpu_type for v in verdicts if v.gpu_type})
            hints.append(f"no partition has GPU type {req.gpu_type} (types: {', '.join(types) or 'none'})")
        other = fits(replace(req, gpu_type=None))
        if other:
            hints.append(f"without --gpu-type {req.gpu_type} it would run on "
                         + ", ".join(f"{v.name} ({v.gpu_type})" for v in other))
    most = max((p.gpus_per_node for p in partitions if p.gpus_per_node), default=0)
    if most and req.gpus_wanted > most:
        smaller = fits(replace(req, gpus=most))
        if smaller:
            hints.append(f"with --gpus {most} it would run on {smaller[0].name} (at most {most} "
                         "GPUs per node here; use --nodes for more)")
    return "; ".join(hints) or "see why each partition was refused below"


def format_table(verdicts: Sequence[PartitionVerdict]) -> str:
    """Plain-text table of partitions, their CUDA support, free GPUs and verdicts."""
    return text_table(
        ("partition", "gpu", "cuda support", "free", "verdict"),
        [(v.name, v.gpu_type or "-", v.cuda_support,
          "?" if v.free_gpus is None else str(v.free_gpus),
          ("ok: " if v.eligible else "refused: ") + v.why
          + (f" [--constraint {v.constraint}]" if v.eligible and v.constraint else ""))
         for v in verdicts])
