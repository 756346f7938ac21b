"""Job control on top of a scheduler backend: submission records, status, logs, wait, cancel.

The scheduler knows a job's state; only hpcenv knows which env and which routing decision a job
was submitted with.  ``submit`` therefore writes a small record per job under
``<state_dir>/submissions/<scheduler>-<job id>.json``, which ``hpcenv jobs`` and ``status`` join
with what the scheduler reports, and ``logs`` uses when the scheduler has forgotten the job's
output paths (a purged Slurm job).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal as _signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.fsutil import atomic_write_json
from hpcenv.scheduler.base import (
    JobInfo,
    JobStatusSource,
    Scheduler,
    SchedulerUnreachable,
    expand_output_pattern,
)
from hpcenv.scheduler.options import signal_number

# Polling for --wait and logs -f: quick at first (short jobs end in about a second on an idle
# cluster), then backing off so a day-long job costs a query every POLL_MAX seconds.
POLL_FIRST = 0.5
POLL_FACTOR = 1.5
POLL_MAX = 10.0
# How long --wait and logs -f keep asking a controller that does not answer.  Restarting
# slurmctld (an upgrade, a failover, a config change) takes seconds to minutes; the job runs on
# meanwhile, so giving up early would report a failure that did not happen.
OUTAGE_LIMIT = 900.0


@dataclass(frozen=True)
class SubmissionRecord:
    """What hpcenv submitted: the env, the routing decision and where the output goes."""

    job_id: str
    scheduler: str                   # job_namespace(): slurm or local (whose job ids)
    env: str
    env_version: int | None
    prefix: str
    partition: str | None
    constraint: str | None
    gpus: int
    reason: str
    script: str                      # the rendered job script, kept
    workdir: str
    job_name: str
    output: str                      # --output pattern as rendered (%j etc. unexpanded)
    error: str | None
    command: list[str] = field(default_factory=list)
    launcher: str = "activate"
    submitted: float = 0.0           # Unix time
    user: str | None = None
    backend: str | None = None       # the Scheduler.kind that submitted it: slurm-cli, pyslurm, local
    options: dict[str, Any] = field(default_factory=dict)  # JobOptions.to_dict() as rendered
    # partition, constraint, gres and comment as the scheduler reported them after the submit
    # (read_back), not as hpcenv meant them; see hpcenv.jobs.submit._asked_of.
    gres: str | None = None
    comment: str | None = None       # carries the env build the job runs in (build_use)
    read_back: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def job_namespace(scheduler: Scheduler | str) -> str:
    """Whose job ids these are: ``local`` or ``slurm``.  The Slurm CLI and pyslurm backends
    share one id space, so a record written through one is found through the other."""
    kind = scheduler if isinstance(scheduler, str) else scheduler.kind
    return "local" if kind == "local" else "slurm"


def submissions_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "submissions"


def _record_path(state_dir: Path, scheduler: str, job_id: str) -> Path:
    return submissions_dir(state_dir) / _record_name(job_namespace(scheduler), job_id)


def _record_name(namespace: str, job_id: str) -> str:
    if not job_id or not all(c.isalnum() or c in "_.+-" for c in job_id):
        raise InvalidInput(f"job id {job_id!r}: expected something like 1234 or 1234_5")
    return f"{namespace}-{job_id}.json"


def save_submission(state_dir: Path, record: SubmissionRecord) -> Path:
    """Write the record atomically and durably: a reader (or a crash) never leaves half of it.
    Private to the user (0600): it holds the job's command line."""
    path = _record_path(state_dir, record.scheduler, record.job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record.to_dict(), mode=0o600)
    return path


def load_submission(state_dir: Path, scheduler: str, job_id: str) -> SubmissionRecord | None:
    """The record of ``job_id`` (array tasks ``12_3`` fall back to the array's ``12``)."""
    for jid in dict.fromkeys((job_id, job_id.split("_", 1)[0])):
        record = _read_record(str(_record_path(state_dir, scheduler, jid)))
        if record is not None:
            return record
    return None


def _read_record(path: str) -> SubmissionRecord | None:
    """The record in ``path``, None when there is no such file."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise HpcenvError(f"{path}: unreadable submission record ({exc}); delete it") from None
    known = SubmissionRecord.__dataclass_fields__
    return SubmissionRecord(**{k: v for k, v in data.items() if k in known})


def list_submissions(state_dir: Path, scheduler: str) -> list[SubmissionRecord]:
    directory = str(submissions_dir(state_dir))
    namespace = job_namespace(scheduler)
    start = f"{namespace}-"
    try:
        with os.scandir(directory) as entries:
            names = [e.name for e in entries if e.name.startswith(start) and e.name.endswith(".json")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    # Plain string paths: thousands of records (`jobs -a`) must not cost a Path each.
    for name in names:
        _record_name(namespace, name[len(start):-len(".json")])  # a stray file's name is refused
        record = _read_record(os.path.join(directory, name))
        if record is not None:
            out.append(record)
    return sorted(out, key=lambda r: r.submitted)


@dataclass(frozen=True)
class JobView:
    """A job as the scheduler reports it, with hpcenv's submission record when there is one."""

    info: JobInfo
    record: SubmissionRecord | None

    def to_dict(self) -> dict[str, Any]:
        data = self.info.to_dict()
        data["exit_code"] = self.info.exit_code
        data["env"] = self.record.env if self.record else None
        data["env_version"] = self.record.env_version if self.record else None
        data["prefix"] = self.record.prefix if self.record else None
        data["partition"] = self.info.partition or (self.record.partition if self.record else None)
        data["constraint"] = self.info.constraint or (self.record.constraint if self.record else None)
        # A purged job's scheduler record has no paths: hpcenv's submission record does.
        stdout, stderr = log_paths(self)
        data["stdout"] = str(stdout) if stdout else None
        data["stderr"] = str(stderr) if stderr else data["stdout"]
        return data


def job_status(scheduler: Scheduler, state_dir: Path, job_id: str) -> JobView:
    """State, reason, exit code, node and elapsed time of one job, also after it finished."""
    return JobView(scheduler.status(job_id), load_submission(state_dir, scheduler.kind, job_id))


def my_jobs(scheduler: Scheduler, state_dir: Path, *, include_finished: bool = False) -> list[JobView]:
    """The user's queued and running jobs; with ``include_finished`` also every job hpcenv
    submitted that the scheduler still knows about (finished ones included)."""
    views = {info.job_id: JobView(info, load_submission(state_dir, scheduler.kind, info.job_id))
             for info in scheduler.jobs()}
    if include_finished:
        records = [r for r in list_submissions(state_dir, scheduler.kind) if r.job_id not in views]
        # One batched query for all of them: thousands of records must not cost a few
        # scheduler calls each.  Jobs purged from the scheduler and its accounting are left out.
        infos = scheduler.statuses([r.job_id for r in records]) if records else {}
        views.update((r.job_id, JobView(infos[r.job_id], r)) for r in records if r.job_id in infos)
    return sorted(views.values(), key=lambda v: _id_key(v.info.job_id))


def _id_key(job_id: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in job_id.replace("_", ".").split("."))


def job_exit_code(info: JobInfo) -> int:
    """The exit code a shell would report for the job: its own, 128+N when a signal ended it,
    1 for a job that failed without one (cancelled while pending, node failure, ...)."""
    if info.signal:
        return 128 + info.signal
    if info.exit_code is not None:
        return info.exit_code
    return 0 if info.state == "COMPLETED" else 1


class OutageRider:
    """Reads a job's status through controller outages: while the scheduler is unreachable it
    says so once (``note``), keeps retrying for up to ``limit`` seconds, and says when the
    controller answers again; past the limit the outage is an error naming the job."""

    def __init__(self, scheduler: JobStatusSource, *, note: Callable[[str], None] | None = None,
                 limit: float = OUTAGE_LIMIT, clock: Callable[[], float] = time.monotonic) -> None:
        self.scheduler = scheduler
        self.note = note or (lambda _message: None)
        self.limit = limit
        self.clock = clock
        self.since: float | None = None

    def status(self, job_id: str) -> JobInfo | None:
        """The job's state, or None while the controller does not answer."""
        try:
            info = self.scheduler.status(job_id)
        except SchedulerUnreachable as exc:
            now = self.clock()
            if self.since is None:
                self.since = now
                self.note(f"hpcenv: the scheduler does not answer ({exc}); job {job_id} runs on, "
                          f"retrying for up to {int(self.limit // 60)} min")
            elif now - self.since > self.limit:
                raise SchedulerUnreachable(
                    f"the scheduler has not answered for {int(now - self.since)} s while waiting "
                    f"for job {job_id}; the job may still be running: check it later with "
                    f"'hpcenv status {job_id}'") from exc
            return None
        if self.since is not None:
            self.note(f"hpcenv: the scheduler answers again after {int(self.clock() - self.since)}"
                      " s")
            self.since = None
        return info


def wait_for(scheduler: JobStatusSource, job_id: str, *,
             on_poll: Callable[[JobInfo], None] | None = None,
             on_outage: Callable[[str], None] | None = None,
             sleep: Callable[[float], None] = time.sleep,
             first: float = POLL_FIRST, factor: float = POLL_FACTOR, most: float = POLL_MAX,
             outage_limit: float = OUTAGE_LIMIT,
             clock: Callable[[], float] = time.monotonic) -> JobInfo:
    """Poll until the job finished, with backoff; ``on_poll`` sees every state read.

    The delay goes back to ``first`` whenever the state changes: a job that just started is the
    one most likely to finish soon.  No overall timeout, as with ``sbatch --wait``; an
    unreachable controller is ridden out for up to ``outage_limit`` seconds (``on_outage``
    hears when it goes away and comes back, see :class:`OutageRider`).
    """
    rider = OutageRider(scheduler, note=on_outage, limit=outage_limit, clock=clock)
    delay = first
    last: str | None = None
    while True:
        info = rider.status(job_id)
        if info is None:
            sleep(delay)
            delay = min(delay * factor, most)
            continue
        if on_poll is not None:
            on_poll(info)
        if info.finished:
            return info
        if info.state == "PENDING" and info.reason == "DependencyNeverSatisfied":
            # Slurm keeps such a job pending for ever (unless kill_invalid_depend is set).
            raise HpcenvError(f"job {job_id} can never start: a job it depends on did not end as "
                              f"required (DependencyNeverSatisfied); cancel it: hpcenv cancel {job_id}")
        if info.state != last:
            delay, last = first, info.state
        sleep(delay)
        delay = min(delay * factor, most)


def cancel_job(scheduler: Scheduler, job_id: str, signal: str | int | None = None) -> None:
    """Cancel the job, or with ``signal`` only send it that signal (validated first).

    A job that already ended is an error (exit 1) naming its state: "cancelled job 25" for a job
    that had completed would tell the user something that did not happen.  NotFound for ids the
    scheduler does not know."""
    if signal is not None:
        signal_number(signal)
    info = scheduler.status(job_id)
    if info.finished:
        nothing = "no signal sent" if signal is not None else "nothing to cancel"
        raise HpcenvError(f"job {job_id} already ended ({info.state}); {nothing}")
    scheduler.cancel(job_id, signal)


def log_paths(view: JobView) -> tuple[Path | None, Path | None]:
    """Where the job's stdout and stderr go (stderr None when it shares stdout)."""
    info, record = view.info, view.record
    out, err = info.stdout, info.stderr
    if out is None and record is not None and not info.tasks:
        array_id, _, task = info.job_id.partition("_")

        def expand(pattern: str) -> Path:
            # A task's own numeric id (%j) is unknown here; hpcenv's array default is %A_%a.
            path = Path(expand_output_pattern(pattern, job_id=array_id, name=record.job_name,
                                              user=record.user, node=info.node,
                                              array_job_id=array_id, array_task_id=task or None))
            return path if path.is_absolute() else Path(record.workdir) / path

        out = expand(record.output)
        err = expand(record.error) if record.error else None
    if err is not None and out is not None and Path(err) == Path(out):
        err = None
    return out, err


class _Tail:
    """Reads whatever was appended to a file since the last call (the file may appear late)."""

    def __init__(self, path: Path | None, sink: IO[bytes]) -> None:
        self.path, self.sink, self.offset = path, sink, 0

    def pump(self) -> int:
        if self.path is None:
            return 0
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return 0
        if data:
            self.offset += len(data)
            self.sink.write(data)
            self.sink.flush()
        return len(data)


def show_logs(scheduler: Scheduler, state_dir: Path, job_id: str, *, out: IO[bytes],
              err: IO[bytes], follow: bool = False, note: Callable[[str], None] | None = None,
              sleep: Callable[[float], None] = time.sleep,
              outage_limit: float = OUTAGE_LIMIT) -> JobView:
    """Copy the job's stdout/stderr files to ``out``/``err``; with ``follow``, keep copying what
    is appended until the job has finished (then one last read), riding out controller outages
    as ``--wait`` does.  ``note`` hears about a job that has written nothing yet, and about
    outages."""
    view = job_status(scheduler, state_dir, job_id)
    if view.info.tasks:
        raise InvalidInput(f"job {job_id} is a job array of {len(view.info.tasks)} tasks, each with "
                           f"its own output: give one, e.g. hpcenv logs {view.info.tasks[-1]}")
    stdout, stderr = log_paths(view)
    if stdout is None:
        raise HpcenvError(f"job {job_id}: the scheduler does not say where its output went and "
                          "hpcenv did not submit it; look for slurm-<id>.out in its work dir")
    tails = [_Tail(stdout, out), _Tail(stderr, err)]
    for tail in tails:
        tail.pump()
    if not follow:
        if not stdout.exists() and not view.info.finished and note is not None:
            note(f"hpcenv: job {job_id} is {view.info.state}; no output yet ({stdout})")
        return view
    rider = OutageRider(scheduler, note=note, limit=outage_limit)
    delay = POLL_FIRST
    while not view.info.finished:
        sleep(delay)
        got = sum(tail.pump() for tail in tails)
        delay = POLL_FIRST if got else min(delay * POLL_FACTOR, 2.0)
        info = rider.status(job_id)
        if info is not None:
            view = JobView(info, view.record)
    for tail in tails:
        tail.pump()  # whatever the job wrote between the last read and its end
    return view


def format_elapsed(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    text = f"{hours:d}:{minutes:02d}:{s:02d}"
    return f"{days}-{text}" if days else text


def status_line(info: JobInfo) -> str:
    """One line for the live ``--wait`` display and ``hpcenv status``."""
    parts = [f"job {info.job_id}", info.state]
    if info.reason and info.reason not in ("None", info.state):
        parts.append(f"({info.reason})")
    if info.node:
        parts.append(f"on {info.node}")
    if info.partition:
        parts.append(f"[{info.partition}]")
    if info.elapsed is not None:
        parts.append(format_elapsed(info.elapsed))
    if info.finished:
        parts.append(f"exit {job_exit_code(info)}")
    return " ".join(parts)


@contextlib.contextmanager
def live_status(stream: IO[str], *, enabled: bool) -> Iterator[Callable[[JobInfo], None]]:
    """A status display for ``--wait``: one line rewritten in place on a terminal, a new line per
    state change otherwise (logs and CI output stay readable)."""
    tty = enabled and stream.isatty()
    last: list[str] = [""]

    def show(info: JobInfo) -> None:
        if not enabled:
            return
        line = status_line(info)
        if tty:
            stream.write("\r\x1b[K" + line)
            stream.flush()
        elif info.state != last[0]:
            stream.write(f"hpcenv: {line}\n")
            stream.flush()
        last[0] = info.state

    try:
        yield show
    finally:
        if tty and last[0]:
            stream.write("\n")
            stream.flush()


def signal_display(sig: int | None) -> str:
    if not sig:
        return ""
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return str(sig)
