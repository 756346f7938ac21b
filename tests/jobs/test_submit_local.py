"""hpcenv submit end to end on the local executor, with real envs built from the demo channel."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import COUNT_SIGNALS, run_with_tty_stderr, write_fake_conda

from hpcenv.demo.site import write_demo_site
from hpcenv.errors import InvalidInput, NotFound
from hpcenv.jobs.control import (
    job_exit_code,
    list_submissions,
    load_submission,
    wait_for,
)
from hpcenv.jobs.submit import SubmitOptions, site_scheduler, submit
from hpcenv.site.config import SiteConfig, load_site

# Carriage returns too: the local executor copies the job script byte for byte, as sbatch does.
NASTY = ["$(touch pwned)", "`touch pwned2`", "line1\nline2", "'; touch pwned3 #", "", "*",
         "${HOME}", "--lr=0.1", "cr\rinside", "crlf\r\n", "\r"]

SHOW = """\
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "prefix": sys.prefix,
                  "conda_prefix": os.environ.get("CONDA_PREFIX"),
                  "job_id": os.environ.get("SLURM_JOB_ID")}))
sys.exit(int(os.environ.get("EXIT_WITH", "0")))
"""

CATCH = """\
import os, signal, sys, time
def handler(sig, frame):
    print("got", signal.Signals(sig).name, flush=True)
    sys.exit(42)
signal.signal(signal.SIGUSR1, handler)
print("ready", os.getpid(), flush=True)
for _ in range(600):
    time.sleep(0.1)
sys.exit(1)
"""

CPU_ENV = "name: cpuenv\ndependencies:\n  - python=3.11\n  - hpcdemo-tools\n"
GPU_ENV = "name: gpuenv\ndependencies:\n  - python=3.11\n  - cuda-version=12.4\n  - hpcdemo-kernels\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, demo_channel) -> tuple[SiteConfig, Path]:
    """A local-executor site with cpuenv and gpuenv built once for the module."""
    from hpcenv.build.builder import build_env
    from hpcenv.spec.environment import parse_spec

    root = tmp_path_factory.mktemp("site")
    site = load_site(write_demo_site(root, demo_channel))
    for text in (CPU_ENV, GPU_ENV):
        build_env(parse_spec(text), site)
    return site, root


def cli(site: SiteConfig, *argv: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site.source), *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_python_script_gets_args_verbatim_in_the_env(built, tmp_path: Path) -> None:
    site, _ = built
    script = tmp_path / "show.py"
    script.write_text(SHOW)
    result = submit(script, NASTY, env_name="cpuenv", site=site,
                    options=SubmitOptions(workdir=tmp_path))
    assert result.job_id and result.partition is None and result.gpus == 0
    assert result.launcher == "activate" and result.script.is_file()
    info = wait_for(site_scheduler(site), result.job_id)
    assert info.state == "COMPLETED" and job_exit_code(info) == 0
    data = json.loads((tmp_path / f"slurm-{result.job_id}.out").read_text())
    assert data["argv"] == NASTY
    assert data["prefix"] == result.prefix == data["conda_prefix"]
    assert data["job_id"] == result.job_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["show.py", f"slurm-{result.job_id}.out"]
    [record] = list_submissions(site.state_dir, "local")
    assert (record.env, record.job_id, record.prefix) == ("cpuenv", result.job_id, result.prefix)


def test_command_mode_runs_env_binaries(built, tmp_path: Path) -> None:
    site, _ = built
    result = submit(["python", "-c", "import sys; print(sys.prefix); sys.exit(3)"], env_name="gpuenv",
                    site=site, options=SubmitOptions(workdir=tmp_path))
    info = wait_for(site_scheduler(site), result.job_id or "")
    assert job_exit_code(info) == 3
    assert (tmp_path / f"slurm-{result.job_id}.out").read_text().strip() == result.prefix
    # A CUDA env asks for a GPU; the local site lists no partitions, so the executor decides.
    assert result.gpus == 1 and "lists no partitions" in result.reason


def test_shell_script_runs_with_bash(built, tmp_path: Path) -> None:
    site, _ = built
    script = tmp_path / "job.sh"
    script.write_text('echo "$CONDA_PREFIX|$1"\n')
    result = submit(script, ["a b"], env_name="cpuenv", site=site,
                    options=SubmitOptions(workdir=tmp_path, output=str(tmp_path / "o-%j.txt")))
    wait_for(site_scheduler(site), result.job_id or "")
    assert (tmp_path / f"o-{result.job_id}.txt").read_text() == f"{result.prefix}|a b\n"


def test_missing_env_is_an_error_naming_the_fix(built, tmp_path: Path) -> None:
    site, _ = built
    script = tmp_path / "x.py"
    script.write_text("pass\n")
    with pytest.raises(NotFound, match="hpcenv env build FILE --name nosuchenv"):
        submit(script, env_name="nosuchenv", site=site, options=SubmitOptions(workdir=tmp_path))
    with pytest.raises(InvalidInput, match="no such script"):
        submit(tmp_path / "missing.py", env_name="cpuenv", site=site)


def test_env_file_next_to_script_is_built_when_missing(demo_channel, tmp_path: Path) -> None:
    site = load_site(write_demo_site(tmp_path / "site", demo_channel))
    work = tmp_path / "work"
    work.mkdir()
    (work / "fresh.yml").write_text(CPU_ENV.replace("cpuenv", "fresh"))
    script = work / "show.py"
    script.write_text(SHOW)
    messages: list[str] = []
    result = submit(script, ["x"], env_name="fresh", site=site,
                    options=SubmitOptions(workdir=work), progress=messages.append)
    assert result.env_status == "built" and any("building env fresh" in m for m in messages)
    wait_for(site_scheduler(site), result.job_id or "")
    assert json.loads((work / f"slurm-{result.job_id}.out").read_text())["prefix"] == result.prefix
    again = submit(script, env_name="fresh", site=site, options=SubmitOptions(workdir=work),
                   dry_run=True)
    assert again.env_status == "existing" and again.prefix == result.prefix


def test_cli_submit_wait_returns_the_jobs_exit_code(built, tmp_path: Path) -> None:
    site, _ = built
    script = tmp_path / "show.py"
    script.write_text(SHOW)
    env = {**os.environ, "EXIT_WITH": "5"}
    proc = subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site.source), "submit",
                           str(script), "--env", "cpuenv", "--wait", "--", "--flag", "$(id)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 5, proc.stderr
    assert "COMPLETED" in proc.stderr or "FAILED" in proc.stderr
    out = next(tmp_path.glob("slurm-*.out"))
    assert json.loads(out.read_text())["argv"] == ["--flag", "$(id)"]

    as_json = subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site.source), "--json",
                              "submit", str(script), "--env", "cpuenv", "--wait"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert as_json.returncode == 5
    data = json.loads(as_json.stdout)  # exactly one document
    assert data["exit_code"] == 5 and data["state"] == "FAILED" and data["env"] == "cpuenv"


def test_a_submit_dir_with_spaces_and_quotes_needs_no_output_option(built, tmp_path: Path) -> None:
    site, _ = built
    workdir = tmp_path / "my runs" / "it's \"q\""
    workdir.mkdir(parents=True)
    (workdir / "show.py").write_text(SHOW)
    proc = cli(site, "submit", "show.py", "--env", "cpuenv", "--wait", "--", "a b", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    out = next(workdir.glob("slurm-*.out"))
    assert json.loads(out.read_text())["argv"] == ["a b"]
    # logs finds the output through the record, relative to the submit dir.
    job_id = out.name.removeprefix("slurm-").removesuffix(".out")
    logs = cli(site, "logs", job_id, cwd=tmp_path)
    assert logs.returncode == 0 and '"argv": ["a b"]' in logs.stdout, logs.stderr


def test_cli_json_dry_run_and_job_control(built, tmp_path: Path) -> None:
    site, _ = built
    script = tmp_path / "catch.py"
    script.write_text(CATCH)
    before = len(list_submissions(site.state_dir, "local"))

    dry = cli(site, "submit", str(script), "--env", "cpuenv", "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("#!/bin/bash\n#SBATCH --job-name=catch\n")
    assert "# reason:" in dry.stdout and "dry run: nothing submitted" in dry.stdout
    assert len(list_submissions(site.state_dir, "local")) == before

    sub = cli(site, "--json", "submit", str(script), "--env", "cpuenv", "--time", "5", cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    data = json.loads(sub.stdout)
    assert {"job_id", "partition", "constraint", "env", "prefix", "script"} <= set(data)
    job_id = data["job_id"]
    assert Path(data["script"]).read_text().count("#SBATCH --time=5") == 1

    out = tmp_path / f"slurm-{job_id}.out"
    deadline = time.monotonic() + 60
    while "ready" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "job did not start"
        time.sleep(0.1)

    jobs = cli(site, "--json", "jobs", cwd=tmp_path)
    mine = {j["job_id"]: j for j in json.loads(jobs.stdout)}
    assert mine[job_id]["env"] == "cpuenv" and mine[job_id]["state"] == "RUNNING"
    human = cli(site, "jobs", cwd=tmp_path).stdout
    assert "cpuenv v1" in human and job_id in human

    sig = cli(site, "cancel", job_id, "--signal", "USR1", cwd=tmp_path)
    assert sig.returncode == 0, sig.stderr
    follow = cli(site, "logs", job_id, "-f", cwd=tmp_path, timeout=60)
    assert follow.returncode == 0
    assert follow.stdout.splitlines()[-1] == "got SIGUSR1"
    # Under --json the output is one JSON document, not the raw text.
    logs = json.loads(cli(site, "--json", "logs", job_id, cwd=tmp_path).stdout)
    assert logs["stdout"] == follow.stdout and logs["finished"] is True
    assert logs["stdout_path"] == str(out)

    status = json.loads(cli(site, "--json", "status", job_id, cwd=tmp_path).stdout)
    assert status["state"] == "FAILED" and status["exit_code"] == 42
    assert status["env"] == "cpuenv" and status["prefix"] == data["prefix"]
    text = cli(site, "status", job_id, cwd=tmp_path).stdout
    assert "exit code:  42" in text

    listed = json.loads(cli(site, "--json", "jobs", "--all", cwd=tmp_path).stdout)
    assert job_id in {j["job_id"] for j in listed}


def test_cli_cancel_ends_a_running_job(built, tmp_path: Path) -> None:
    site, _ = built
    proc = cli(site, "--json", "submit", "--env", "cpuenv", "--", "sleep", "60", cwd=tmp_path)
    job_id = json.loads(proc.stdout)["job_id"]
    assert cli(site, "cancel", job_id, cwd=tmp_path).returncode == 0
    info = wait_for(site_scheduler(site), job_id)
    assert info.state == "CANCELLED"


def test_cli_errors_are_one_line_with_exit_codes(built, tmp_path: Path) -> None:
    site, _ = built
    bad = cli(site, "submit", "--env", "cpuenv", "--time", "1\n#SBATCH --x", "--", "true", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith("hpcenv: error: --time")
    missing = cli(site, "submit", "--env", "nope", "--", "true", cwd=tmp_path)
    assert missing.returncode == 1 and "hpcenv env build" in missing.stderr
    nothing = cli(site, "submit", "--env", "cpuenv", cwd=tmp_path)
    assert nothing.returncode == 2 and "nothing to run" in nothing.stderr
    before = len(list_submissions(site.state_dir, "local"))
    spaced = cli(site, "submit", "--env", "cpuenv", "--job-name", "my run", "--", "true", cwd=tmp_path)
    assert (spaced.returncode, spaced.stdout) == (2, "")
    assert spaced.stderr == ("hpcenv: error: --job-name 'my run': spaces are not allowed (Slurm's "
                             "job completion log cannot record them); e.g. --job-name my_run\n")
    # Checked before anything is built: an env file that would need a build stays unbuilt.
    (tmp_path / "fresh.yml").write_text("name: fresh\ndependencies:\n  - python=3.11\n")
    early = cli(site, "submit", "--env-file", "fresh.yml", "--job-name", "a b", "--", "true",
                cwd=tmp_path)
    assert early.returncode == 2 and "building" not in early.stderr
    assert len(list_submissions(site.state_dir, "local")) == before


def test_submit_messages_read_cleanly(built, tmp_path: Path) -> None:
    site, _ = built
    sub = cli(site, "submit", "--env", "cpuenv", "--", "true", cwd=tmp_path)
    job_id = sub.stdout.split()[2]
    assert sub.stdout == f"submitted job {job_id} to the local executor, env cpuenv v1\n"
    assert sub.stderr == ""
    for env in ("cpuenv", "gpuenv"):
        dry = cli(site, "submit", "--env", env, "--dry-run", "--", "true", cwd=tmp_path)
        tail = dry.stdout.split("# --- dry run: nothing submitted ---\n", 1)[1].splitlines()
        assert tail[:3] == ["# partition: none (the local executor has none)",
                            "# nodes:     this machine (the local executor)",
                            "# reason:    the site config lists no partitions"]
        assert tail[4] == "# launcher:  activate: hpcenv's activation inlined, then exec of the program"
        assert dry.stderr == ""


def test_env_file_runs_its_own_build_and_leaves_current_alone(demo_channel, tmp_path: Path) -> None:
    site = load_site(write_demo_site(tmp_path / "site", demo_channel))
    work = tmp_path / "work"
    work.mkdir()
    (work / "old.yml").write_text("name: lab\ndependencies:\n  - python=3.11\n")
    (work / "new.yml").write_text(CPU_ENV.replace("cpuenv", "lab"))
    (work / "unbuilt.yml").write_text(CPU_ENV.replace("cpuenv", "lab") + "  - cuda-version=12.4\n")
    for spec in ("old.yml", "new.yml"):
        assert cli(site, "env", "build", spec, cwd=work).returncode == 0
    assert cli(site, "env", "rollback", "lab", cwd=work).returncode == 0  # v1 current again

    dry = cli(site, "submit", "--env-file", "new.yml", "--dry-run", "--", "true", cwd=work)
    assert dry.returncode == 0, dry.stderr
    assert "# env:       lab v2 at " in dry.stdout
    missing = cli(site, "submit", "--env-file", "unbuilt.yml", "--dry-run", "--", "true", cwd=work)
    assert missing.returncode == 1 and "would be built from" in missing.stderr

    run = cli(site, "--json", "submit", "--env-file", "new.yml", "--wait", "--output", "out.txt",
              "--", "python", "-c", "import sys; print(sys.prefix)", cwd=work)
    assert run.returncode == 0, run.stderr
    assert "hpcenv: reusing env lab v2, built from" in run.stderr and "building" not in run.stderr
    v2 = json.loads(run.stdout)["prefix"]
    assert "lab-2-" in v2 and (work / "out.txt").read_text().strip() == v2
    shown = json.loads(cli(site, "--json", "env", "show", "lab", cwd=work).stdout)
    assert shown["version"] == 1

    # A spec never built is built for the job, still without becoming current.
    built = cli(site, "--json", "submit", "--env-file", "unbuilt.yml", "--", "true", cwd=work)
    assert built.returncode == 0 and "building env lab from" in built.stderr
    assert json.loads(built.stdout)["env_version"] == 3
    assert json.loads(cli(site, "--json", "env", "show", "lab", cwd=work).stdout)["version"] == 1


def test_bad_signal_and_counts_fail_before_anything_else(built, tmp_path: Path) -> None:
    site, _ = built
    (tmp_path / "fresh.yml").write_text("name: fresh2\ndependencies:\n  - python=3.11\n")
    before = len(list_submissions(site.state_dir, "local"))
    for option, message in ((("--signal", "FOO@60"), "--signal 'FOO@60': unknown signal 'FOO'"),
                            (("--signal", "PIPE"), "unknown signal 'PIPE'"),
                            (("--signal", "USR1@70000"), "at most 65535 seconds"),
                            (("--nodes", "0"), "--nodes '0': a job needs at least 1 node"),
                            (("--gpus", "-1"), "--gpus -1: must be 0 or more"),
                            (("--ntasks-per-node", "0"), "--ntasks-per-node 0: must be"),
                            (("--ntasks", "0"), "--ntasks 0: must be"),
                            (("--mail-type", "SOMETIMES"), "unknown mail type 'SOMETIMES'"),
                            (("--gpus", "2", "--gpus-per-node", "1"), "give one (--gpus counts")):
        bad = cli(site, "submit", "--env-file", "fresh.yml", *option, "--", "true", cwd=tmp_path)
        assert (bad.returncode, bad.stdout) == (2, ""), option
        assert bad.stderr.startswith(f"hpcenv: error: {option[0]} ") and message in bad.stderr
        assert bad.stderr.count("\n") == 1
    assert len(list_submissions(site.state_dir, "local")) == before
    assert not (Path(site.envs_dirs[0]) / "fresh2").exists()
    # cancel --signal goes through the same validator.
    assert "unknown signal 'PIPE'" in cli(site, "cancel", "1", "--signal", "PIPE", cwd=tmp_path).stderr


def test_cancel_of_an_ended_job_says_so(built, tmp_path: Path) -> None:
    site, _ = built
    job_id = json.loads(cli(site, "--json", "submit", "--env", "cpuenv", "--wait", "--", "true",
                            cwd=tmp_path).stdout)["job_id"]
    for extra, nothing in (((), "nothing to cancel"), (("--signal", "USR1"), "no signal sent")):
        proc = cli(site, "cancel", job_id, *extra, cwd=tmp_path)
        assert (proc.returncode, proc.stdout) == (1, "")
        assert proc.stderr == f"hpcenv: error: job {job_id} already ended (COMPLETED); {nothing}\n"


def test_local_executor_says_which_options_it_ignores(demo_channel, built, tmp_path: Path) -> None:
    site, root = built
    proc = cli(site, "submit", "--env", "gpuenv", "--gpus", "2", "--gpu-type", "a100", "--dry-run",
               "--", "true", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stderr == ("hpcenv: warning: the local executor runs every job on this machine and "
                           "has no GPU allocation: --gpus 2, --gpu-type a100 are ignored\n")
    plain = cli(site, "submit", "--env", "gpuenv", "--dry-run", "--", "true", cwd=tmp_path)
    assert plain.returncode == 0 and plain.stderr == ""
    unknown = cli(site, "submit", "--env", "cpuenv", "--partition", "gpu-a10", "--", "true",
                  cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("hpcenv: error: --partition gpu-a10: the local executor has "
                                     "no partitions")
    # With partitions in the site config, --partition is checked against them, then ignored.
    routed = load_site(write_demo_site(root, demo_channel, path=tmp_path / "routed.yaml",
                                       extra="partitions:\n  - {name: cpu}\n"))
    result = submit(["true"], env_name="cpuenv", site=routed, dry_run=True,
                    options=SubmitOptions(workdir=tmp_path, partition="cpu"))
    assert result.warnings == ("the local executor runs every job on this machine and has no "
                               "partitions: --partition cpu is ignored",)


def test_signal_option_renders_batch_signal(built, tmp_path: Path) -> None:
    site, _ = built
    result = submit(["true"], env_name="cpuenv", site=site, dry_run=True,
                    options=SubmitOptions(workdir=tmp_path, signal="USR1@90", time="10"))
    assert "#SBATCH --signal=B:USR1@90" in result.script_text
    assert result.job_id is None


def test_site_partitions_route_even_on_local_executor(demo_channel, built, tmp_path: Path) -> None:
    _, root = built
    routed = load_site(write_demo_site(
        root, demo_channel, path=tmp_path / "routed.yaml",
        extra="partitions:\n  - {name: cpu}\n"
              "  - {name: gpu-v100, gpu_type: v100, gpus_per_node: 2, driver: '520.61.05'}\n"
              "  - {name: gpu-h100, gpu_type: h100, gpus_per_node: 4, max_cuda: '12.8'}\n"))
    gpu = submit(["true"], env_name="gpuenv", site=routed, dry_run=True,
                 options=SubmitOptions(workdir=tmp_path))
    assert gpu.partition == "gpu-h100" and "#SBATCH --gpus-per-node=1" in gpu.script_text
    cpu = submit(["true"], env_name="cpuenv", site=routed, dry_run=True,
                 options=SubmitOptions(workdir=tmp_path))
    assert cpu.partition == "cpu"
    with pytest.raises(InvalidInput, match="--partition gpu-v100 cannot run this job"):
        submit(["true"], env_name="gpuenv", site=routed, dry_run=True,
               options=SubmitOptions(workdir=tmp_path, partition="gpu-v100"))


def test_gpu_env_naming_no_cuda_is_routed_to_a_gpu_partition(demo_channel, built,
                                                            tmp_path: Path) -> None:
    # A ROCm wheel index makes the spec a GPU spec with no CUDA version: the registry records
    # gpu_required, and submit must not send it to the CPU partition.
    from hpcenv.build.builder import build_env
    from hpcenv.spec.environment import parse_spec

    _, root = built
    routed = load_site(write_demo_site(
        root, demo_channel, path=tmp_path / "routed.yaml",
        extra="partitions:\n  - {name: cpu}\n"
              "  - {name: gpu-mi250, gpu_type: mi250, gpus_per_node: 4, max_cuda: '12.8'}\n"))
    record = build_env(parse_spec(
        "name: rocmenv\ndependencies:\n  - python=3.11\n  - hpcdemo-tools\n  - pip:\n"
        "    - --extra-index-url file:///opt/wheels/rocm6.0\n"), routed).record
    assert (record.cuda or None, record.gpu_required) == (None, True)
    result = submit(["true"], env_name="rocmenv", site=routed, dry_run=True,
                    options=SubmitOptions(workdir=tmp_path))
    assert (result.partition, result.gpus) == ("gpu-mi250", 1)
    assert "#SBATCH --gpus-per-node=1" in result.script_text
    assert "names no CUDA version" in result.reason


def test_output_directories_are_made_at_submit_or_refused(built, tmp_path: Path) -> None:
    site, _ = built
    result = submit(["echo", "hi"], env_name="cpuenv", site=site,
                    options=SubmitOptions(workdir=tmp_path, output="logs/a/%j.out",
                                          error=str(tmp_path / "errs" / "%j.err")))
    assert (tmp_path / "logs" / "a").is_dir() and (tmp_path / "errs").is_dir()
    wait_for(site_scheduler(site), result.job_id or "")
    assert (tmp_path / "logs" / "a" / f"{result.job_id}.out").read_text() == "hi\n"

    (tmp_path / "plain").write_text("a file, not a directory")
    jobs_dir = Path(site.state_dir) / "jobs"
    before = sorted(jobs_dir.iterdir()), len(list_submissions(site.state_dir, "local"))
    with pytest.raises(InvalidInput, match=r"^--output plain/x/%j.out: .*plain is not a directory"):
        submit(["true"], env_name="cpuenv", site=site,
               options=SubmitOptions(workdir=tmp_path, output="plain/x/%j.out"))
    assert (sorted(jobs_dir.iterdir()), len(list_submissions(site.state_dir, "local"))) == before


def test_kill_signal_name_validated(built, tmp_path: Path) -> None:
    site, _ = built
    bad = cli(site, "cancel", "1", "--signal", "NOPE", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown signal" in bad.stderr


@pytest.mark.parametrize("launcher", ["activate", "conda-run"])
def test_cancel_signal_reaches_the_program_exactly_once(demo_channel, built, tmp_path: Path,
                                                       launcher: str) -> None:
    # Same semantics as on Slurm (scancel --batch): the batch shell gets the signal and is (or
    # forwards to) the program; nothing else in the job is signalled, so it arrives once.
    site, root = built
    if launcher == "conda-run":
        fake = write_fake_conda(tmp_path)
        site = load_site(write_demo_site(root, demo_channel, path=tmp_path / "conda-site.yaml",
                                         launcher="conda-run", conda_exe=str(fake)))
    script = tmp_path / "count.py"
    script.write_text(COUNT_SIGNALS)
    job_id = json.loads(cli(site, "--json", "submit", str(script), "--env", "cpuenv",
                            cwd=tmp_path).stdout)["job_id"]
    out = tmp_path / f"slurm-{job_id}.out"
    deadline = time.monotonic() + 60
    while "ready" not in (out.read_text() if out.exists() else ""):
        assert time.monotonic() < deadline, "job did not start"
        time.sleep(0.1)
    assert ("conda run -p" in Path(load_submission(site.state_dir, "local", job_id).script)
            .read_text()) == (launcher == "conda-run")
    sent = cli(site, "cancel", job_id, "--signal", "USR1", cwd=tmp_path)
    assert (sent.returncode, sent.stdout) == (0, f"sent USR1 to job {job_id}\n"), sent.stderr
    info = wait_for(site_scheduler(site), job_id)
    assert (info.state, job_exit_code(info)) == ("FAILED", 41), out.read_text()


def test_wait_polls_with_backoff_reset_on_state_change() -> None:
    from hpcenv.scheduler.base import JobInfo

    states = ["PENDING"] * 4 + ["RUNNING"] * 5 + ["COMPLETED"]

    class Script:  # the scheduler's answers, one per poll
        kind = "local"

        def status(self, job_id: str) -> JobInfo:
            return JobInfo(job_id, "x", states.pop(0), exit_code=0)

    slept: list[float] = []
    info = wait_for(Script(), "1", sleep=slept.append, first=1.0, factor=2.0, most=5.0)  # type: ignore[arg-type]
    assert info.state == "COMPLETED"
    assert slept == [1.0, 2.0, 4.0, 5.0, 1.0, 2.0, 4.0, 5.0, 5.0]


def _wait_on_a_tty(site: SiteConfig, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    return run_with_tty_stderr([sys.executable, "-m", "hpcenv", "--site", str(site.source), *argv],
                               cwd=tmp_path, timeout=120)


def test_wait_shows_a_live_status_line_on_a_tty_only(built, tmp_path: Path) -> None:
    site, _ = built
    code, out, err = _wait_on_a_tty(site, tmp_path, "submit", "--env", "cpuenv", "--wait", "--",
                                    "bash", "-c", "sleep 1; exit 3")
    assert (code, out) == (3, "")
    # Rewritten in place, then ended; then where the output is.
    assert "\r\x1b[K" in err and "exit 3\r\nhpcenv: job " in err
    assert re.search(r"slurm-(\d+)\.out \(or: hpcenv logs \1\)\r\n$", err), err
    piped = cli(site, "submit", "--env", "cpuenv", "--wait", "--", "bash", "-c", "sleep 1; exit 3",
                cwd=tmp_path)
    assert piped.returncode == 3 and "\r" not in piped.stderr and "\x1b" not in piped.stderr
    ended, where = piped.stderr.splitlines()[-2:]
    assert ended.startswith("hpcenv: job ") and " FAILED (NonZeroExitCode) on local " in ended
    assert ended.endswith(" exit 3")
    job_id = ended.split()[2]
    assert where == (f"hpcenv: job {job_id} output: {tmp_path}/slurm-{job_id}.out "
                     f"(or: hpcenv logs {job_id})")
    # --json --wait: exactly one JSON document on stdout, on a TTY too.
    code, out, err = _wait_on_a_tty(site, tmp_path, "--json", "submit", "--env", "cpuenv",
                                    "--wait", "--", "true")
    assert code == 0 and json.loads(out)["state"] == "COMPLETED"


def test_options_are_never_abbreviated_and_sbatch_spellings_render(built, tmp_path: Path) -> None:
    site, _ = built
    # argparse would have read --ntask as --ntasks-per-node (or --ntasks): now it is an error.
    for word in ("--ntask", "--gpus-per", "--exclu", "--dry"):
        bad = cli(site, "submit", "--env", "cpuenv", word, "1", "--", "true", cwd=tmp_path)
        assert (bad.returncode, bad.stdout) == (2, ""), word
        assert bad.stderr.startswith(f"hpcenv: error: unknown option {word} ") and bad.stderr.count("\n") == 1
    dry = cli(site, "--json", "submit", "--env", "cpuenv", "--dry-run", "-n", "4", "-C", "ib",
              "--exclusive", "--mail-type", "end,fail", "--mail-user", "me@lab.org",
              "--comment", "run-7", "--requeue", "--cpus-per-gpu", "2", "--", "true", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    data = json.loads(dry.stdout)
    # The local executor runs one task and has no node features' choice, but renders the rest.
    assert data["options"]["exclusive"] is True and data["options"]["mail_type"] == "end,fail"
    for line in ("--constraint=ib", "--exclusive", "--mail-type=END,FAIL", "--mail-user=me@lab.org",
                 "--requeue", "--cpus-per-gpu=2", "--open-mode=append"):
        assert f"#SBATCH {line}\n" in data["script_text"], line
    # The user's comment, then the env build the job runs in (hpcenv.scheduler.build_use).
    assert f"#SBATCH --comment=run-7,hpcenv-build={Path(data['prefix']).resolve()}\n" \
        in data["script_text"]
    assert "--ntasks" not in data["script_text"] and "srun" not in data["script_text"]
    assert data["warnings"] == ["the local executor runs every job on this machine and has no "
                                "multi-task jobs (srun): --ntasks 4 is ignored"]
