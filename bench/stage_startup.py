"""stage_startup: a job's start-up from the shared prefix against a node-local staged copy.

Issue 11: every module a job imports from a shared (parallel) filesystem costs metadata calls
there (``stat``, ``openat``, ``readlink`` ... each a round trip to the metadata server), and a
job on hundreds of nodes multiplies them.  ``submit --stage`` reads one pack per node instead.

Measured on the real job scripts ``hpcenv submit`` renders (``--dry-run``, then run with bash
as the batch shell would), for an env with python, pip, the demo packages and a ``pip:``
section, running a program that imports every package in the env (each distribution in
site-packages with all its submodules, and every standard-library module), then prints its
first line:

- file-system calls naming the shared filesystem (the site dir: envs and packs), counted from
  ``strace -f -e trace=%file`` over the whole job (bash, tar, zstd, the relocating python, the
  program), and every syscall of the job (``strace -f -c``);
- wall time from the job script's start to the program's first line.

Three cases: unstaged (the baseline), staged cold (the first job on a node: unpack + relocate),
staged warm (a later job on the node: the copy is there).  Here the "shared filesystem" is the
local disk, where a metadata call costs microseconds; on Lustre or GPFS each costs a network
round trip, which is what the call counts stand for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from common import BenchResult, Check, Metric, demo_channel, scratch, timed_metric

RUNS = 5
SPEC = """\
name: manyfiles
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - hpcdemo-tools
  - pip
  - pip:
    - hpcdemo_extra
"""

# Imports every distribution's modules and the standard library, then prints one line.
PROGRAM = r'''
import importlib, os, pkgutil, sys, sysconfig
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__",
        "pydoc_data", "lib2to3", "ensurepip", "venv", "test"}
count = 0
def load(name):
    global count
    if name.endswith("__main__"):
        return  # runs a program (unittest's runs tests)
    try:
        importlib.import_module(name)
        count += 1
    except BaseException:
        pass
stdout, sys.stdout = sys.stdout, open(os.devnull, "w")  # what modules print while imported
for name in sorted(sys.stdlib_module_names - SKIP):
    load(name)
site = sysconfig.get_paths()["purelib"]
for info in pkgutil.iter_modules([site]):
    load(info.name)
    module = sys.modules.get(info.name)
    if info.ispkg and module is not None:
        for sub in pkgutil.walk_packages(module.__path__, info.name + ".", onerror=lambda n: None):
            load(sub.name)
sys.stdout = stdout
print(f"imported {count} modules from {sys.prefix}", flush=True)
'''


def _job_script(site, program: Path, workdir: Path, *, stage: bool) -> Path:
    from hpcenv.jobs.submit import SubmitOptions, submit

    result = submit(["python", str(program)], env_name="manyfiles", site=site, dry_run=True,
                    options=SubmitOptions(workdir=workdir, stage=stage))
    path = workdir / ("staged.sh" if stage else "shared.sh")
    path.write_text(result.script_text)
    return path


def _first_line_seconds(script: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    seconds = time.perf_counter() - start
    _out, err = proc.communicate()
    if proc.returncode != 0 or not line.startswith("imported "):
        raise RuntimeError(f"{script} failed (exit {proc.returncode}): {err[-500:]}")
    return seconds, line.strip()


def _shared_fs_calls(script: Path, env: dict[str, str], shared: Path, log: Path) -> int:
    """Path-based file-system calls naming ``shared`` in one run of ``script``."""
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file", "-o", str(log), "bash",
                    str(script)], env=env, check=True, capture_output=True)
    needle = f'"{shared}/'
    on_shared = sum(1 for line in log.read_text(errors="replace").splitlines() if needle in line)
    return on_shared


def _total_syscalls(script: Path, env: dict[str, str], log: Path) -> int:
    subprocess.run(["strace", "-f", "-c", "-o", str(log), "bash", str(script)], env=env,
                   check=True, capture_output=True)
    match = re.search(r"^100\.00\s+\S+\s+\S+\s+(\d+)", log.read_text(), re.M)
    return int(match.group(1)) if match else 0


def run() -> BenchResult:
    from hpcenv.build.builder import build_env
    from hpcenv.demo.site import write_demo_site
    from hpcenv.site.config import load_site
    from hpcenv.spec.environment import parse_spec
    from hpcenv.store import store_for
    from hpcenv.store.pack import create_pack

    result = BenchResult("stage_startup")
    with scratch("stage") as root:
        shared, node, work = root / "shared", root / "node", root / "work"
        work.mkdir()
        site = load_site(write_demo_site(shared, demo_channel(), stage_dir=str(node)))
        record = build_env(parse_spec(SPEC), site).record
        pack = create_pack(store_for(site), record)
        program = work / "import_all.py"
        program.write_text(PROGRAM)
        unstaged = _job_script(site, program, work, stage=False)
        staged = _job_script(site, program, work, stage=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
               "TMPDIR": str(work)}

        def cold() -> None:
            shutil.rmtree(node, ignore_errors=True)

        times: dict[str, list[float]] = {"unstaged": [], "cold": [], "warm": []}
        lines: dict[str, str] = {}
        for _ in range(RUNS):  # interleaved, so machine load hits every case alike
            seconds, lines["unstaged"] = _first_line_seconds(unstaged, env)
            times["unstaged"].append(seconds)
            cold()
            seconds, lines["cold"] = _first_line_seconds(staged, env)
            times["cold"].append(seconds)
            seconds, lines["warm"] = _first_line_seconds(staged, env)
            times["warm"].append(seconds)

        calls: dict[str, int] = {}
        totals: dict[str, int] = {}
        if shutil.which("strace"):
            calls["unstaged"] = _shared_fs_calls(unstaged, env, shared, work / "u.log")
            totals["unstaged"] = _total_syscalls(unstaged, env, work / "u.c")
            cold()
            calls["cold"] = _shared_fs_calls(staged, env, shared, work / "c.log")
            cold()
            totals["cold"] = _total_syscalls(staged, env, work / "c.c")
            calls["warm"] = _shared_fs_calls(staged, env, shared, work / "w.log")
            totals["warm"] = _total_syscalls(staged, env, work / "w.c")
        manifest = pack.manifest

    count = lines["unstaged"].split()[1]
    result.checks.append(Check(
        "staged jobs run from the node-local copy, the unstaged one from the shared prefix",
        str(node) in lines["cold"] and str(node) in lines["warm"]
        and record.prefix in lines["unstaged"], f"first lines: {lines}", kind="invariant"))
    result.checks.append(Check(
        "every case imports the same modules",
        len({line.split()[1] for line in lines.values()}) == 1, str(lines), kind="invariant"))
    if calls:
        base = float(calls["unstaged"])
        result.metrics += [
            Metric("shared-FS file calls, unstaged", calls["unstaged"], "calls", base,
                   "unstaged"),
            Metric("shared-FS file calls, staged (first job on the node)", calls["cold"],
                   "calls", base, "unstaged"),
            Metric("shared-FS file calls, staged (copy already on the node)", calls["warm"],
                   "calls", base, "unstaged"),
            Metric("all syscalls of the job, unstaged", totals["unstaged"], "calls",
                   float(totals["unstaged"]), "unstaged"),
            Metric("all syscalls of the job, staged (first job)", totals["cold"], "calls",
                   float(totals["unstaged"]), "unstaged"),
            Metric("all syscalls of the job, staged (copy there)", totals["warm"], "calls",
                   float(totals["unstaged"]), "unstaged"),
        ]
        result.checks.append(Check(
            "a staged job makes far fewer file calls on the shared filesystem (< 1/10)",
            calls["cold"] * 10 < calls["unstaged"] and calls["warm"] * 10 < calls["unstaged"],
            f"{calls}"))
    else:
        result.notes.append("strace not found: no system-call counts (apt-get install strace)")
    result.metrics += [
        timed_metric("job start to first line, unstaged", times["unstaged"],
                     baseline=times["unstaged"], baseline_name="unstaged"),
        timed_metric("job start to first line, staged (first job: unpack + relocate)",
                     times["cold"], baseline=times["unstaged"], baseline_name="unstaged"),
        timed_metric("job start to first line, staged (copy already on the node)",
                     times["warm"], baseline=times["unstaged"], baseline_name="unstaged"),
    ]
    result.notes += [
        f"env: {manifest.file_count} files, {manifest.unpacked_bytes / 2**20:.0f} MiB; pack "
        f"{pack.packed_bytes / 2**20:.1f} MiB ({manifest.compression}); the program imports "
        f"{count} modules",
        "shared FS = the site dir (envs + packs) on this machine's local disk: a metadata call "
        "costs microseconds here, a network round trip on a parallel filesystem; reading the "
        "pack is one open and a sequential stream",
        "job scripts rendered by 'hpcenv submit --dry-run' and run with bash; strace counts "
        "path-based calls (-e trace=%file) naming the site dir, over every process of the job",
    ]
    return result
