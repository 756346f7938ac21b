"""The scheduler protocol and the records every backend returns.

A backend submits a rendered job script (all options live in its ``#SBATCH`` lines), reports job
and cluster state, and cancels jobs.  Backends: the Slurm command line (``slurm_cli``), pyslurm
(``pyslurm_backend``) and the local executor (``local``), chosen by ``hpcenv.scheduler.get_scheduler``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from hpcenv.errors import HpcenvError

if TYPE_CHECKING:
    from hpcenv.scheduler.job_options import JobOptions


class SchedulerUnreachable(HpcenvError):
    """The scheduler's controller did not answer: nothing can be submitted or looked up."""


# Slurm's job states that end a job: the base states after JOB_END in slurm.h plus the flags a
# job ends with (REVOKED: a federated sibling ran it; SPECIAL_EXIT: held after its epilog asked
# for it).  Every other name (PENDING, RUNNING, SUSPENDED and flags such as COMPLETING,
# CONFIGURING, REQUEUED, RESIZING, STOPPED, SIGNALING, STAGE_OUT) is a job not done yet.  This is
# the only list: every backend decides "finished" with it (JobInfo.finished).
FINISHED_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
    "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
})


def is_finished(state: str, source: str = "queue") -> bool:
    """Whether a job in ``state`` has ended.  A record from the job completion log is a job that
    ended even when its state could not be read (``UNKNOWN``): waiting on it would never end."""
    return source == "jobcomp" or state in FINISHED_STATES


@dataclass(frozen=True)
class JobInfo:
    """One job as the scheduler sees it.  ``exit_code`` is the script's exit status once the job
    finished (``None`` before); ``signal`` the signal that killed it, if any."""

    job_id: str
    name: str
    state: str                       # Slurm's state names: PENDING, RUNNING, COMPLETED, ...
    reason: str | None = None        # why it is pending or failed (Slurm's Reason)
    exit_code: int | None = None
    signal: int | None = None
    node: str | None = None          # node list as Slurm prints it
    elapsed: float | None = None     # seconds run so far (or in total)
    partition: str | None = None
    stdout: Path | None = None
    stderr: Path | None = None
    workdir: Path | None = None
    submit_time: float | None = None  # Unix time
    start_time: float | None = None
    end_time: float | None = None
    user: str | None = None
    comment: str | None = None
    constraint: str | None = None
    gres: str | None = None          # generic resources asked for, e.g. gres:gpu:a100:1 (per node)
    source: str = "queue"            # where the record came from: queue, jobcomp, local
    tasks: tuple[str, ...] = ()      # a job array as a whole: its tasks' ids ("12_0", ...)

    @property
    def finished(self) -> bool:
        return is_finished(self.state, self.source)

    def to_dict(self) -> dict[str, object]:
        data = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in self.__dict__.items()}
        data["finished"] = self.finished
        return data


@dataclass(frozen=True)
class NodeState:
    """One compute node: where it belongs, what it offers, what is in use."""

    name: str
    partitions: tuple[str, ...]
    features: tuple[str, ...]
    state: str                       # lower-case Slurm state: idle, mixed, allocated, down, ...
    gpu_type: str | None = None
    gpus: int = 0
    gpus_allocated: int = 0
    cpus: int = 0
    cpus_allocated: int = 0

    @property
    def gpus_free(self) -> int:
        return max(self.gpus - self.gpus_allocated, 0) if self.available else 0

    @property
    def available(self) -> bool:
        """Accepts new work (not down, drained, failing or powered off)."""
        bad = ("down", "drain", "fail", "maint", "power", "unknown", "not_responding", "invalid",
               "future", "reboot")
        return not any(word in self.state for word in bad)

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = dict(self.__dict__)
        data["gpus_free"] = self.gpus_free
        return data


@dataclass(frozen=True)
class PartitionState:
    """One partition with its nodes' current state."""

    name: str
    nodes: tuple[NodeState, ...] = field(default=())
    default: bool = False
    state: str = "up"

    @property
    def gpu_types(self) -> tuple[str, ...]:
        return tuple(sorted({n.gpu_type for n in self.nodes if n.gpu_type}))

    @property
    def gpus_total(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def gpus_free(self) -> int:
        return sum(n.gpus_free for n in self.nodes)

    @property
    def features(self) -> tuple[str, ...]:
        """Every feature any node of the partition offers (nodes may differ)."""
        return tuple(sorted({f for n in self.nodes for f in n.features}))

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "default": self.default, "state": self.state,
                "gpu_types": list(self.gpu_types), "gpus_total": self.gpus_total,
                "gpus_free": self.gpus_free, "features": list(self.features),
                "nodes": [n.to_dict() for n in self.nodes]}


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared by each backend so callers ask it instead of its kind."""

    arrays: bool               # --array
    dependencies: bool         # --dependency
    time_limit_signals: bool   # --signal SIG@SECS before the time limit
    partitions: bool           # real partitions with live node state (features, free GPUs)
    gpus: bool                 # GPU allocation
    multi_node: bool           # jobs spanning several nodes (srun)
    history: bool              # finished jobs stay visible after the queue forgets them


SLURM_CAPABILITIES = Capabilities(arrays=True, dependencies=True, time_limit_signals=True,
                                  partitions=True, gpus=True, multi_node=True, history=True)


class JobStatusSource(Protocol):
    """What waiting for a job needs: its state on demand (a Scheduler, or a remote login
    node's ``hpcenv status``)."""

    def status(self, job_id: str) -> JobInfo:
        """The job's state now; raises NotFound for an unknown id."""
        ...


@runtime_checkable
class Scheduler(Protocol):
    """What hpcenv needs from a batch system."""

    kind: str                  # "slurm-cli", "pyslurm" or "local"
    capabilities: Capabilities

    def submit(self, script_path: Path, *, workdir: Path,
               options: JobOptions | None = None) -> str:
        """Submit a job script; return its job id.  Raises HpcenvError when rejected.

        ``options`` are the job's options as hpcenv rendered them into the script's ``#SBATCH``
        lines; a backend that cannot hand the script's header to Slurm (pyslurm) or runs it
        itself (local) uses them instead of reading the header back.  Without them it reads the
        header (:func:`hpcenv.scheduler.job_options.from_script`)."""
        ...

    def status(self, job_id: str) -> JobInfo:
        """State of one job, also after it finished.  Raises NotFound for unknown ids."""
        ...

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """:meth:`status` of many jobs, by id, in a few queries whatever their number; ids the
        scheduler does not know are left out."""
        ...

    def jobs(self, user: str | None = None, *, all_users: bool = False) -> list[JobInfo]:
        """Queued and running jobs of ``user`` (default: the current user), or with
        ``all_users`` every user's the scheduler shows (which builds jobs run in:
        :mod:`hpcenv.scheduler.build_use`)."""
        ...

    def cancel(self, job_id: str, signal: str | int | None = None) -> None:
        """Cancel a job (TERM to every process of it, KILL after a grace period), or with
        ``signal`` only send that signal to the job's batch shell, as ``scancel --batch
        --signal`` does: hpcenv's job scripts make that shell the program or forward to it."""
        ...

    def partitions(self) -> list[PartitionState]:
        ...

    def nodes(self) -> list[NodeState]:
        ...


# `%`, an optional width, then one character (none at the end of the pattern).
_OUTPUT_PLACEHOLDER = re.compile(r"%(\d*)(.?)", re.DOTALL)


def expand_output_pattern(pattern: str, *, job_id: str, name: str, user: str | None = None,
                          node: str | None = None, array_job_id: str | None = None,
                          array_task_id: str | None = None) -> str:
    """Expand the ``sbatch --output`` placeholders hpcenv's scripts use (%j %x %u %N %A %a %%).
    For an array task ``job_id`` is the task's own id, ``array_job_id`` the array's."""
    values = {"j": job_id, "A": array_job_id or job_id, "x": name, "u": user or "",
              "N": node or "", "a": array_task_id or "4294967294", "%": "%"}

    def expand(match: re.Match[str]) -> str:
        # Slurm allows a zero-padding width between % and the letter (%5j); honour it.
        width, letter = match.group(1), match.group(2)
        if letter not in values:
            return match.group(0)
        value = values[letter]
        return value.zfill(int(width or 0)) if letter in "jA" else value

    return _OUTPUT_PLACEHOLDER.sub(expand, pattern)
