"""Job-script rendering: #SBATCH validation, quoting, and both launchers run for real with bash.

The scripts are executed directly with bash here (no scheduler), which is what the local executor
and slurmd do with them too.  conda-run uses a fake ``conda`` on PATH (quick, and present without
the shared test assets; tests/jobs/test_conda_run_slurm.py runs the real one).  The fake behaves as ``conda run`` does where it matters for the wrapper: it
activates (sets CONDA_PREFIX and PATH), stays in between as the program's parent, and forwards no
signal, so these tests show that the wrapper itself delivers signals to the program.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import write_fake_conda

from hpcenv.errors import InvalidInput
from hpcenv.jobs.templates import JobScript, render_job_script
from hpcenv.scheduler.job_options import JobOptions, from_script, sbatch_lines
from hpcenv.store.activation import activation_script

NASTY = ["$(touch pwned)", "`touch pwned2`", "a\nb", "'; touch pwned3 #", "  spaced  ", "", "*",
         "\\n", "${HOME}", "ünïcode", "--flag=x y", "cr\rinside", "crlf\r\n"]

SHOW_ARGS = """\
import json, os, sys
with open(sys.argv[1], "w") as fh:
    json.dump({"argv": sys.argv[2:], "conda_prefix": os.environ.get("CONDA_PREFIX"),
               "pid": os.getpid()}, fh)
"""

# Records each signal it gets; exits 42 on the first one after a short grace (a checkpoint).
CATCH = """\
import os, signal, sys, time
log, ready = sys.argv[1], sys.argv[2]
def handler(sig, frame):
    with open(log, "a") as fh:
        fh.write(signal.Signals(sig).name + "\\n")
    time.sleep(1.0)
    with open(log, "a") as fh:
        fh.write("done\\n")
    sys.exit(42)
for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
    signal.signal(s, handler)
with open(ready + ".tmp", "w") as fh:
    fh.write(str(os.getpid()))
os.rename(ready + ".tmp", ready)
while True:
    time.sleep(0.05)
"""

@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    p = tmp_path / "envs" / "demo"
    (p / "conda-meta").mkdir(parents=True)
    (p / "bin").mkdir()
    return p


@pytest.fixture
def fake_conda(tmp_path: Path) -> Path:
    return write_fake_conda(tmp_path / "fakebin")


def job(prefix: Path, command: list[str], launcher: str = "activate", conda: Path | None = None,
        **opts: object) -> JobScript:
    options = JobOptions(job_name="t", **opts)  # type: ignore[arg-type]
    return JobScript(options=options, launcher=launcher, command=tuple(command),  # type: ignore[arg-type]
                     prefix=prefix, env_name="demo", env_version="1",
                     conda_exe=str(conda) if conda else None,
                     activation=activation_script(prefix, name="demo"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.sh"
    path.write_text(text)
    return path


# --- #SBATCH header ------------------------------------------------------------------------------

def test_header_has_every_option_in_order() -> None:
    options = JobOptions(
        job_name="train", partition="gpu-a100", constraint="cuda12.2|cuda12.4", gpus_per_node=2,
        gpu_type="a100", time="1-02:00:00", mem="16G", cpus_per_task=8, nodes="2",
        ntasks_per_node=4, account="lab", qos="high", array="0-9%2", dependency="afterok:12:13",
        output="/scratch/out-%j.txt", error="err-%A_%a.txt", signal="USR1@120", exclusive=True,
        requeue=True, mail_type="end,fail", mail_user="me@lab.org", comment="run-7",
        cpus_per_gpu=4, extra_args=("--reservation=maint",))
    lines = sbatch_lines(options)
    assert lines == [
        "--job-name=train", "--partition=gpu-a100", "--constraint=cuda12.2|cuda12.4",
        "--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=8", "--gpus-per-node=a100:2",
        "--cpus-per-gpu=4", "--mem=16G", "--time=1-02:00:00", "--exclusive", "--account=lab",
        "--qos=high", "--array=0-9%2", "--dependency=afterok:12:13",
        "--output=/scratch/out-%j.txt", "--error=err-%A_%a.txt", "--open-mode=append",
        "--requeue", "--signal=B:USR1@120", "--mail-type=END,FAIL", "--mail-user=me@lab.org",
        "--comment=run-7", "--reservation=maint"]
    # Read back from the header, the same options (the signal as sbatch was given it).
    back = from_script("#!/bin/bash\n" + "".join(f"#SBATCH {line}\n" for line in lines))
    assert back == JobOptions(**{**options.__dict__, "signal": "B:USR1@120",
                                 "mail_type": "END,FAIL"})


def test_gpus_is_per_job_and_gpus_per_node_per_node() -> None:
    assert "--gpus=3" in sbatch_lines(JobOptions(job_name="x", gpus=3))
    assert "--gpus=a100:3" in sbatch_lines(JobOptions(job_name="x", gpus=3, gpu_type="a100"))
    assert "--gpus-per-node=1" in sbatch_lines(JobOptions(job_name="x", gpus_per_node=1))
    assert not any(s.startswith("--gpu") for s in sbatch_lines(JobOptions(job_name="x")))
    assert not any(s.startswith("--gpu") for s in sbatch_lines(JobOptions(job_name="x", gpus=0)))
    # Tasks: sbatch's arithmetic, which decides whether the program runs under srun.
    assert JobOptions(nodes="2", ntasks_per_node=2).tasks == 4
    assert JobOptions(ntasks=3).tasks == 3 and JobOptions().tasks == 1
    assert JobOptions(nodes="2", gpus=3).gpus_per_node_wanted == 2


def test_header_reader_keeps_unknown_options_and_short_forms() -> None:
    opts = from_script("#!/bin/bash\n#SBATCH -p cpu -J j1 -o out-%j -n 2\n#SBATCH --gres=gpu:1\n"
                       "echo\n#SBATCH --time=5\n")
    assert (opts.partition, opts.job_name, opts.output, opts.ntasks) == ("cpu", "j1", "out-%j", 2)
    assert opts.extra_args == ("--gres=gpu:1",) and opts.time is None  # after the first command


def test_signal_keeps_explicit_batch_or_r_prefix() -> None:
    assert "--signal=B:TERM@60" in sbatch_lines(JobOptions(job_name="x", signal="B:TERM@60"))
    assert "--signal=R:USR2" in sbatch_lines(JobOptions(job_name="x", signal="R:USR2"))
    # Names sbatch knows, any case, with SIG; numbers; the 16-bit limit on the seconds.
    for value in ("usr1@90", "SIGTERM", "13@60", "RB:XCPU", "USR2@65535"):
        assert sbatch_lines(JobOptions(job_name="x", signal=value))[-1].startswith("--signal=")


def test_node_counts_start_at_one() -> None:
    assert "--nodes=1-4" in sbatch_lines(JobOptions(job_name="x", nodes="1-4"))
    assert "--nodes=2" in sbatch_lines(JobOptions(job_name="x", nodes="2"))


@pytest.mark.parametrize(("field", "value", "flag"), [
    ("time", "10\n#SBATCH --partition=evil", "--time"),
    ("time", "ten minutes", "--time"),
    ("mem", "16 G", "--mem"),
    ("partition", "cpu --exclusive", "--partition"),
    ("job_name", "a\nb", "--job-name"),
    ("job_name", "my job", "--job-name"),
    ("account", "lab;rm", "--account"),
    ("output", "/tmp/$(id)", "--output"),
    ("output", "/tmp/with space", "--output"),
    ("array", "1-3 --wrap=x", "--array"),
    ("dependency", "afterok:1\n", "--dependency"),
    ("constraint", "cuda12.4'", "--constraint"),
    ("signal", "USR1@60;id", "--signal"),
    ("gpu_type", "a100:2", "--gpu-type"),
    ("mail_type", "END,SOMETIMES", "--mail-type"),
    ("mail_user", "a b@c", "--mail-user"),
    ("comment", "two words", "--comment"),
    ("signal", "FOO@60", "--signal"),
    ("signal", "WINCH", "--signal"),
    ("signal", "USR1@65536", "--signal"),
    ("signal", "X:USR1", "--signal"),
    ("nodes", "0", "--nodes"),
    ("nodes", "0-2", "--nodes"),
    ("nodes", "3-2", "--nodes"),
])
def test_bad_sbatch_values_are_rejected(field: str, value: str, flag: str) -> None:
    opts: dict[str, object] = {"job_name": "x", "gpus": 1, field: value}
    with pytest.raises(InvalidInput) as err:
        sbatch_lines(JobOptions(**opts))  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith(flag) and "\n" not in message


@pytest.mark.parametrize(("name", "hint"), [
    ("my job", "spaces are not allowed (Slurm's job completion log cannot record them); "
               "e.g. --job-name my_job"),
    ("a$b", "e.g. --job-name a_b"),
    ("x" * 129, "at most 128"),
])
def test_job_name_errors_say_what_would_work(name: str, hint: str) -> None:
    with pytest.raises(InvalidInput) as err:
        sbatch_lines(JobOptions(job_name=name))
    assert hint in str(err.value) and str(err.value).startswith("--job-name")


@pytest.mark.parametrize("arg", ["exclusive", "--mail-user=a b", "--comment=$(id)", "--x\n--y",
                                 "--wrap=rm -rf", "--wrap=id"])
def test_bad_sbatch_args_are_rejected(arg: str) -> None:
    with pytest.raises(InvalidInput, match="--sbatch-arg"):
        sbatch_lines(JobOptions(job_name="x", extra_args=(arg,)))


@pytest.mark.parametrize("bad", [0, -1])
def test_counts_must_be_positive(bad: int) -> None:
    with pytest.raises(InvalidInput, match="--cpus-per-task"):
        sbatch_lines(JobOptions(job_name="x", cpus_per_task=bad))


# --- rendering ------------------------------------------------------------------------------------

def test_render_activate_script(prefix: Path) -> None:
    text = render_job_script(job(prefix, ["python", "train.py", "--lr", "0.1"], partition="cpu"))
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1:3] == ["#SBATCH --job-name=t", "#SBATCH --partition=cpu"]
    assert f"export CONDA_PREFIX={prefix}" in text
    assert lines[-1] == 'exec "${hpcenv_cmd[@]}"'
    assert "conda" not in text.split("hpcenv_cmd=", 1)[1].split("exec")[0].replace("CONDA", "")


def test_render_conda_run_script(prefix: Path) -> None:
    text = render_job_script(job(prefix, ["python", "x.py"], "conda-run", Path("/opt/conda/bin/conda")))
    assert f"/opt/conda/bin/conda run -p {prefix} --no-capture-output /bin/bash \"$0\" --hpcenv-exec" in text
    for sig in ("TERM", "INT", "HUP", "USR1", "USR2"):
        assert f"trap 'hpcenv_forward {sig}' {sig}" in text
    assert "export CONDA_PREFIX" not in text  # conda run activates, not hpcenv
    # Why -p PREFIX and not -n NAME (the wording) is said in the script itself.
    assert ("# `conda run -p PREFIX`, not `-n demo`: the job runs the very build it was routed "
            "for\n# (demo version 1), even if the name is rebuilt") in text


def test_conda_run_needs_conda_exe(prefix: Path) -> None:
    with pytest.raises(InvalidInput, match="conda_exe"):
        render_job_script(job(prefix, ["true"], "conda-run"))


def test_site_template_dir_overrides_one_part(prefix: Path, tmp_path: Path) -> None:
    site_dir = tmp_path / "site-templates"
    site_dir.mkdir()
    (site_dir / "sbatch_header.sh.j2").write_text(
        "{% for line in sbatch %}#SBATCH {{ line }}\n{% endfor %}#SBATCH --comment=site\n")
    text = render_job_script(job(prefix, ["true"]), templates_dir=site_dir)
    assert "#SBATCH --comment=site" in text
    assert 'exec "${hpcenv_cmd[@]}"' in text  # the rest still comes from the shipped templates


# A part only Jinja2 renders (its own `trim` filter): the shipped templates keep to the subset
# hpcenv renders without Jinja2, and so never reach its cache.
JINJA2_HEADER = "{% for line in sbatch %}#SBATCH {{ line | trim }}\n{% endfor %}#SBATCH --comment=one\n"


def test_compiled_templates_are_cached_and_never_served_stale(prefix: Path, tmp_path: Path) -> None:
    site_dir, cache = tmp_path / "site-templates", tmp_path / "cache"
    site_dir.mkdir()
    header = site_dir / "sbatch_header.sh.j2"
    header.write_text(JINJA2_HEADER)
    plain = render_job_script(job(prefix, ["true"]), templates_dir=site_dir)
    first = render_job_script(job(prefix, ["true"]), templates_dir=site_dir, cache_dir=cache)
    assert first == plain and "--comment=one" in first
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) >= 2 and cache.stat().st_mode & 0o777 == 0o700  # job.sh.j2 and its parts
    # A template edited after it was cached is compiled afresh, whatever its mtime says.
    header.write_text(header.read_text().replace("--comment=one", "--comment=two"))
    os.utime(header, (0, 0))
    second = render_job_script(job(prefix, ["true"]), templates_dir=site_dir, cache_dir=cache)
    assert "--comment=two" in second and "--comment=one" not in second
    assert second == render_job_script(job(prefix, ["true"]), templates_dir=site_dir)


def test_a_damaged_or_unwritable_template_cache_only_costs_a_compile(prefix: Path,
                                                                     tmp_path: Path) -> None:
    cache, site_dir = tmp_path / "cache", tmp_path / "site-templates"
    site_dir.mkdir()
    (site_dir / "sbatch_header.sh.j2").write_text(JINJA2_HEADER)
    expected = render_job_script(job(prefix, ["true"]), templates_dir=site_dir, cache_dir=cache)
    for entry in cache.iterdir():
        entry.write_bytes(entry.read_bytes()[:40])  # cut short: magic and checksum only
    assert render_job_script(job(prefix, ["true"]), templates_dir=site_dir,
                             cache_dir=cache) == expected
    for entry in cache.iterdir():
        entry.unlink()

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:  # where jinja2 writes a new entry
        mp.setattr(tempfile, "NamedTemporaryFile", disk_full)
        assert render_job_script(job(prefix, ["true"]), templates_dir=site_dir,
                                 cache_dir=cache) == expected
    assert not any(cache.iterdir())


def test_template_errors_name_the_file(prefix: Path, tmp_path: Path) -> None:
    site_dir = tmp_path / "t"
    site_dir.mkdir()
    (site_dir / "job.sh.j2").write_text("#!/bin/bash\n{{ no_such_variable }}\n")
    with pytest.raises(InvalidInput, match="job.sh.j2:2: job template error"):
        render_job_script(job(prefix, ["true"]), templates_dir=site_dir)


def test_comment_lines_cannot_be_broken_out_of(tmp_path: Path) -> None:
    evil = tmp_path / "x\ntouch pwned"
    (evil / "conda-meta").mkdir(parents=True)
    text = render_job_script(JobScript(JobOptions(job_name="t"), "activate", ("true",), evil,
                                       "demo", activation=""))
    assert "\ntouch pwned" not in text.split("hpcenv_cmd=")[0]


# --- running the scripts ---------------------------------------------------------------------------

@pytest.mark.parametrize("launcher", ["activate", "conda-run"])
def test_arguments_arrive_verbatim_and_never_run(launcher: str, prefix: Path, fake_conda: Path,
                                                 tmp_path: Path) -> None:
    prog = tmp_path / "show.py"
    prog.write_text(SHOW_ARGS)
    out = tmp_path / "out.json"
    script = write(tmp_path, render_job_script(
        job(prefix, [sys.executable, str(prog), str(out), *NASTY], launcher, fake_conda)))
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {**os.environ, "PATH": f"{fake_conda.parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(script)], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["argv"] == NASTY
    assert data["conda_prefix"] == str(prefix)
    assert list(workdir.iterdir()) == []  # nothing got executed


def test_exit_status_is_the_programs(prefix: Path, fake_conda: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{fake_conda.parent}:{os.environ['PATH']}"}
    for launcher in ("activate", "conda-run"):
        script = write(tmp_path, render_job_script(
            job(prefix, ["bash", "-c", "exit 7"], launcher, fake_conda)))
        assert subprocess.run(["bash", str(script)], env=env, timeout=60).returncode == 7


def _start(script: Path, tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(["bash", str(script)], env=env, start_new_session=True)
    ready = tmp_path / "ready"
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"program did not start (exit {proc.returncode})")
        time.sleep(0.05)
    return proc, int(ready.read_text())


def _catch_job(prefix: Path, tmp_path: Path, launcher: str, fake_conda: Path) -> Path:
    prog = tmp_path / "catch.py"
    prog.write_text(CATCH)
    return write(tmp_path, render_job_script(job(
        prefix, [sys.executable, str(prog), str(tmp_path / "log"), str(tmp_path / "ready")],
        launcher, fake_conda)))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_activate_launcher_program_is_the_batch_shell(sig: signal.Signals, prefix: Path,
                                                       fake_conda: Path, tmp_path: Path) -> None:
    proc, program_pid = _start(_catch_job(prefix, tmp_path, "activate", fake_conda), tmp_path,
                               dict(os.environ))
    assert program_pid == proc.pid  # exec: no process in between
    os.kill(proc.pid, sig)  # what Slurm's --signal=B: and scancel --batch do
    assert proc.wait(timeout=30) == 42
    assert (tmp_path / "log").read_text().splitlines() == [sig.name, "done"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_conda_run_wrapper_forwards_signals_to_the_program(sig: signal.Signals, prefix: Path,
                                                           fake_conda: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{fake_conda.parent}:{os.environ['PATH']}"}
    proc, program_pid = _start(_catch_job(prefix, tmp_path, "conda-run", fake_conda), tmp_path, env)
    assert program_pid != proc.pid  # conda sits in between
    os.kill(proc.pid, sig)  # only the batch shell, as --signal=B: does
    assert proc.wait(timeout=30) == 42
    assert (tmp_path / "log").read_text().splitlines() == [sig.name, "done"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_conda_run_wrapper_outlives_a_killed_conda(sig: signal.Signals, prefix: Path,
                                                   fake_conda: Path, tmp_path: Path) -> None:
    # A signal to every process (scancel --full, the time limit) kills conda first; the batch
    # shell must still wait for the program's graceful exit (or Slurm would kill it with the
    # job) and end with the program's exit status, not conda's.
    env = {**os.environ, "PATH": f"{fake_conda.parent}:{os.environ['PATH']}"}
    proc, _ = _start(_catch_job(prefix, tmp_path, "conda-run", fake_conda), tmp_path, env)
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=30) == 42
    log = (tmp_path / "log").read_text().splitlines()
    assert log[0] == sig.name and log[-1] == "done"


def test_default_sigint_handling_survives_the_background_start(prefix: Path, fake_conda: Path,
                                                               tmp_path: Path) -> None:
    # bash starts background commands with SIGINT ignored; the program must not inherit that.
    prog = tmp_path / "h.py"
    prog.write_text("import signal, sys\nprint(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    env = {**os.environ, "PATH": f"{fake_conda.parent}:{os.environ['PATH']}"}
    script = write(tmp_path, render_job_script(job(prefix, [sys.executable, str(prog)], "conda-run",
                                                   fake_conda)))
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "True", proc.stderr
