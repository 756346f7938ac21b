"""Slurm through its command-line tools (sbatch, scontrol, squeue, sinfo, sacct, scancel).

Tested on Slurm 22.05 (Debian's) and 25.11 (built from source).  Every query reads the one-line
``Key=value`` records of ``scontrol -o`` (jobs, nodes with ``-d`` for the GPUs in use,
partitions), which both releases print alike.  The ``--json`` output of squeue/sinfo/scontrol is
not used: it differs between releases, 22.05's ignores ``-j``/``-u``/``-p``/``-t``, and a Slurm
built without a JSON library (json-c is optional) has none at all ("could not find plugin for
application/json"), as the 25.11 build of the test cluster shows.  Parsers are unit-tested on
recorded output of both releases (``tests/data/slurm-*``).  Quirks worked around:

* ``scontrol show job -o ID`` has the output paths expanded, and says "Invalid job id
  specified" once the job is purged (``MinJobAge``).
* Without slurmdbd, ``sacct -c`` reads the job completion file (``JobCompType=jobcomp/filetxt``)
  and is the only record of a purged job.  That file is ``Key=value`` text, so a job name with a
  space garbles its record (sacct then prints an empty state): such jobs come back ``UNKNOWN``.
  ``sacct -c`` knows nothing of arrays ("Unknown type ArrayJobId"), but the file names each
  task's ``ArrayJobId``/``ArrayTaskId``: for a purged array (``status 12``, ``status 12_3``)
  hpcenv reads the file itself, from ``JobCompLoc`` (readable wherever ``sacct -c`` works).
* ``scancel`` exits 0 for unknown ids, and ``scancel --signal`` without ``--full`` or ``--batch``
  never reaches a batch script that has no job steps.  ``cancel`` signals with ``--batch``: the
  batch shell is the program under the activate launcher (it execs it) and forwards to it
  under conda-run, so the program gets the signal exactly once.  ``--full`` would signal every
  process of the job, and the conda-run program would get it twice (directly and forwarded).

Every call has a timeout; Slurm's own error text becomes a one-line ``HpcenvError``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
from hpcenv.scheduler.options import parse_time_limit, signal_name

if TYPE_CHECKING:
    from hpcenv.scheduler.job_options import JobOptions

_JOB_ID = re.compile(r"^\d+(_\d+)?$")
# `Key=value` pairs of scontrol's one-line output; keys look like `JobId`, `CPUs/Task`,
# `AllocNode:Sid`.  Values may contain spaces (job names, paths), so split at keys, not blanks.
_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Z][A-Za-z0-9_/:]*)=")
_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)")
_CLOCK = re.compile(r"(?:(\d+)-)?(\d\d):(\d\d):(\d\d)")
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_GRES_GPU = re.compile(r"gpu:(?:([^:,()]+):)?(\d+)")
_NULL = {"", "(null)", "None", "N/A", "Unknown", "n/a"}
_SACCT_FIELDS = ("JobIDRaw", "State", "ExitCode", "NodeList", "Elapsed", "Partition", "User",
                 "WorkDir", "Start", "End", "JobName")
_SEP = "\x1f"  # job names may hold "|", sacct's default delimiter
# Without -j, sacct lists only jobs since midnight: -S reaches back past any job completion log.
_SACCT_EPOCH = "1970-01-02"
# Up to this many ids are named with -j; more are filtered from one listing of every job.
_SACCT_BY_ID = 50


def parse_scontrol_line(line: str) -> dict[str, str]:
    """``"JobId=5 JobName=a b UserId=root(0)"`` -> ``{"JobId": "5", "JobName": "a b", ...}``."""
    matches = list(_SCONTROL_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        out[m.group(1)] = line[m.end():end].strip()
    return out


def parse_duration(text: str | None) -> float | None:
    """A duration Slurm prints (``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``) in seconds; None when
    it prints none (``N/A``, ``INVALID``, ``UNLIMITED``) or something hpcenv cannot read."""
    if not text or text in _NULL or text == "INVALID":
        return None
    # The common shape read directly: `jobs -a` reads one per finished job, and the full
    # reader checks each as the user's own --time.
    match = _CLOCK.fullmatch(text)
    if match is not None:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        if minutes <= 59 and seconds <= 59 and (hours <= 23 or match.group(1) is None):
            return float(days * 86400 + hours * 3600 + minutes * 60 + seconds)
    try:
        return parse_time_limit(text)
    except InvalidInput:
        return None


def parse_time(text: str | None) -> float | None:
    """Slurm's local ``YYYY-MM-DDTHH:MM:SS`` -> Unix time."""
    # Read with a regex, not time.strptime: `jobs -a` reads two per finished job, and
    # strptime's locale-aware machinery costs ~30 us each.
    match = _TIME.fullmatch(text) if text else None
    if match is None:
        return None
    year, month, day, hour, minute, second = map(int, match.groups())
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not (1 <= month <= 12 and 1 <= day <= _MONTH_DAYS[month - 1] + (leap and month == 2)
            and hour <= 23 and minute <= 59 and second <= 61):
        return None
    return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))


def parse_exit_code(text: str | None) -> tuple[int | None, int | None]:
    """``"7:0"`` -> ``(7, None)``, ``"0:15"`` -> ``(0, 15)``."""
    if not text or ":" not in text:
        return None, None
    code, sig = text.split(":", 1)
    try:
        return int(code), (int(sig) or None)
    except ValueError:
        return None, None


def parse_gres_gpus(text: str | None) -> tuple[str | None, int]:
    """``"gpu:a100:2(S:0-1)"`` -> ``("a100", 2)``; several GPU entries add up, types joined."""
    if not text or text in _NULL:
        return None, 0
    types: list[str] = []
    count = 0
    for m in _GRES_GPU.finditer(text):
        if m.group(1) and m.group(1) not in types:
            types.append(m.group(1))
        count += int(m.group(2))
    return (",".join(types) or None), count


def _value(text: str | None) -> str | None:
    return None if text is None or text in _NULL else text


def _user_name(text: str | None) -> str | None:
    """``"root(0)"`` -> ``"root"``."""
    if not text or text in _NULL:
        return None
    return text.split("(", 1)[0]


def _first_error_line(stderr: str) -> str:
    """Slurm's own reason, stripped of the tool's prefixes: the last line that says error."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()]
    line = (errors or lines or ["no error message"])[-1]
    for prefix in ("sbatch: error: ", "scontrol: error: ", "squeue: error: ", "sinfo: error: ",
                   "scancel: error: ", "sacct: error: ", "sbatch: fatal: ", "sinfo: fatal: ",
                   "squeue: fatal: ", "scontrol: fatal: ", "sacct: fatal: ",
                   "Batch job submission failed: ", "slurm_load_jobs error: ",
                   "slurm_load_node error: ", "slurm_load_partitions error: "):
        line = line.removeprefix(prefix)
    return line


def _controller_down(stderr: str) -> bool:
    return ("Unable to contact slurm controller" in stderr
            or "Could not establish a configuration source" in stderr)


def _failure(tool: str, proc: subprocess.CompletedProcess[str]) -> HpcenvError:
    message = _first_error_line(proc.stderr)
    if _controller_down(proc.stderr):
        return SchedulerUnreachable(f"cannot reach the Slurm controller ({tool}: {message}); "
                                    "check that slurmctld runs and SLURM_CONF points at its config")
    return HpcenvError(f"{tool} failed: {message}")


# What to do about sbatch's refusals of what the job asks for (its own text is terse).
REJECTION_HINTS = {
    "Invalid partition name specified":
        "check --partition (and --sbatch-arg) against 'sinfo -s' and the site config's partitions",
    "Requested node configuration is not available":
        "no node offers what the job asks for (partition, GPU type and count, --constraint, "
        "memory, CPUs); compare with: sinfo -N -o '%N %P %f %G %m %c'",
}


class SlurmCLI:
    """The Slurm CLI backend.  ``env`` overrides the environment of every Slurm command (e.g. a
    ``SLURM_CONF``); ``timeout`` bounds each call in seconds; ``bin_dir`` is where the client
    tools are (default: PATH), for hosts with more than one Slurm release installed: client and
    controller must be of the same release."""

    kind = "slurm-cli"
    capabilities: Capabilities = SLURM_CAPABILITIES

    def __init__(self, *, timeout: float = 60.0, env: Mapping[str, str] | None = None,
                 bin_dir: Path | None = None) -> None:
        self.timeout = timeout
        self.bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._env = {**os.environ, **env} if env else None
        self._jobcomp: tuple[Path | None] | None = None  # (JobCompLoc,) once asked

    # -- plumbing -------------------------------------------------------------------------------
    def _run(self, argv: Sequence[str], *, cwd: Path | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        tool = argv[0]
        command = [str(self.bin_dir / tool) if self.bin_dir else tool, *argv[1:]]
        try:
            proc = subprocess.run(command, cwd=cwd, env=self._env, capture_output=True,
                                  text=True, timeout=self.timeout, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            where = f"in {self.bin_dir} (slurm.bin_dir)" if self.bin_dir else "on PATH"
            raise HpcenvError(f"{tool} not found {where}: run hpcenv on a Slurm login node, "
                              "fix slurm.bin_dir, or set 'scheduler: local' in the site config") from None
        except subprocess.TimeoutExpired:
            raise HpcenvError(f"'{' '.join(argv)}' did not answer within {self.timeout:.0f} s: "
                              "is the Slurm controller (slurmctld) up?") from None
        if check and proc.returncode != 0:
            raise _failure(argv[0], proc)
        return proc

    @staticmethod
    def _check_id(job_id: str) -> str:
        job_id = str(job_id).strip()
        if not _JOB_ID.match(job_id):
            raise InvalidInput(f"invalid Slurm job id {job_id!r}: expected digits, e.g. 1234 or 1234_5")
        return job_id

    # -- the protocol -----------------------------------------------------------------------------
    def version(self) -> str:
        """The Slurm release of the client tools, e.g. ``"22.05.8"``."""
        out = self._run(["sinfo", "--version"]).stdout.split()
        return out[-1] if out else ""

    def submit(self, script_path: Path, *, workdir: Path,
               options: JobOptions | None = None) -> str:
        """sbatch reads every option from the script's own ``#SBATCH`` lines: ``options``
        (the same values) are not needed."""
        script_path = Path(script_path)
        # The submit directory is sbatch's cwd, not --chdir: an option on the command line
        # would override the script's own #SBATCH --chdir.
        proc = self._run(["sbatch", "--parsable", str(Path(script_path).absolute())],
                         cwd=Path(workdir), check=False)
        if proc.returncode != 0:
            message = _first_error_line(proc.stderr)
            if _controller_down(proc.stderr):
                raise SchedulerUnreachable(f"cannot reach the Slurm controller to submit the job "
                                           f"({message}); check that slurmctld runs and "
                                           "SLURM_CONF points at its config")
            hint = REJECTION_HINTS.get(message)
            if hint:  # the job asked for something this cluster does not have: bad input
                raise InvalidInput(f"Slurm rejected the job: {message}; {hint}")
            raise HpcenvError(f"Slurm rejected the job: {message}")
        # --parsable prints "ID" or "ID;cluster".
        job_id = proc.stdout.strip().split(";", 1)[0]
        if not _JOB_ID.match(job_id):
            raise HpcenvError(f"sbatch printed no job id for {script_path}: {proc.stdout.strip()!r}")
        return job_id

    def status(self, job_id: str) -> JobInfo:
        job_id = self._check_id(job_id)
        proc = self._run(["scontrol", "show", "job", "-o", job_id], check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            # An array's id gives one line per task (and one for its not yet started tasks).
            infos = [job_from_scontrol(parse_scontrol_line(line))
                     for line in proc.stdout.splitlines() if line.strip()]
            return infos[0] if len(infos) == 1 and infos[0].job_id == job_id else array_info(job_id, infos)
        if "Invalid job id" not in proc.stderr:
            raise _failure("scontrol", proc)
        info = self.completed_job(job_id)
        if info is None:
            raise NotFound(f"Slurm job {job_id} is unknown: not in the queue and not in the job "
                           "completion log (sacct -c); check the id")
        return info

    def statuses(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """:meth:`status` of many jobs with one ``scontrol show job -o`` for those in the queue
        and :meth:`completed_jobs` for the rest; ids Slurm does not know are left out."""
        ids = [self._check_id(j) for j in job_ids]
        queue: dict[str, list[JobInfo]] = {}
        for line in self._run(["scontrol", "show", "job", "-o"]).stdout.splitlines():
            if not line.startswith("JobId="):
                continue
            f = parse_scontrol_line(line)
            info = job_from_scontrol(f)
            # The keys `scontrol show job -o ID` finds this line by: its array's id (every
            # task) or its own, and a task's ARRAY_TASK name.
            for key in dict.fromkeys((f.get("ArrayJobId") or f.get("JobId", ""), info.job_id)):
                queue.setdefault(key, []).append(info)
        found: dict[str, JobInfo] = {}
        for job_id in ids:
            infos = queue.get(job_id)
            if infos:
                found[job_id] = (infos[0] if len(infos) == 1 and infos[0].job_id == job_id
                                 else array_info(job_id, infos))
        rest = [j for j in ids if j not in found]
        return found | (self.completed_jobs(rest) if rest else {})

    def completed_job(self, job_id: str) -> JobInfo | None:
        """The job's record in the job completion log (``sacct -c``), or None.  A job array
        (or one task of it, ``12_3``) comes from the file itself: see the module doc."""
        return self.completed_jobs([job_id]).get(self._check_id(job_id))

    def completed_jobs(self, job_ids: Sequence[str]) -> dict[str, JobInfo]:
        """:meth:`completed_job` of many jobs: one read of the job completion file for arrays
        and one ``sacct -c`` for the other jobs, whatever their number."""
        ids = [self._check_id(j) for j in job_ids]
        arrays = self._array_tasks() if ids else {}
        found: dict[str, JobInfo] = {}
        plain: list[str] = []
        for job_id in ids:
            array_id, _, task = job_id.partition("_")
            tasks = arrays.get(array_id, [])
            if task:
                info = next((t for t in tasks if t.job_id == job_id), None)
                if info is not None:
                    found[job_id] = info
            elif tasks:
                found[job_id] = array_info(job_id, tasks)
            else:
                plain.append(job_id)
        if not plain:
            return found
        # `-j` with many ids costs sacct a pass over the file per id (1.5 s for 10,000 ids in
        # a 10,000-job file); every job since the start of time is one pass, filtered here.
        which = ["-j", ",".join(plain)] if len(plain) <= _SACCT_BY_ID else []
        proc = self._run(["sacct", "-c", *which, "-S", _SACCT_EPOCH, "-n", "-P",
                          f"--delimiter={_SEP}", "-o", ",".join(_SACCT_FIELDS)], check=False)
        if proc.returncode != 0:
            return found
        return found | parse_sacct_jobs(proc.stdout, only=set(plain))

    def _jobcomp_file(self) -> Path | None:
        """The job completion file when Slurm writes one (jobcomp/filetxt), else None."""
        if self._jobcomp is None:
            proc = self._run(["scontrol", "show", "config"], check=False)
            config: dict[str, str] = {}
            for line in proc.stdout.splitlines():
                key, eq, value = line.partition("=")
                if eq:
                    config[key.strip()] = value.strip()
            loc = config.get("JobCompLoc", "")
            usable = config.get("JobCompType") == "jobcomp/filetxt" and loc.startswith("/")
            self._jobcomp = (Path(loc) if usable else None,)
        return self._jobcomp[0]

    def _array_tasks(self) -> dict[str, list[JobInfo]]:
        """Every array's tasks in the job completion file, by array id (none if it has none)."""
        path = self._jobcomp_file()
        if path is None:
            return {}
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return {}
        arrays: dict[str, dict[str, JobInfo]] = {}
        for line in text.splitlines():
            if " ArrayJobId=" not in line:
                continue
            f = parse_scontrol_line(line)
            if f.get("ArrayJobId") and f.get("ArrayTaskId", "").isdigit():
                info = self.from_jobcomp(f)
                # A requeued task is logged again: the last one counts.
                arrays.setdefault(f["ArrayJobId"], {})[info.job_id] = info
        return {array_id: list(tasks.values()) for array_id, tasks in arrays.items()}

    @staticmethod
    def from_jobcomp(f: Mapping[str, str]) -> JobInfo:
        """One array task's line of the job completion file (parsed as scontrol's)."""
        state = (f.get("JobState") or "UNKNOWN").split(" ", 1)[0]
        code, sig = parse_exit_code(f.get("ExitCode"))
        start, end = parse_time(f.get("StartTime")), parse_time(f.get("EndTime"))
        workdir = _value(f.get("WorkDir"))
        return JobInfo(
            job_id=f"{f['ArrayJobId']}_{f['ArrayTaskId']}", name=f.get("Name", ""), state=state,
            exit_code=code, signal=sig, node=_value(f.get("NodeList")),
            elapsed=max(end - start, 0.0) if start is not None and end is not None else None,
            partition=_value(f.get("Partition")), workdir=Path(workdir) if workdir else None,
            submit_time=parse_time(f.get("SubmitTime")), start_time=start, end_time=end,
            user=_user_name(f.get("UserId")), source="jobcomp")

    def jobs(self, user: str | None = None, *, all_users: bool = False) -> list[JobInfo]:
        """Jobs slurmctld still holds for ``user`` (default: you; every user's with
        ``all_users``): queued, running and finished within ``MinJobAge``."""
        user = user or current_user()
        out = self._run(["scontrol", "show", "job", "-o"]).stdout
        return [job for job in parse_jobs(out) if all_users or job.user == user]

    def cancel(self, job_id: str, signal: str | int | None = None) -> None:
        info = self.status(job_id)  # NotFound for unknown ids: scancel would say nothing
        if info.finished:
            return
        argv = ["scancel"]
        if signal is not None:
            # The batch shell only: same target as the --signal=B:SIG@T hpcenv renders for the
            # time limit (see the module doc for why not --full).
            argv += ["--batch", f"--signal={signal_name(signal)}"]
        self._run([*argv, info.job_id])

    def nodes(self) -> list[NodeState]:
        # -d (details) adds GresUsed: the GPUs in use, which routing compares.
        return parse_nodes(self._run(["scontrol", "-d", "show", "node", "-o"]).stdout)

    def partitions(self) -> list[PartitionState]:
        nodes = self.nodes()
        return parse_partitions(self._run(["scontrol", "show", "partition", "-o"]).stdout, nodes)

    # -- record conversion --------------------------------------------------------------------

def array_info(array_id: str, tasks: Sequence[JobInfo]) -> JobInfo:
    """A job array as one job: still running while any task is, else failed (with the worst
    exit code) if any task failed.  ``--wait`` and ``status ARRAY_ID`` rely on this."""
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.state] = counts.get(t.state, 0) + 1
    unfinished = [t for t in tasks if not t.finished]
    bad = [t for t in tasks if t.finished and t.state != "COMPLETED"]
    if unfinished:
        state = "RUNNING" if any(t.state == "RUNNING" for t in unfinished) else unfinished[0].state
    else:
        state = bad[0].state if bad else "COMPLETED"
    finished = not unfinished
    codes = [t.exit_code for t in tasks if t.exit_code is not None]
    nodes = list(dict.fromkeys(t.node for t in tasks if t.node))
    elapsed = [t.elapsed for t in tasks if t.elapsed is not None]
    first = tasks[0]
    return JobInfo(
        job_id=array_id, name=first.name, state=state,
        reason=f"job array: {', '.join(f'{n} {st}' for st, n in sorted(counts.items()))}",
        exit_code=max(codes) if finished and codes else None,
        signal=next((t.signal for t in bad if t.signal), None) if finished else None,
        node=",".join(nodes) or None, elapsed=max(elapsed) if elapsed else None,
        partition=first.partition, workdir=first.workdir, user=first.user,
        submit_time=min((t.submit_time for t in tasks if t.submit_time), default=None),
        start_time=min((t.start_time for t in tasks if t.start_time), default=None),
        end_time=max((t.end_time or 0 for t in tasks), default=None) if finished else None,
        comment=first.comment, constraint=first.constraint, gres=first.gres, source=first.source,
        tasks=tuple(sorted((t.job_id for t in tasks),
                           key=lambda i: [int(p) if p.isdigit() else -1 for p in i.split("_")])))


def job_from_scontrol(f: Mapping[str, str]) -> JobInfo:
    """One record of ``scontrol show job -o`` as a JobInfo."""
    state = f.get("JobState", "UNKNOWN")
    code, sig = parse_exit_code(f.get("ExitCode"))
    finished = is_finished(state)
    stdout, stderr, workdir = (_value(f.get(k)) for k in ("StdOut", "StdErr", "WorkDir"))
    job_id = f.get("JobId", "")
    task = f.get("ArrayTaskId", "")
    if f.get("ArrayJobId") and task.isdigit():
        job_id = f"{f['ArrayJobId']}_{task}"  # how users (and sbatch's %A_%a) name a task
    return JobInfo(
        job_id=job_id, name=f.get("JobName", ""), state=state,
        reason=_value(f.get("Reason")),
        exit_code=code if finished else None, signal=sig if finished else None,
        node=_value(f.get("NodeList")), elapsed=parse_duration(f.get("RunTime")),
        partition=_value(f.get("Partition")),
        stdout=Path(stdout) if stdout else None,
        stderr=Path(stderr) if stderr else Path(stdout) if stdout else None,  # 25.11: empty
        workdir=Path(workdir) if workdir else None,
        submit_time=parse_time(f.get("SubmitTime")), start_time=parse_time(f.get("StartTime")),
        end_time=parse_time(f.get("EndTime")) if finished else None,
        user=_user_name(f.get("UserId")), comment=_value(f.get("Comment")),
        constraint=_value(f.get("Features")), gres=_gres(f), source="queue")


def _gres(f: Mapping[str, str]) -> str | None:
    """The generic resources a job asked for: per job (``--gpus``), then per node (``--gres``,
    ``--gpus-per-node``), as Slurm prints them (``gres:gpu:a100:1`` on 22.05, ``gres/gpu:...``
    on 25.11)."""
    asked = [v for k in ("TresPerJob", "TresPerNode") if (v := _value(f.get(k)))]
    return ",".join(asked) or None


def parse_jobs(text: str) -> list[JobInfo]:
    """``scontrol show job -o`` (every job slurmctld holds; "No jobs in the system" when none)."""
    return [job_from_scontrol(parse_scontrol_line(line)) for line in text.splitlines()
            if line.startswith("JobId=")]


def parse_nodes(text: str) -> list[NodeState]:
    """``scontrol -d show node -o``: one ``NodeName=...`` record per node."""
    nodes = []
    for line in text.splitlines():
        if not line.startswith("NodeName="):
            continue
        f = parse_scontrol_line(line)
        features = _value(f.get("ActiveFeatures")) or _value(f.get("AvailableFeatures")) or ""
        gpu_type, gpus = parse_gres_gpus(f.get("Gres"))
        _, used = parse_gres_gpus(f.get("GresUsed"))
        nodes.append(NodeState(
            name=f.get("NodeName", ""),
            partitions=tuple(p for p in (_value(f.get("Partitions")) or "").split(",") if p),
            features=tuple(x for x in features.split(",") if x),
            state=f.get("State", "UNKNOWN").lower(), gpu_type=gpu_type, gpus=gpus,
            gpus_allocated=used, cpus=_int(f.get("CPUTot")), cpus_allocated=_int(f.get("CPUAlloc"))))
    return nodes


def parse_partitions(text: str, nodes: Sequence[NodeState]) -> list[PartitionState]:
    """``scontrol show partition -o`` with the nodes (from :func:`parse_nodes`) of each."""
    result = []
    for line in text.splitlines():
        if not line.startswith("PartitionName="):
            continue
        p = parse_scontrol_line(line)
        name = p.get("PartitionName", "")
        result.append(PartitionState(
            name=name, nodes=tuple(n for n in nodes if name in n.partitions),
            default=p.get("Default") == "YES", state=p.get("State", "UP").lower()))
    return result


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


def parse_sacct(text: str, job_id: str) -> JobInfo | None:
    """Job ``job_id`` in ``sacct -c -n -P --delimiter=US -o`` :data:`_SACCT_FIELDS` output."""
    return parse_sacct_jobs(text, only={job_id}).get(job_id)


def parse_sacct_jobs(text: str, only: Collection[str] | None = None) -> dict[str, JobInfo]:
    """The jobs (all, or those in ``only``) in ``sacct -c -n -P --delimiter=US -o``
    :data:`_SACCT_FIELDS` output, by id; a requeued job logs more than once and its last record
    counts."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        fields = line.split(_SEP)
        if len(fields) < len(_SACCT_FIELDS) or (only is not None and fields[0] not in only):
            continue
        row = dict(zip(_SACCT_FIELDS[:-1], fields[:len(_SACCT_FIELDS) - 1]))
        row["JobName"] = _SEP.join(fields[len(_SACCT_FIELDS) - 1:])
        job_id = row["JobIDRaw"]
        state = row["State"].split(" ", 1)[0] if row["State"] else "UNKNOWN"
        code, sig = parse_exit_code(row["ExitCode"])
        workdir = _value(row["WorkDir"])
        jobs[job_id] = JobInfo(
            job_id=job_id, name=row["JobName"], state=state,
            reason=None if state != "UNKNOWN" else "its completion record is garbled "
            "(sacct -c cannot parse job names with spaces)",
            exit_code=code, signal=sig, node=_value(row["NodeList"]),
            elapsed=parse_duration(row["Elapsed"]), partition=_value(row["Partition"]),
            workdir=Path(workdir) if workdir else None,
            start_time=parse_time(row["Start"]), end_time=parse_time(row["End"]),
            user=_user_name(row["User"]), source="jobcomp")
    return jobs
