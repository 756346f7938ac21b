"""The local executor: real bash jobs, real supervisor processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SIGNAL_CHILD, wait_for_file

from hpcenv.errors import InvalidInput, NotFound
from hpcenv.scheduler import get_scheduler
from hpcenv.scheduler.base import JobInfo, Scheduler
from hpcenv.scheduler.job_options import JobOptions, from_script
from hpcenv.scheduler.local import LocalExecutor


@pytest.fixture
def executor(tmp_path: Path) -> LocalExecutor:
    return LocalExecutor(tmp_path / "state", kill_wait=1.0)


def write_job(directory: Path, body: str, *sbatch: str, name: str = "job.sh") -> Path:
    path = directory / name
    path.write_text("\n".join(["#!/bin/bash", *(f"#SBATCH {o}" for o in sbatch), body]) + "\n")
    return path


def wait(executor: LocalExecutor, job_id: str, timeout: float = 30.0) -> JobInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = executor.status(job_id)
        if info.finished:
            return info
        assert time.monotonic() < deadline, f"job {job_id} still {info.state} after {timeout} s"
        time.sleep(0.05)


def test_runs_the_script_with_slurm_variables(executor: LocalExecutor, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "999999")  # inherited Slurm variables must not leak in
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "1")
    work = tmp_path / "work"
    work.mkdir()
    script = write_job(work, 'echo "$SLURM_JOB_ID|$SLURM_JOB_NAME|$SLURMD_NODENAME|'
                             '$SLURM_CPUS_PER_TASK|$SLURM_SUBMIT_DIR|$PWD|${SLURM_MEM_PER_NODE-unset}"\n'
                             'echo to-stderr >&2',
                       "--job-name=train -o out/%x-%j.log", "-e err-%j.log", "-c 4")
    job_id = executor.submit(script, workdir=work)
    info = wait(executor, job_id)
    assert (info.state, info.exit_code, info.name, info.partition, info.node) == (
        "COMPLETED", 0, "train", "local", "local")
    assert info.stdout == work / "out" / f"train-{job_id}.log"
    assert info.stderr == work / f"err-{job_id}.log"
    assert info.stdout.read_text() == f"{job_id}|train|local|4|{work}|{work}|unset\n"
    assert info.stderr.read_text() == "to-stderr\n"


def test_default_output_and_chdir(executor: LocalExecutor, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    script = write_job(tmp_path, "pwd; echo oops >&2", "--chdir=sub")
    job_id = executor.submit(script, workdir=tmp_path)
    info = wait(executor, job_id)
    assert info.name == "job.sh"
    assert info.stdout == info.stderr == tmp_path / "sub" / f"slurm-{job_id}.out"
    assert info.stdout.read_text() == f"{tmp_path / 'sub'}\noops\n"


def test_exit_code_and_failed_state(executor: LocalExecutor, tmp_path: Path) -> None:
    info = wait(executor, executor.submit(write_job(tmp_path, "exit 7"), workdir=tmp_path))
    assert (info.state, info.exit_code, info.signal, info.reason) == ("FAILED", 7, None,
                                                                      "NonZeroExitCode")


def test_script_is_copied_at_submit(executor: LocalExecutor, tmp_path: Path) -> None:
    script = write_job(tmp_path, "sleep 0.5; echo first")
    job_id = executor.submit(script, workdir=tmp_path)
    script.write_text("#!/bin/bash\necho edited\n")  # as with sbatch, later edits do not count
    assert wait(executor, job_id).stdout.read_text() == "first\n"


def test_ids_increase_and_records_persist(executor: LocalExecutor, tmp_path: Path) -> None:
    ids = [executor.submit(write_job(tmp_path, "true"), workdir=tmp_path) for _ in range(3)]
    assert [int(i) for i in ids] == sorted(int(i) for i in ids) and len(set(ids)) == 3
    for job_id in ids:
        wait(executor, job_id)
    again = LocalExecutor(tmp_path / "state")  # a later process reads the same records
    assert [j.job_id for j in again.jobs()] == ids
    assert again.jobs(user="someone-else") == []
    record = json.loads((tmp_path / "state" / "local-jobs" / f"{ids[0]}.json").read_text())
    assert record["state"] == "COMPLETED"


def test_concurrent_submitters_get_distinct_ids(tmp_path: Path) -> None:
    script = write_job(tmp_path, "true")
    code = ("import sys; from pathlib import Path; from hpcenv.scheduler.local import LocalExecutor;"
            "e = LocalExecutor(Path(sys.argv[1]));"
            "print(' '.join(e.submit(Path(sys.argv[2]), workdir=Path(sys.argv[3])) for _ in range(3)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "state"), str(script),
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    ids = [i for p in procs for i in p.communicate(timeout=60)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(i) for i in ids) == list(range(1, 13))
    executor = LocalExecutor(tmp_path / "state")
    assert all(wait(executor, i).state == "COMPLETED" for i in ids)


def test_job_survives_the_submitting_process(tmp_path: Path) -> None:
    script = write_job(tmp_path, 'sleep 1; echo "done $SLURM_JOB_ID"')
    code = ("import sys; from pathlib import Path; from hpcenv.scheduler.local import LocalExecutor;"
            "print(LocalExecutor(Path(sys.argv[1])).submit(Path(sys.argv[2]), workdir=Path(sys.argv[3])))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "state"), str(script),
                           str(tmp_path)], capture_output=True, text=True, timeout=60, check=True)
    job_id = proc.stdout.strip()
    executor = LocalExecutor(tmp_path / "state")
    assert executor.status(job_id).state in {"PENDING", "RUNNING"}  # submitter already gone
    info = wait(executor, job_id)
    assert (info.state, info.stdout.read_text()) == ("COMPLETED", f"done {job_id}\n")


def test_cancel_terminates_the_whole_process_group(executor: LocalExecutor, tmp_path: Path) -> None:
    job_id = executor.submit(write_job(tmp_path, SIGNAL_CHILD), workdir=tmp_path)
    wait_for_file(tmp_path / "ready")
    assert executor.status(job_id).state == "RUNNING"
    executor.cancel(job_id)
    info = wait(executor, job_id)
    assert info.state == "CANCELLED"
    assert (tmp_path / "got-signal").read_text() == "SIGTERM"  # the script's child got it


def test_cancel_with_a_signal_reaches_only_the_batch_shell(executor: LocalExecutor,
                                                           tmp_path: Path) -> None:
    # As scancel --batch --signal: the shell gets it (hpcenv's job scripts exec the program or
    # forward to it), its children do not, so nothing reaches the program twice.  Here the
    # shell's trap forwards TERM: the child must see TERM only, never USR1.
    body = ("trap 'echo shell-got-usr1; kill -TERM $child' USR1\n"
            + SIGNAL_CHILD.replace("python3 - <<'EOF'", "python3 - <<'EOF' &", 1)
            + "child=$!\nwait $child\nwait $child\necho after-child\n")
    job_id = executor.submit(write_job(tmp_path, body), workdir=tmp_path)
    wait_for_file(tmp_path / "ready")
    executor.cancel(job_id, signal="USR1")
    info = wait(executor, job_id)
    assert (tmp_path / "got-signal").read_text() == "SIGTERM"
    assert (info.state, info.exit_code) == ("COMPLETED", 0)
    assert info.stdout.read_text() == "shell-got-usr1\nafter-child\n"


def test_cancel_escalates_to_kill(executor: LocalExecutor, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    body = "trap '' TERM\ntouch ready\nwhile :; do sleep 0.1; done"
    job_id = executor.submit(write_job(tmp_path, body), workdir=tmp_path)
    wait_for_file(tmp_path / "ready")
    executor.cancel(job_id)
    info = wait(executor, job_id, timeout=30)
    assert (info.state, info.signal) == ("CANCELLED", signal.SIGKILL)


def test_time_limit_ends_the_job_as_timeout(executor: LocalExecutor, tmp_path: Path) -> None:
    job_id = executor.submit(write_job(tmp_path, 'echo "end=$SLURM_JOB_END_TIME"; sleep 30',
                                       "--time=0:1"), workdir=tmp_path)
    info = wait(executor, job_id)
    assert (info.state, info.reason, info.signal) == ("TIMEOUT", "TimeLimit", signal.SIGTERM)
    assert info.stdout.read_text().startswith("end=")


def test_dead_supervisor_marks_the_job_failed(executor: LocalExecutor, tmp_path: Path) -> None:
    job_id = executor.submit(write_job(tmp_path, "touch ready; sleep 30"), workdir=tmp_path)
    wait_for_file(tmp_path / "ready")
    record = json.loads((tmp_path / "state" / "local-jobs" / f"{job_id}.json").read_text())
    os.kill(record["supervisor_pid"], signal.SIGKILL)
    os.killpg(record["pgid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (stat := Path(f"/proc/{record['supervisor_pid']}/stat")).exists() \
            and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "SIGKILL did not end the supervisor"
        time.sleep(0.05)
    info = executor.status(job_id)
    assert info.state == "FAILED"
    assert "supervisor process vanished" in (info.reason or "")


def test_unknown_ids_and_bad_input(executor: LocalExecutor, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="local job 42 is unknown"):
        executor.status("42")
    with pytest.raises(InvalidInput):
        executor.status("../x")
    with pytest.raises(InvalidInput, match="--time"):
        executor.submit(write_job(tmp_path, "true", "--time=soon"), workdir=tmp_path)
    with pytest.raises(InvalidInput, match="cannot read job script"):
        executor.submit(tmp_path / "missing.sh", workdir=tmp_path)


def test_partitions_and_factory(tmp_path: Path) -> None:
    local = get_scheduler("local", state_dir=tmp_path)
    assert isinstance(local, LocalExecutor) and isinstance(local, Scheduler)
    (part,) = local.partitions()
    assert (part.name, part.default, part.gpus_total) == ("local", True, 0)
    with pytest.raises(InvalidInput, match="unknown scheduler"):
        get_scheduler("pbs")


def test_header_is_read_into_job_options() -> None:
    script = ("#!/bin/bash\n#SBATCH -J name -o out.log\n#SBATCH --error=e.log --cpus-per-task 2\n"
              "# a comment\n\n#SBATCH -t1:00 --chdir 'with space'  # trailing comment\n"
              "echo hi\n#SBATCH --job-name=ignored-after-commands\n")
    assert from_script(script) == JobOptions(
        job_name="name", output="out.log", error="e.log", cpus_per_task=2, time="1:00",
        chdir="with space")


def test_a_bad_time_limit_is_refused_naming_the_script(executor: LocalExecutor,
                                                      tmp_path: Path) -> None:
    script = write_job(tmp_path, "true", "--time=1h")
    with pytest.raises(InvalidInput, match=r"job\.sh: --time '1h': expected a Slurm time limit"):
        executor.submit(script, workdir=tmp_path)
    assert executor.jobs() == []


@pytest.mark.parametrize(("option", "value"), [("--array", "0-2"), ("--dependency", "afterok:1")])
def test_arrays_and_dependencies_are_refused_not_ignored(executor: LocalExecutor, tmp_path: Path,
                                                        option: str, value: str) -> None:
    with pytest.raises(InvalidInput, match=f"local executor does not support {option} "):
        executor.submit(write_job(tmp_path, "true", f"{option}={value}"), workdir=tmp_path)
    assert executor.jobs() == []
