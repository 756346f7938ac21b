"""Slurm through pyslurm's C-API bindings, written against pyslurm 25.11's API.

pyslurm is imported lazily: it links libslurm and calls ``slurm_init()`` on import.  A pyslurm
build works only with the Slurm release it was compiled for (its version is ``<Slurm major.minor>
.<patch>``), so ``get_scheduler("slurm")`` uses this backend only when the installed pyslurm's
release equals ``sinfo --version``'s, and the Slurm CLI backend otherwise.

What is tested and what is not:

* Tested here: the release check (``pyslurm_version``, ``same_release``) and the factory's
  fallback to the CLI backend when pyslurm is missing; the conversion of pyslurm's ``Job``/``Node``
  attributes to hpcenv's records (``job_info``, ``node_state``) on plain objects that carry
  the attribute names pyslurm 25.11 documents.
* NOT tested, anywhere: every call into pyslurm itself (``JobSubmitDescription.submit``,
  ``Job.load``, ``Jobs.load``, ``Job.send_signal``, ``Job.cancel``, ``Nodes.load``,
  ``Partitions.load``).  pyslurm 25.11 builds only against Slurm 25.11 and the test machines
  run Debian's Slurm 22.05, so this code has never talked to a real controller.  Two known gaps
  from reading pyslurm's source: ``Node.allocated_gres`` is derived from the node's allocated
  TRES, which lists GPUs only when the site tracks ``gres/gpu`` in ``AccountingStorageTRES``
  (otherwise free GPUs read as all free); and a purged job (past ``MinJobAge``) is looked up in
  slurmdbd through ``pyslurm.db.Job`` only, with no ``sacct -c`` fallback.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.fsutil import current_user
from hpcenv.scheduler.base import (
    JobInfo,
    NodeState,
    PartitionState,
    is_finished,
    signal_number,
)

_INVALID_JOB_ID = 2017  # ESLURM_INVALID_JOB_ID in Slurm's slurm_errno.h


def pyslurm_version() -> str | None:
    """The installed pyslurm's version without importing it (importing initialises libslurm)."""
    try:
        return metadata.version("pyslurm")
    except metadata.PackageNotFoundError:
        return None


def same_release(pyslurm_ver: str, slurm_ver: str) -> bool:
    """pyslurm ``25.11.2`` was built for Slurm ``25.11.x``: the first two numbers must agree."""
    return bool(slurm_ver) and pyslurm_ver.split(".")[:2] == slurm_ver.split(".")[:2]


def _rpc_error(action: str, exc: Exception) -> HpcenvError:
    message = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    return HpcenvError(f"Slurm {action}: {message}")


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def job_info(job: Any) -> JobInfo:
    """A pyslurm ``Job`` (or ``db.Job``) as a ``JobInfo``."""
    state = str(getattr(job, "state", "UNKNOWN") or "UNKNOWN")
    finished = is_finished(state)
    nodes = getattr(job, "allocated_nodes", None) or getattr(job, "nodelist", None)
    stdout = _path(getattr(job, "standard_output", None))
    stderr = _path(getattr(job, "standard_error", None)) or stdout
    end = getattr(job, "end_time", None)
    constraints = getattr(job, "constraints", None)
    if isinstance(constraints, list):
        constraints = ",".join(constraints)
    run_time = getattr(job, "run_time", None)
    if run_time is None:
        run_time = getattr(job, "elapsed_time", None)
    return JobInfo(
        job_id=str(job.id), name=str(getattr(job, "name", "") or ""), state=state,
        reason=(getattr(job, "state_reason", None) or None)
        if getattr(job, "state_reason", None) != "None" else None,
        exit_code=getattr(job, "exit_code", None) if finished else None,
        signal=(getattr(job, "exit_code_signal", None) or None) if finished else None,
        node=nodes or None, elapsed=float(run_time) if run_time is not None else None,
        partition=getattr(job, "partition", None) or None, stdout=stdout, stderr=stderr,
        workdir=_path(getattr(job, "working_directory", None)),
        submit_time=getattr(job, "submit_time", None), start_time=getattr(job, "start_time", None),
        end_time=end if finished else None, user=getattr(job, "user_name", None),
        comment=getattr(job, "comment", None) or None, constraint=constraints or None,
        source="pyslurm")


def _gpu_count(gres: dict[str, Any]) -> tuple[str | None, int]:
    """pyslurm's GRES dicts: ``{"gpu:a100": 2}`` or ``{"gpu": 2, "gpu:a100": 2}`` (TRES form)."""
    types: list[str] = []
    typed = untyped = 0
    for key, value in (gres or {}).items():
        count = value.get("count", 0) if isinstance(value, dict) else int(value)
        name, _, typ = str(key).partition(":")
        if name != "gpu":
            continue
        if typ:
            types.append(typ)
            typed += count
        else:
            untyped += count
    return (",".join(types) or None), (typed or untyped)


def node_state(node: Any) -> NodeState:
    """A pyslurm ``Node`` as a ``NodeState``."""
    gpu_type, gpus = _gpu_count(getattr(node, "configured_gres", {}) or {})
    _, used = _gpu_count(getattr(node, "allocated_gres", {}) or {})
    features = getattr(node, "active_features", None) or getattr(node, "available_features", [])
    return NodeState(
        name=str(node.name), partitions=tuple(getattr(node, "partitions", []) or ()),
        features=tuple(features or ()), state=str(getattr(node, "state", "unknown")).lower(),
        gpu_type=gpu_type, gpus=gpus, gpus_allocated=used,
        cpus=int(getattr(node, "total_cpus", 0) or 0),
        cpus_allocated=int(getattr(node, "allocated_cpus", 0) or 0))


class PyslurmScheduler:
    """The scheduler protocol on pyslurm.  Build it with ``create()``."""

    kind = "pyslurm"

    def __init__(self, module: Any) -> None:
        self._pyslurm = module

    @classmethod
    def create(cls) -> PyslurmScheduler | None:
        """The backend, or None when pyslurm does not import (missing, or libslurm mismatch)."""
        try:
            import pyslurm
        except Exception:  # noqa: BLE001 - an ABI mismatch surfaces as ImportError or OSError
            return None
        return cls(pyslurm)

    @staticmethod
    def _job_id(job_id: str) -> int:
        if not str(job_id).isdigit():
            raise InvalidInput(f"invalid Slurm job id {job_id!r}: expected digits, e.g. 1234")
        return int(job_id)

    def submit(self, script_path: Path, *, workdir: Path) -> str:
        ps = self._pyslurm
        try:
            desc = ps.JobSubmitDescription(script=str(script_path),
                                           working_directory=str(workdir))
            desc.load_sbatch_options()
            return str(desc.submit())
        except ps.RPCError as exc:
            raise _rpc_error(f"rejected the job {script_path}", exc) from None
        except ValueError as exc:  # pyslurm's own validation of the script and options
            raise InvalidInput(f"{script_path}: {exc}") from None

    def status(self, job_id: str) -> JobInfo:
        ps = self._pyslurm
        number = self._job_id(job_id)
        try:
            return job_info(ps.Job.load(number))
        except ps.RPCError as exc:
            if getattr(exc, "errno", None) != _INVALID_JOB_ID:
                raise _rpc_error(f"could not report job {job_id}", exc) from None
        try:  # purged from slurmctld: only slurmdbd still knows it
            return job_info(ps.db.Job.load(number))
        except Exception:  # noqa: BLE001 - no slurmdbd, or not recorded there
            raise NotFound(f"Slurm job {job_id} is unknown to slurmctld and slurmdbd; "
                           "check the id") from None

    def jobs(self, user: str | None = None) -> list[JobInfo]:
        ps = self._pyslurm
        user = user or current_user()
        try:
            jobs = ps.Jobs.load()
        except ps.RPCError as exc:
            raise _rpc_error("could not list jobs", exc) from None
        return [job_info(j) for j in jobs.values() if j.user_name == user]

    def cancel(self, job_id: str, signal: str | int | None = None) -> None:
        ps = self._pyslurm
        info = self.status(job_id)
        if info.finished:
            return
        try:
            job = ps.Job(self._job_id(job_id))
            if signal is None:
                job.cancel()
            else:
                # steps="batch" is scancel --batch, as in the CLI backend: the batch shell is
                # (or forwards to) the program, which thus gets the signal exactly once.
                job.send_signal(signal_number(signal), steps="batch")
        except ps.RPCError as exc:
            raise _rpc_error(f"could not cancel job {job_id}", exc) from None

    def nodes(self) -> list[NodeState]:
        ps = self._pyslurm
        try:
            return [node_state(n) for n in ps.Nodes.load().values()]
        except ps.RPCError as exc:
            raise _rpc_error("could not list nodes", exc) from None

    def partitions(self) -> list[PartitionState]:
        ps = self._pyslurm
        nodes = self.nodes()
        try:
            parts = list(ps.Partitions.load().values())
        except ps.RPCError as exc:
            raise _rpc_error("could not list partitions", exc) from None
        return [PartitionState(name=p.name, nodes=tuple(n for n in nodes if p.name in n.partitions),
                               default=bool(p.is_default), state=str(p.state).lower())
                for p in parts]

    def version(self) -> str:
        return str(getattr(self._pyslurm, "__version__", ""))
