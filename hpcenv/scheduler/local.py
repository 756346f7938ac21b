"""The local executor: runs Slurm job scripts on this machine with bash, no Slurm needed.

Each job gets an id from a lock-protected counter and a JSON record under
``<state_dir>/local-jobs/`` (written atomically).  Submitting copies the script (as sbatch does),
takes the job's options (``--job-name``, ``--output``, ``--error``, ``--chdir``,
``--cpus-per-task``, ``--time``, ``--comment``) from the caller, or from the script's ``#SBATCH`` lines for a
script hpcenv did not render, and starts a small supervisor process in a new
session, so the job survives the submitting process.  The supervisor runs ``bash SCRIPT`` in its
own process group with the SLURM_* variables a job script reads, waits for it and records the
exit code.  ``cancel`` sends SIGTERM (then SIGKILL after ``kill_wait`` seconds) to the job's
process group; with a signal it only delivers that signal to the batch shell (the script's bash),
as ``scancel --batch --signal`` does.
A ``--time`` limit is enforced the same way and ends the job as TIMEOUT.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal as _signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.fsutil import (
    atomic_write_json,
    atomic_write_text,
    current_user,
    process_start_time,
)
from hpcenv.scheduler.base import (
    Capabilities,
    JobInfo,
    NodeState,
    PartitionState,
    expand_output_pattern,
    is_finished,
)
from hpcenv.scheduler.job_options import JobOptions, from_script
from hpcenv.scheduler.options import parse_time_limit, signal_number, time_problem

NODE_NAME = "local"
KILL_WAIT = 5.0          # default seconds between SIGTERM and SIGKILL, like Slurm's KillWait
_POLL = 0.1              # how often the supervisor looks for exits, cancels and time limits

LOCAL_CAPABILITIES = Capabilities(arrays=False, dependencies=False, time_limit_signals=False,
                                  partitions=False, gpus=False, multi_node=False, history=True)


@dataclass
class LocalJob:
    """The on-disk record of one local job."""

    job_id: str
    name: str
    state: str
    script: str                     # the copy that runs
    workdir: str
    stdout: str
    stderr: str
    user: str
    submit_time: float
    time_limit: float | None = None  # seconds
    env: dict[str, str] = field(default_factory=dict)  # the SLURM_* variables set for the job
    start_time: float | None = None
    end_time: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None
    pgid: int | None = None
    supervisor_pid: int | None = None
    supervisor_start: int | None = None  # /proc start ticks, to tell a reused pid apart
    cancel_requested: float | None = None
    kill_wait: float = KILL_WAIT
    comment: str | None = None      # --comment: names the env build the job runs in


def _become_subreaper() -> None:
    """Orphans of the job become our children (not init's), so the supervisor reaps them at
    once and a finished job's process group empties without waiting for init."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap(child_pid: int) -> int | None:
    """Reap every exited child; return the job script's exit code (negative: signal) if it was
    among them."""
    result = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return result
        if pid == 0:
            return result
        if pid == child_pid:
            result = os.waitstatus_to_exitcode(status)


def _signal_group(pgid: int, *signals: int) -> None:
    for sig in signals:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)


class LocalExecutor:
    """Scheduler protocol on this machine; ``state_dir`` holds the job records."""

    kind = "local"
    capabilities: Capabilities = LOCAL_CAPABILITIES

    def __init__(self, state_dir: Path, *, kill_wait: float = KILL_WAIT) -> None:
        self.root = Path(state_dir) / "local-jobs"
        self.kill_wait = kill_wait

    # -- records ------------------------------------------------------------------------------
    def _record_path(self, job_id: str) -> Path:
        if not job_id.isdigit():
            raise InvalidInput(f"invalid local job id {job_id!r}: expected digits, e.g. 12")
        return self.root / f"{int(job_id)}.json"

    @contextlib.contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{name}.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load(self, job_id: str) -> LocalJob:
        path = self._record_path(job_id)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NotFound(f"local job {job_id} is unknown (no record in {self.root}); "
                           "check the id with 'hpcenv jobs'") from None
        except json.JSONDecodeError as exc:
            raise HpcenvError(f"{path}: corrupt job record ({exc}); remove the file") from None
        return LocalJob(**data)

    def _save(self, job: LocalJob) -> None:
        atomic_write_json(self._record_path(job.job_id), asdict(job), mode=0o600)

    def _update(self, job_id: str, **changes: object) -> LocalJob:
        with self._locked(f"job-{job_id}"):
            job = self._load(job_id)
            for key, value in changes.items():
                setattr(job, key, value)
            self._save(job)
            return job

    def _next_id(self) -> str:
        with self._locked("counter"):
            counter = self.root / "counter"
            try:
                last = int(counter.read_text().strip() or 0)
            except FileNotFoundError:
                last = 0
            # Atomic: a counter left empty by a crash would hand out used ids again.
            atomic_write_text(counter, f"{last + 1}\n", mode=0o600)
            return str(last + 1)

    # -- the protocol ---------------------------------------------------------------------------
    def submit(self, script_path: Path, *, workdir: Path,
               options: JobOptions | None = None) -> str:
        script_path = Path(script_path)
        try:
            # Bytes: a text read would turn every "\r" (in a quoted argument, say) into "\n".
            data = script_path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read job script {script_path}: {exc.strerror}") from None
        text = data.decode("utf-8", errors="surrogateescape")
        opts = options if options is not None else from_script(text)
        # Running these as a plain job would silently do something else than asked.
        for unsupported, value, instead in (
                ("array", opts.array, "loop over the tasks in the script"),
                ("dependency", opts.dependency, "submit the job once the other one ended")):
            if value:
                raise InvalidInput(f"the local executor does not support --{unsupported} "
                                   f"({value}); use a Slurm site or {instead}")
        time_limit = None
        if opts.time:
            problem = time_problem(opts.time)
            if problem is not None:
                raise InvalidInput(f"{script_path}: --time {opts.time!r}: {problem}")
            time_limit = parse_time_limit(opts.time)
        cpus = str(opts.cpus_per_task) if opts.cpus_per_task else ""

        job_id = self._next_id()
        name = opts.job_name or script_path.name
        user = current_user()
        submit_dir = Path(workdir).resolve()
        run_dir = Path(submit_dir, opts.chdir) if opts.chdir else submit_dir
        if not run_dir.is_dir():
            raise InvalidInput(f"{script_path}: working directory {run_dir} does not exist")

        def out_path(pattern: str) -> str:
            expanded = expand_output_pattern(pattern, job_id=job_id, name=name, user=user,
                                             node=NODE_NAME)
            return str(Path(run_dir, expanded))

        stdout = out_path(opts.output or "slurm-%j.out")
        stderr = out_path(opts.error) if opts.error else stdout
        env = {
            "SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_JOB_NAME": name,
            "SLURM_SUBMIT_DIR": str(submit_dir), "SLURM_SUBMIT_HOST": socket.gethostname(),
            "SLURMD_NODENAME": NODE_NAME, "SLURM_JOB_NODELIST": NODE_NAME,
            "SLURM_NODELIST": NODE_NAME, "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
            "SLURM_NTASKS": "1", "SLURM_JOB_PARTITION": "local",
            "SLURM_CLUSTER_NAME": "local", "SLURM_JOB_USER": user,
            "SLURM_JOB_UID": str(os.getuid()), "SLURM_JOB_CPUS_PER_NODE": cpus or "1",
        }
        if cpus:
            env["SLURM_CPUS_PER_TASK"] = cpus

        self.root.mkdir(parents=True, exist_ok=True)
        copy = self.root / f"{job_id}.sh"
        copy.write_bytes(data)  # as sbatch keeps it: byte for byte
        job = LocalJob(job_id=job_id, name=name, state="PENDING", script=str(copy),
                       workdir=str(run_dir), stdout=stdout, stderr=stderr, user=user,
                       submit_time=time.time(), time_limit=time_limit, env=env,
                       kill_wait=self.kill_wait, comment=opts.comment)
        self._save(job)
        log = open(self.root / f"{job_id}.supervisor.log", "ab")
        try:
            # A new session: the job outlives the submitting process and its terminal.
            proc = subprocess.Popen(
                [sys.executable, "-m", "hpcenv.scheduler.local", "--supervise",
                 str(self.root.parent), job_id],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                cwd=run_dir)
        finally:
            log.close()
        self._update(job_id, supervisor_pid=proc.pid, supervisor_start=process_start_time(proc.pid))
        return job_id

    def status(self, job_id: str) -> JobInfo:
        job = self._load(str(job_id))
        if not is_finished(job.state) and not self._supervisor_alive(job):
            # Re-read under the lock: the supervisor may have finished in between.
            with self._locked(f"job-{job.job_id}"):
                job = self._load(job.job_id)
                if not is_finished(job.state):
                    job.state = "FAILED"
                    job.reason = ("its supervisor process vanished; see "
                                  f"{self.root / (job.job_id + '.supervisor.log')}")
                    job.end_time = job.end_time or time.time()
                    self._save(job)
        return self._info(job)

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        found = {}
        for job_id in job_ids:
            try:
                found[job_id] = self.status(job_id)
            except NotFound:
                continue
        return found

    def jobs(self, user: str | None = None, *, all_users: bool = False) -> list[JobInfo]:
        user = user or current_user()
        if not self.root.is_dir():
            return []
        ids = sorted(int(p.stem) for p in self.root.glob("*.json") if p.stem.isdigit())
        out = []
        for job_id in ids:
            try:
                info = self.status(str(job_id))
            except (NotFound, HpcenvError):
                continue  # removed or being written right now
            if all_users or info.user == user:
                out.append(info)
        return out

    def cancel(self, job_id: str, signal: str | int | None = None) -> None:
        sig = signal_number(signal) if signal is not None else None
        job_id = str(job_id)
        with self._locked(f"job-{job_id}"):
            job = self._load(job_id)
            if is_finished(job.state):
                return
            if sig is None and job.cancel_requested is None:
                job.cancel_requested = time.time()
                self._save(job)
            pgid = job.pgid
        # A plain cancel is carried out by the supervisor (TERM, then KILL after kill_wait);
        # a pending job is never started.  A signal goes to the batch shell alone (its pid is
        # the group's id), as with the Slurm backends.
        if sig is not None and pgid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pgid, sig)

    def nodes(self) -> list[NodeState]:
        return [NodeState(name=NODE_NAME, partitions=("local",), features=(), state="idle",
                          cpus=os.cpu_count() or 1)]

    def partitions(self) -> list[PartitionState]:
        return [PartitionState(name="local", nodes=tuple(self.nodes()), default=True)]

    # -- helpers ---------------------------------------------------------------------------------
    @staticmethod
    def _supervisor_alive(job: LocalJob) -> bool:
        if job.supervisor_pid is None:
            return time.time() - job.submit_time < 30  # between record and Popen
        start = process_start_time(job.supervisor_pid)
        return start is not None and start == job.supervisor_start

    @staticmethod
    def _info(job: LocalJob) -> JobInfo:
        elapsed = None
        if job.start_time is not None:
            elapsed = (job.end_time or time.time()) - job.start_time
        return JobInfo(
            job_id=job.job_id, name=job.name, state=job.state, reason=job.reason,
            exit_code=job.exit_code, signal=job.signal,
            node=NODE_NAME if job.start_time else None, elapsed=elapsed, partition="local",
            stdout=Path(job.stdout), stderr=Path(job.stderr), workdir=Path(job.workdir),
            submit_time=job.submit_time, start_time=job.start_time, end_time=job.end_time,
            user=job.user, comment=job.comment, source="local")

    # -- the supervisor (runs in its own process) ------------------------------------------------
    def supervise(self, job_id: str) -> None:
        with self._locked(f"job-{job_id}"):
            job = self._load(job_id)
            if job.cancel_requested is not None:
                job.state, job.end_time, job.reason = "CANCELLED", time.time(), "cancelled while pending"
                self._save(job)
                return
            env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
            env.update(job.env)
            start = time.time()
            if job.time_limit is not None:
                env["SLURM_JOB_END_TIME"] = str(int(start + job.time_limit))
            Path(job.stdout).parent.mkdir(parents=True, exist_ok=True)
            Path(job.stderr).parent.mkdir(parents=True, exist_ok=True)
            with open(job.stdout, "ab") as out:
                err = out if job.stderr == job.stdout else open(job.stderr, "ab")
                try:
                    child = subprocess.Popen(["bash", job.script], cwd=job.workdir, env=env,
                                             stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                             start_new_session=True)
                finally:
                    if err is not out:
                        err.close()
            job.state, job.start_time, job.pgid = "RUNNING", start, child.pid
            self._save(job)

        _become_subreaper()
        term_sent: float | None = None
        timed_out = False
        rc: int | None = None
        while rc is None:
            rc = _reap(child.pid)
            if rc is not None:
                break
            now = time.time()
            if term_sent is None:
                cancelled = self._load(job_id).cancel_requested is not None
                if cancelled or (job.time_limit is not None and now - start > job.time_limit):
                    timed_out = not cancelled
                    term_sent = now
                    _signal_group(child.pid, _signal.SIGCONT, _signal.SIGTERM)
            elif now - term_sent > job.kill_wait:
                _signal_group(child.pid, _signal.SIGKILL)
            time.sleep(_POLL)
        child.returncode = rc  # reaped by _reap; keeps Popen from waiting on it again

        # Whatever the script left behind in its group goes with it, as with Slurm's proctrack;
        # after a TERM the rest of the group gets until kill_wait to finish its handlers.
        while term_sent is not None and time.time() - term_sent < job.kill_wait:
            _reap(child.pid)
            try:
                os.killpg(child.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(_POLL / 5)
        _signal_group(child.pid, _signal.SIGKILL)
        _reap(child.pid)
        with self._locked(f"job-{job_id}"):
            job = self._load(job_id)
            job.end_time = time.time()
            if rc < 0:
                job.exit_code, job.signal = 0, -rc
            else:
                job.exit_code, job.signal = rc, None
            if timed_out:
                job.state, job.reason = "TIMEOUT", "TimeLimit"
            elif job.cancel_requested is not None:
                job.state = "CANCELLED"
            elif rc == 0:
                job.state = "COMPLETED"
            else:
                job.state, job.reason = "FAILED", "NonZeroExitCode" if rc > 0 else "Signal"
            self._save(job)


def _main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--supervise":
        LocalExecutor(Path(argv[1])).supervise(argv[2])
        return 0
    print("usage: python -m hpcenv.scheduler.local --supervise STATE_DIR JOB_ID", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
