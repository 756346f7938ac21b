"""Slurm through pyslurm's C-API bindings (pyslurm 25.11, for Slurm 25.11).

pyslurm is imported lazily: it links libslurm and calls ``slurm_init()`` on import, reading
``SLURM_CONF`` then.  A pyslurm build works only with the Slurm release it was compiled for (its
version is ``<Slurm major.minor>.<patch>``), so ``get_scheduler("slurm")`` uses this backend only
when the installed pyslurm's release equals the controller's, and the Slurm CLI backend otherwise.

Tested against a real Slurm 25.11.7 controller (tests/cluster, pyslurm 25.11.2): submission,
routing by live node state, signals, cancel, arrays, and status after the job was purged.
What this module does about pyslurm 25.11.2's rough edges, found there:

* ``JobSubmitDescription.load_sbatch_options()`` fails on ``#SBATCH --partition`` (the
  description's field is ``partitions``), so submission sets the description's fields from the
  job's :class:`~hpcenv.scheduler.job_options.JobOptions` (read from the header when a caller
  gives none), never through that parser.  An option without a field here is refused by name.
* ``signal="B:USR1@60"`` fails (pyslurm looks the name up without its ``SIG`` prefix): the
  signal goes in as a dict with its number.  ``time_limit`` wants minutes as a number, not the
  string ``"5"``.
* ``Node.allocated_gres`` comes from the node's allocated TRES, which names GPUs only when
  ``AccountingStorageTRES`` tracks ``gres/gpu`` (it needs slurmdbd): without that it is empty
  and every GPU would look free.  GPUs in use are summed from the running jobs' resource
  layout instead.
* A purged job (past ``MinJobAge``) is gone from slurmctld; without slurmdbd only the job
  completion log knows it.  That lookup is the CLI backend's (``sacct -c`` and the jobcomp file).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.fsutil import current_user
from hpcenv.scheduler.base import (
    SLURM_CAPABILITIES,
    Capabilities,
    JobInfo,
    NodeState,
    PartitionState,
    SchedulerUnreachable,
    is_finished,
)
from hpcenv.scheduler.job_options import JobOptions, from_script, min_nodes
from hpcenv.scheduler.options import (
    parse_time_limit,
    signal_number,
    signal_spec_problem,
)
from hpcenv.scheduler.slurm_cli import REJECTION_HINTS, SlurmCLI, array_info

_INVALID_JOB_ID = 2017  # ESLURM_INVALID_JOB_ID in Slurm's slurm_errno.h


def pyslurm_version() -> str | None:
    """The installed pyslurm's version without importing it (importing initialises libslurm)."""
    # importlib.metadata costs ~25 ms to import; every CLI call (a cache hit too) imports
    # this module, few of them ask for pyslurm's version.
    from importlib import metadata

    try:
        return metadata.version("pyslurm")
    except metadata.PackageNotFoundError:
        return None


def import_problem() -> str | None:
    """Why ``import pyslurm`` would fail here, or None.  Tried in a child process: when libslurm
    finds no configuration (no ``SLURM_CONF``, no slurm.conf, no DNS SRV record) its
    ``slurm_init()`` ends the whole process ("fatal: Could not establish a configuration
    source") instead of raising, and hpcenv must survive that to fall back to the CLI."""
    try:
        proc = subprocess.run([sys.executable, "-c", "import pyslurm"], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"importing pyslurm did not finish ({exc})"
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else f"importing pyslurm failed (exit {proc.returncode})"


def same_release(pyslurm_ver: str, slurm_ver: str) -> bool:
    """pyslurm ``25.11.2`` was built for Slurm ``25.11.x``: the first two numbers must agree."""
    return bool(slurm_ver) and pyslurm_ver.split(".")[:2] == slurm_ver.split(".")[:2]


def _rpc_error(action: str, exc: Exception) -> HpcenvError:
    message = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    if "Unable to contact slurm controller" in message:
        return SchedulerUnreachable(f"cannot reach the Slurm controller ({message}); check that "
                                    "slurmctld runs and SLURM_CONF points at its config")
    return HpcenvError(f"Slurm {action}: {message}")


def _rejection(exc: Exception) -> HpcenvError:
    """A refused submission, worded (and classed) as the CLI backend words sbatch's refusal."""
    message = getattr(exc, "msg", None) or str(exc) or type(exc).__name__
    hint = REJECTION_HINTS.get(message)
    if hint:  # the job asked for something this cluster does not have: bad input
        return InvalidInput(f"Slurm rejected the job: {message}; {hint}")
    if "Unable to contact slurm controller" in message:
        return _rpc_error("rejected the job", exc)
    return HpcenvError(f"Slurm rejected the job: {message}")


@contextlib.contextmanager
def _libslurm_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at /dev/null while libslurm runs (it writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def job_info(job: Any) -> JobInfo:
    """A pyslurm ``Job`` as a ``JobInfo``; an array task is named ``ARRAY_TASK`` as sbatch's
    ``%A_%a`` and the CLI backend name it."""
    state = str(getattr(job, "state", "UNKNOWN") or "UNKNOWN")
    finished = is_finished(state)
    nodes = getattr(job, "allocated_nodes", None)
    stdout = _path(getattr(job, "standard_output", None))
    stderr = _path(getattr(job, "standard_error", None)) or stdout
    constraints = getattr(job, "constraints", None)
    if isinstance(constraints, list):
        constraints = ",".join(constraints)
    run_time = getattr(job, "run_time", None)
    reason = getattr(job, "state_reason", None)
    job_id = str(job.id)
    array_id, task = getattr(job, "array_id", None), getattr(job, "array_task_id", None)
    if array_id and not getattr(job, "array_tasks_waiting", None):
        # pyslurm 25.11 reads task id 0 as "not set" (None); only the record of an array's
        # tasks still waiting (array_tasks_waiting "1-9") has no task id of its own.
        job_id = f"{array_id}_{task or 0}"
    return JobInfo(
        job_id=job_id, name=str(getattr(job, "name", "") or ""), state=state,
        reason=reason if reason not in (None, "", "None") else None,
        exit_code=getattr(job, "exit_code", None) if finished else None,
        signal=(getattr(job, "exit_code_signal", None) or None) if finished else None,
        node=nodes or None, elapsed=float(run_time) if run_time is not None else None,
        partition=getattr(job, "partition", None) or None, stdout=stdout, stderr=stderr,
        workdir=_path(getattr(job, "working_directory", None)),
        submit_time=getattr(job, "submit_time", None), start_time=getattr(job, "start_time", None),
        end_time=getattr(job, "end_time", None) if finished else None,
        user=getattr(job, "user_name", None),
        comment=getattr(job, "comment", None) or None, constraint=constraints or None,
        gres=_asked_gres(job), source="queue")


def _asked_gres(job: Any) -> str | None:
    """The generic resources a job asked for, per job then per node, in the CLI's spelling
    where pyslurm gives a dict (``{"gpu:a100": 1}`` -> ``gres/gpu:a100:1``)."""
    asked = []
    for names in (("tres_per_job",), ("tres_per_node", "gres_per_node")):
        value = next((v for n in names if (v := getattr(job, n, None))), None)
        if isinstance(value, dict):
            value = ",".join(f"gres/{str(k).removeprefix('gres/')}:{v}" for k, v in value.items())
        if value:
            asked.append(str(value))
    return ",".join(asked) or None


def _gpu_count(gres: dict[str, Any]) -> tuple[str | None, int]:
    """pyslurm's GRES dicts: ``{"gpu:a100": 2}``, ``{"gpu:a100": {"count": 1, ...}}``."""
    types: list[str] = []
    typed = untyped = 0
    for key, value in (gres or {}).items():
        count = int(value.get("count", 0)) if isinstance(value, dict) else int(value)
        name, _, typ = str(key).removeprefix("gres/").partition(":")
        if name != "gpu":
            continue
        if typ:
            types.append(typ)
            typed += count
        else:
            untyped += count
    return (",".join(types) or None), (typed or untyped)


def node_state(node: Any, gpus_in_use: int = 0) -> NodeState:
    """A pyslurm ``Node`` as a ``NodeState``; ``gpus_in_use`` from :func:`gpus_in_use`."""
    gpu_type, gpus = _gpu_count(getattr(node, "configured_gres", {}) or {})
    features = getattr(node, "active_features", None) or getattr(node, "available_features", [])
    return NodeState(
        name=str(node.name), partitions=tuple(getattr(node, "partitions", []) or ()),
        features=tuple(features or ()), state=str(getattr(node, "state", "unknown")).lower(),
        gpu_type=gpu_type, gpus=gpus, gpus_allocated=gpus_in_use,
        cpus=int(getattr(node, "total_cpus", 0) or 0),
        cpus_allocated=int(getattr(node, "allocated_cpus", 0) or 0))


def gpus_in_use(jobs: Any) -> dict[str, int]:
    """GPUs held per node by the running jobs (``Job.get_resource_layout_per_node()``)."""
    used: dict[str, int] = {}
    for job in jobs:
        if str(getattr(job, "state", "")) not in ("RUNNING", "COMPLETING", "SUSPENDED"):
            continue
        for node, layout in (job.get_resource_layout_per_node() or {}).items():
            used[node] = used.get(node, 0) + _gpu_count(layout.get("gres") or {})[1]
    return used


def _minutes(time: str) -> int | str:
    seconds = parse_time_limit(time)
    return "UNLIMITED" if seconds is None else max(1, -(-int(seconds) // 60))


def _signal(spec: str) -> dict[str, Any]:
    """``[B|R|RB:]SIG[@SECS]`` as the dict pyslurm takes (its own string parser fails on names)."""
    problem = signal_spec_problem(spec)
    if problem is not None:
        raise InvalidInput(f"--signal {spec!r}: {problem}")
    flags, _, rest = spec.rpartition(":")
    sig, _, secs = rest.partition("@")
    out: dict[str, Any] = {"signal": signal_number(sig), "time": int(secs) if secs else 60}
    if "B" in flags.upper():
        out["batch_only"] = True
    if "R" in flags.upper():
        out["allow_reservation_overlap"] = True
    return out


def _gres(gpu_type: str | None, count: int) -> str:
    return f"gpu:{gpu_type}:{count}" if gpu_type else f"gpu:{count}"


def description_fields(o: JobOptions, *, script: Path, workdir: Path) -> dict[str, Any]:
    """``JobSubmitDescription`` keyword arguments for a job with options ``o``; every option
    the table knows has its field here, anything else (``extra_args``) is refused by name."""
    if o.extra_args:
        raise InvalidInput(f"the pyslurm backend cannot pass {' '.join(o.extra_args)} on to "
                           "Slurm (only options hpcenv knows); drop it, or use "
                           "'scheduler: slurm-cli' in the site config")
    run_dir = Path(workdir, o.chdir) if o.chdir else Path(workdir)

    def out_path(pattern: str | None) -> str | None:
        # sbatch resolves relative log paths against the job's working directory too.
        return str(Path(run_dir, pattern)) if pattern else None

    kw: dict[str, Any] = {
        "script": str(script), "working_directory": str(run_dir),
        # What sbatch hands a job: this environment (--export=ALL) and where it was submitted.
        "environment": {**os.environ, "SLURM_SUBMIT_DIR": str(workdir),
                        "SLURM_SUBMIT_HOST": socket.gethostname()},
        "name": o.job_name or script.name, "partitions": o.partition,
        "constraints": o.constraint, "account": o.account, "qos": o.qos,
        "array": o.array, "dependencies": o.dependency, "comment": o.comment,
        "standard_output": out_path(o.output or ("slurm-%A_%a.out" if o.array else "slurm-%j.out")),
        "standard_error": out_path(o.error),
        "log_files_open_mode": o.open_mode, "is_requeueable": o.requeue or None,
        "mail_types": o.mail_type, "mail_user": o.mail_user,
        "cpus_per_task": o.cpus_per_task, "ntasks_per_node": o.ntasks_per_node,
        "memory_per_node": o.mem, "nodes": o.nodes,
        # sbatch's arithmetic; pyslurm would submit 1 task whatever the nodes.
        "ntasks": o.tasks if (o.ntasks or o.ntasks_per_node) else None,
        # pyslurm has no gpus_per_node: a typed GPU request per node is gres_per_node.
        "gres_per_node": _gres(o.gpu_type, o.gpus_per_node) if o.gpus_per_node else None,
        "gpus": (f"{o.gpu_type}:{o.gpus}" if o.gpu_type else o.gpus) if o.gpus else None,
        "cpus_per_gpu": o.cpus_per_gpu,
        "resource_sharing": "exclusive" if o.exclusive else None,
        "time_limit": _minutes(o.time) if o.time else None,
        "signal": _signal(o.signal if ":" in o.signal else f"B:{o.signal}") if o.signal else None,
    }
    if o.nodes and not o.ntasks and not o.ntasks_per_node:
        kw["ntasks"] = min_nodes(o.nodes)  # sbatch: one task per node
    return {k: v for k, v in kw.items() if v is not None}


class PyslurmScheduler:
    """The scheduler protocol on pyslurm.  Build it with ``create()``.  ``history`` looks up
    jobs slurmctld has purged (the CLI backend's job completion log reader)."""

    kind = "pyslurm"
    capabilities: Capabilities = SLURM_CAPABILITIES

    def __init__(self, module: Any, history: SlurmCLI | None = None) -> None:
        self._pyslurm = module
        self._history = history or SlurmCLI(timeout=60.0)

    @classmethod
    def create(cls, history: SlurmCLI | None = None) -> PyslurmScheduler | None:
        """The backend, or None when pyslurm does not import (missing, libslurm mismatch, or no
        Slurm configuration to be found)."""
        if "pyslurm" not in sys.modules and import_problem() is not None:
            return None
        try:
            import pyslurm
        except Exception:  # noqa: BLE001 - an ABI mismatch surfaces as ImportError or OSError
            return None
        return cls(pyslurm, history)

    @staticmethod
    def _job_id(job_id: str) -> int:
        if not str(job_id).isdigit():
            raise InvalidInput(f"invalid Slurm job id {job_id!r}: expected digits, e.g. 1234")
        return int(job_id)

    def submit(self, script_path: Path, *, workdir: Path,
               options: JobOptions | None = None) -> str:
        ps = self._pyslurm
        script_path = Path(script_path).absolute()
        if options is None:
            try:
                options = from_script(script_path.read_text())
            except OSError as exc:
                raise InvalidInput(f"cannot read job script {script_path}: {exc.strerror}") from None
        kw = description_fields(options, script=script_path, workdir=Path(workdir).absolute())
        try:
            # libslurm also logs a refusal on stderr ("python: error: invalid partition ..."):
            # hpcenv says it once, in its own words.
            with _libslurm_stderr_silenced():
                return str(ps.JobSubmitDescription(**kw).submit())
        except ps.RPCError as exc:
            raise _rejection(exc) from None
        except ValueError as exc:  # pyslurm's own validation of the options
            raise InvalidInput(f"{script_path}: {exc}") from None

    def status(self, job_id: str) -> JobInfo:
        info = self.statuses([job_id]).get(str(job_id).strip())
        if info is None:
            raise NotFound(f"Slurm job {job_id} is unknown: not in the queue and not in the job "
                           "completion log; check the id")
        return info

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        ps = self._pyslurm
        wanted: list[tuple[str, int, str]] = []
        for job_id in job_ids:
            job_id = str(job_id).strip()
            array_id, _, task = job_id.partition("_")
            number = self._job_id(array_id)
            if task and not task.isdigit():
                raise InvalidInput(f"invalid Slurm job id {job_id!r}: expected e.g. 1234 or 1234_5")
            wanted.append((job_id, number, task))
        try:
            loaded = list(ps.Jobs.load().values()) if wanted else []
        except ps.RPCError as exc:
            raise _rpc_error(f"could not report job {wanted[0][0]}", exc) from None
        queue: dict[int, list[Any]] = {}
        for j in loaded:
            for key in dict.fromkeys((j.id, getattr(j, "array_id", None))):
                if key is not None:
                    queue.setdefault(key, []).append(j)
        found: dict[str, JobInfo] = {}
        for job_id, number, task in wanted:
            jobs = queue.get(number, [])
            infos = [job_info(j) for j in jobs]
            if task:
                info = next((i for i in infos if i.job_id == job_id), None)
            elif len(infos) == 1 and not getattr(jobs[0], "array_id", None):
                info = infos[0]
            else:
                info = array_info(job_id, infos) if infos else None
            if info is not None:
                found[job_id] = info
        # Purged from slurmctld: only the job completion log still knows them.
        rest = [job_id for job_id, _, _ in wanted if job_id not in found]
        return found | (self._history.completed_jobs(rest) if rest else {})

    def jobs(self, user: str | None = None, *, all_users: bool = False) -> list[JobInfo]:
        ps = self._pyslurm
        user = user or current_user()
        try:
            jobs = ps.Jobs.load()
        except ps.RPCError as exc:
            raise _rpc_error("could not list jobs", exc) from None
        return [job_info(j) for j in jobs.values() if all_users or j.user_name == user]

    def cancel(self, job_id: str, signal: str | int | None = None) -> None:
        ps = self._pyslurm
        info = self.status(job_id)  # NotFound for unknown ids
        if info.finished:
            return
        number = self._job_id(info.job_id.split("_", 1)[0])
        if "_" in info.job_id:  # one task of an array: its own id, not the array's
            number = next((j.id for j in ps.Jobs.load().values()
                           if job_info(j).job_id == info.job_id), number)
        try:
            job = ps.Job(number)
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
            used = gpus_in_use(ps.Jobs.load().values())
            return [node_state(n, used.get(n.name, 0)) for n in ps.Nodes.load().values()]
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
