"""cli_commands: whole ``hpcenv`` processes of everyday commands against what they wrap.

Issue 10.  Every command is timed as a user runs it (the console script, a fresh process, the
site file read and parsed each time), interleaved with its anchor so machine load hits both
alike; medians of RUNS runs after one warm-up run each:

- ``submit`` of a built env against ``sbatch --parsable`` of the very script hpcenv rendered,
  and against a whole python script submitting the same program with submitit;
  ``submit --dry-run`` likewise;
- ``status JOB`` against ``scontrol show job JOB``; ``jobs`` against ``squeue --json``; beside
  them, the floor of any Python front end over those tools (a bare ``python`` that runs the tool
  and prints its output);
- ``env list``, ``env show``, a cache hit (``env build SPEC`` of a built env) and ``--help``
  against ``python -c pass``;
- ``jobs -a`` over 10,000 submission records of finished jobs (records as ``submit`` writes
  them, the jobs in a job completion file in Slurm's ``jobcomp/filetxt`` format, read by
  ``sacct -c`` through a copy of the cluster's slurm.conf naming that file), against ``jobs
  -a`` with no records;
- a job's start (the rendered job script run with bash) to the program's first line, against
  the env's python running the program directly.

Slurm: the cluster ``SLURM_CONF`` names when ``sinfo`` answers, else (as root) the project's
test cluster started with tests/cluster/up and stopped afterwards, else the Slurm rows are
skipped with one line saying why.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import (
    EXAMPLES,
    HPCENV,
    PYTHON,
    REPO,
    BenchResult,
    Check,
    demo_channel,
    ratio_target,
    scratch,
    timed_metric,
)

RUNS = 9
START_RUNS = 25  # job start to first line: ~10 ms each, and a 1.2x target needs a steady median
RECORDS = 10_000
SPEC = EXAMPLES / "cpu-analysis.yml"
ENV = "cpu-analysis"
PROGRAM = 'print("first line", flush=True)\n'
# Submits the same program as `hpcenv submit` does, the way submitit's users write it.
SUBMITIT = """
import sys, submitit
executor = submitit.AutoExecutor(folder=sys.argv[1])
executor.update_parameters(timeout_min=10, slurm_job_name="hello")
job = executor.submit(submitit.helpers.CommandFunction([sys.argv[2], sys.argv[3]]))
print(job.job_id)
"""
# The least a Python wrapper of a Slurm command does: run it, read its output, print it.
WRAP = """
import subprocess, sys
sys.stdout.write(subprocess.run(sys.argv[1:], capture_output=True, text=True).stdout)
"""
# Job ids of the generated records: far above any the cluster hands out during the run.
FIRST_ID = 90_000_000


def _time(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-500:]}")
    return seconds


def _interleaved(commands: dict[str, list[str]], env: dict[str, str], cwd: Path,
                 runs: int = RUNS) -> dict[str, list[float]]:
    for argv in commands.values():  # warm-up: byte code written, files in the page cache
        _time(argv, env, cwd)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            samples[name].append(_time(argv, env, cwd))
    return samples


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # A user's installed hpcenv has its byte code compiled; a benchmark under
    # PYTHONDONTWRITEBYTECODE would time the compiler instead.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _answers(env: dict[str, str]) -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], capture_output=True, env=env, timeout=10,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def slurm_cluster(env: dict[str, str]) -> Iterator[tuple[dict[str, str] | None, str]]:
    """The environment the Slurm client tools need and which cluster it is, or None and why."""
    if env.get("SLURM_CONF") and _answers(env):
        yield env, f"the reachable cluster (SLURM_CONF={env['SLURM_CONF']})"
        return
    up = REPO / "tests" / "cluster" / "up"
    if os.geteuid() != 0 or not up.exists():
        yield None, ("no Slurm answers (SLURM_CONF unset or sinfo fails) and the test cluster "
                     "needs root: Slurm rows skipped")
        return
    cluster = {**env, "HPCENV_SLURM_ROOT": env.get("HPCENV_SLURM_ROOT", "/tmp/hpcenv-bench-slurm")}
    proc = subprocess.run([str(up)], capture_output=True, text=True, env=cluster, check=False)
    if proc.returncode != 0:
        yield None, f"tests/cluster/up failed ({proc.stderr.strip()[-200:]}): Slurm rows skipped"
        return
    started = "already up" not in proc.stderr
    for line in proc.stdout.splitlines():  # export SLURM_CONF=...; export PATH=BIN:$PATH
        key, _, value = line.removeprefix("export ").partition("=")
        cluster[key] = value.replace("$PATH", env.get("PATH", ""))
    try:
        yield cluster, f"the project's test cluster under {cluster['HPCENV_SLURM_ROOT']}"
    finally:
        if started:
            subprocess.run([str(up.parent / "down")], capture_output=True, env=cluster,
                           check=False)


def _write_records(state_dir: Path, jobcomp: Path, prefix: str, workdir: Path) -> None:
    """RECORDS finished jobs: hpcenv's submission records and Slurm's completion log lines."""
    from hpcenv.jobs.control import SubmissionRecord, submissions_dir

    user = pwd.getpwuid(os.getuid())
    group = user.pw_gid
    now = time.time() - 3600
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    directory = submissions_dir(state_dir)
    directory.mkdir(parents=True)
    lines = []
    for i in range(RECORDS):
        job_id = str(FIRST_ID + i)
        record = SubmissionRecord(
            job_id=job_id, scheduler="slurm", env=ENV, env_version=1, prefix=prefix,
            partition="cpu", constraint=None, gpus=0, reason="CPU env; CPU partition",
            script=str(workdir / "job.sh"), workdir=str(workdir), job_name="hello",
            output=str(workdir / "slurm-%j.out"), error=None,
            command=[f"{prefix}/bin/python", str(workdir / "hello.py")],
            submitted=now + i * 0.01, user=user.pw_name, backend="slurm-cli")
        (directory / f"slurm-{job_id}.json").write_text(json.dumps(record.to_dict()))
        # The line jobcomp/filetxt writes for a finished job.
        lines.append(
            f"JobId={job_id} UserId={user.pw_name}({user.pw_uid}) GroupId={group}({group}) "
            f"Name=hello JobState=COMPLETED Partition=cpu TimeLimit=10 StartTime={stamp} "
            f"EndTime={stamp} NodeList=cpu1 NodeCnt=1 ProcCnt=1 WorkDir={workdir} "
            "ReservationName= Tres=cpu=1,mem=2000M,node=1,billing=1 Account= QOS= WcKey= "
            f"Cluster=unknown SubmitTime={stamp} EligibleTime={stamp} DerivedExitCode=0:0 "
            "ExitCode=0:0 ")
    jobcomp.write_text("\n".join(lines) + "\n")


def _conf_with_jobcomp(conf: Path, jobcomp: Path, into: Path) -> Path:
    """A copy of the cluster's slurm.conf whose job completion file is ``jobcomp``."""
    text = "".join(f"JobCompLoc={jobcomp}\n" if line.startswith("JobCompLoc=") else line
                   for line in conf.read_text().splitlines(keepends=True))
    copy = into / "slurm.conf"
    copy.write_text(text if f"JobCompLoc={jobcomp}" in text else text + f"JobCompLoc={jobcomp}\n")
    return copy


def _first_line(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=cwd, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    seconds = time.perf_counter() - start
    _out, err = proc.communicate()
    if proc.returncode != 0 or line.strip() != "first line":
        raise RuntimeError(f"{argv} failed (exit {proc.returncode}): {err[-500:]}")
    return seconds


def run() -> BenchResult:
    from hpcenv.demo.site import write_demo_site

    result = BenchResult("cli_commands")
    with scratch("cli") as root:
        # The commands' parse cache of their own, as a user has (the warm-up runs fill it):
        # in the shared one, other processes of the same user (a test run) evict its entries,
        # and a command then pays for importing PyYAML.
        base_env = {**_child_env(), "XDG_CACHE_HOME": str(root / "cache")}
        work = root / "work"
        work.mkdir()
        program = work / "hello.py"
        program.write_text(PROGRAM)
        site = write_demo_site(root / "site", demo_channel(), scheduler="slurm",
                               slurm='{time: "10:00", cpus_per_task: 1}')
        hpcenv = [str(HPCENV), "--site", str(site)]
        built = subprocess.run([*hpcenv, "env", "build", str(SPEC), "--json", "-q"],
                               capture_output=True, text=True, env=base_env, check=False)
        if built.returncode != 0:
            raise RuntimeError(f"env build {SPEC.name}: {built.stderr[-500:]}")
        prefix = json.loads(built.stdout)["prefix"]
        python = str(Path(prefix) / "bin" / "python")

        local = _interleaved({
            "pass": [str(PYTHON), "-c", "pass"],
            "help": [str(HPCENV), "--help"],
            "env list": [*hpcenv, "env", "list"],
            "env show": [*hpcenv, "env", "show", ENV],
            "cache hit": [*hpcenv, "env", "build", str(SPEC), "-q"],
        }, base_env, work)
        bare = local["pass"]
        result.metrics.append(timed_metric("python -c pass", bare, baseline=bare,
                                           baseline_name="python -c pass"))
        for name, label in (("help", "hpcenv --help"), ("env list", "hpcenv env list"),
                            ("env show", f"hpcenv env show {ENV}"),
                            ("cache hit", f"hpcenv env build {SPEC.name} (built)")):
            metric = timed_metric(label, local[name], baseline=bare,
                                  baseline_name="python -c pass")
            result.metrics.append(metric)
            result.checks.append(ratio_target(label, metric.ratio or 0.0, 4.0, "python -c pass"))

        with slurm_cluster(base_env) as (env, which):
            if env is None:
                result.notes.append(which)
            else:
                result.notes.append(f"Slurm: {which}")
                _slurm_rows(result, env, hpcenv, site, work, program, python, root)
    return result


def _slurm_rows(result: BenchResult, env: dict[str, str], hpcenv: list[str], site: Path,
                work: Path, program: Path, python: str, root: Path) -> None:
    from hpcenv.demo.site import write_demo_site

    submit = [*hpcenv, "submit", str(program), "--env", ENV, "-q"]
    dry = subprocess.run([*hpcenv, "--json", "submit", str(program), "--env", ENV, "--dry-run"],
                         capture_output=True, text=True, env=env, cwd=work, check=False)
    if dry.returncode != 0:
        raise RuntimeError(f"submit --dry-run: {dry.stderr[-500:]}")
    script = Path(json.loads(dry.stdout)["script"])
    job_id = subprocess.run(submit, capture_output=True, text=True, env=env, cwd=work,
                            check=True).stdout.split()[2]  # "submitted job N to ..."
    have_submitit = subprocess.run([str(PYTHON), "-c", "import submitit"], capture_output=True,
                                   check=False).returncode == 0
    commands = {
        "submit": submit,
        "sbatch": ["sbatch", "--parsable", str(script)],
        "dry run": [*submit, "--dry-run"],
        "status": [*hpcenv, "status", job_id],
        "scontrol": ["scontrol", "show", "job", job_id],
        "jobs": [*hpcenv, "jobs"],
        "squeue": ["squeue", "--json"],
        "python scontrol": [str(PYTHON), "-c", WRAP, "scontrol", "show", "job", job_id],
        "python squeue": [str(PYTHON), "-c", WRAP, "squeue", "--json"],
    }
    if have_submitit:
        commands["submitit"] = [str(PYTHON), "-c", SUBMITIT, str(work / "submitit"), python,
                                str(program)]
    else:
        result.notes.append("submitit not installed (pip install -e '.[bench]'): no submitit "
                            "anchor")
    t = _interleaved(commands, env, work)

    def row(name: str, label: str, anchor: str, anchor_label: str, most: float) -> None:
        metric = timed_metric(label, t[name], baseline=t[anchor], baseline_name=anchor_label)
        result.metrics.append(metric)
        result.checks.append(ratio_target(label, metric.ratio or 0.0, most, anchor_label))

    for name, label in (("submit", "hpcenv submit"), ("dry run", "hpcenv submit --dry-run")):
        sbatch = timed_metric(label, t[name], baseline=t["sbatch"],
                              baseline_name="sbatch --parsable")
        result.metrics.append(sbatch)
        gap = sbatch.value - (sbatch.baseline or 0)
        result.checks.append(Check(f"{label} within 60 ms of sbatch --parsable", gap <= 60,
                                   f"+{gap:.0f} ms"))
        if have_submitit:
            row(name, label, "submitit", "submitit submit (whole script)", 0.5)
    row("status", f"hpcenv status {job_id}", "scontrol", "scontrol show job", 3.0)
    row("jobs", "hpcenv jobs", "squeue", "squeue --json", 2.0)
    # The floor of any Python front end over the Slurm CLI: start an interpreter, run the tool,
    # read its output.  Printed beside the targets so a reader sees how much room they leave.
    for name, anchor, anchor_label in (("python scontrol", "scontrol", "scontrol show job"),
                                       ("python squeue", "squeue", "squeue --json")):
        result.metrics.append(timed_metric(f"floor: python running {anchor_label}", t[name],
                                           baseline=t[anchor], baseline_name=anchor_label))

    # jobs -a over RECORDS finished jobs, and with none.
    jobcomp = root / "jobcomp.txt"
    many, none = (write_demo_site(root / name, demo_channel(), scheduler="slurm",
                                  state_dir=str(root / f"{name}-state"))
                  for name in ("many", "none"))
    _write_records(root / "many-state", jobcomp, str(Path(python).parent.parent), work)
    conf = _conf_with_jobcomp(Path(env["SLURM_CONF"]), jobcomp, root)
    history_env = {**env, "SLURM_CONF": str(conf)}
    listed = subprocess.run([str(HPCENV), "--site", str(many), "--json", "jobs", "-a"],
                            capture_output=True, text=True, env=history_env, check=False)
    count = len(json.loads(listed.stdout)) if listed.returncode == 0 else -1
    result.checks.append(Check(f"jobs -a lists all {RECORDS:,} finished jobs", count >= RECORDS,
                               f"{count:,} listed" if count >= 0 else listed.stderr[-300:],
                               kind="invariant"))
    t = _interleaved({"many": [str(HPCENV), "--site", str(many), "jobs", "-a"],
                      "none": [str(HPCENV), "--site", str(none), "jobs", "-a"]},
                     history_env, work, runs=3)
    metric = timed_metric(f"hpcenv jobs -a, {RECORDS:,} records", t["many"], "s",
                          baseline=t["none"], baseline_name="jobs -a, no records")
    result.metrics.append(metric)
    result.checks.append(Check(f"jobs -a over {RECORDS:,} records <= 2 s", metric.value <= 2.0,
                               f"{metric.value:.2f} s"))

    # Job start to the program's first line: the rendered script under bash, the env's python.
    job_env = {"PATH": env.get("PATH", "/usr/bin:/bin"), "HOME": str(work)}
    for argv in (["bash", str(script)], [python, str(program)]):
        _first_line(argv, job_env, work)  # warm-up
    starts: dict[str, list[float]] = {"job": [], "direct": []}
    for _ in range(START_RUNS):
        starts["job"].append(_first_line(["bash", str(script)], job_env, work))
        starts["direct"].append(_first_line([python, str(program)], job_env, work))
    metric = timed_metric("job start to the program's first line", starts["job"],
                          baseline=starts["direct"], baseline_name="env's python direct")
    result.metrics.append(metric)
    result.checks.append(Check("job start overhead <= 1.2x the env's python direct",
                               (metric.ratio or 0) <= 1.2, f"{metric.ratio:.2f}x"))
    result.notes.append("whole processes, console script, byte code compiled (warm-up run "
                        f"first), {RUNS} interleaved runs each; jobs -a: 3 runs; job start: "
                        f"{START_RUNS}")

