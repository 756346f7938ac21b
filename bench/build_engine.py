"""build_engine: `hpcenv env build` against the engine's own floor (issue 10), and what the
package-cache check costs (issue 12).

Anchors, measured in the same run against the same demo channel:

* **py-rattler alone**: one python script doing what a build's engine work is, and nothing
  else (the builds' own ``seconds``, the time inside ``build_env``, are shown against it too:
  the rest is the CLI's start-up, the part a cache hit also pays): ``import rattler``, solve the spec (``python``, ``hpcdemo-kernels``, ``hpcdemo-tools``)
  and install it into a new prefix, with a warm package cache (one earlier install) and with an
  empty one.  A new ``hpcenv env build`` of a new env is timed the same way (the console
  script, a new env name each run, so each is a real build) with a warm and an empty cache,
  each run right after an anchor run (on a shared machine the load moves between runs: taking
  turns keeps both sides under the same load).
* **one build** for 32 simultaneous builds of one new spec (one builds, 31 wait and reuse):
  target 1.3x; **one hit** (a build that finds the env ready) for 32 simultaneous hits:
  target 3x.  32 simultaneous ``python -c pass`` show what 32 interpreter starts alone cost on
  this machine's cores.
* **the check of a new env against the packages' hashes** (``check_env``, in this process on a
  fresh build's prefix): with no record (every file hashed: a user's first build from a cache)
  and with the record a first build leaves (a repeat: one ``lstat`` per file), against the
  warm-cache build itself.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import (
    BUILD_NOTE,
    HPCENV,
    PYTHON,
    BenchResult,
    Check,
    build_argv,
    build_once,
    demo_channel,
    parse_build_output,
    ratio_target,
    scratch,
    timed_metric,
    write_site,
)

SPECS = ("python=3.11", "hpcdemo-kernels", "hpcdemo-tools")
RUNS_WARM = 9
RUNS_COLD = 9
CONCURRENT = 32
TIMEOUT_S = 600

# The floor: the engine work of a build in one script, nothing of hpcenv.
_RATTLER_SCRIPT = """
import asyncio, os, sys
from rattler import Gateway, MatchSpec, install, solve
channel, cache, prefix, repodata = sys.argv[1:5]
async def main():
    records = await solve(sources=[channel], specs=[MatchSpec(s) for s in sys.argv[5:]],
                          gateway=Gateway(cache_dir=repodata), platforms=["linux-64", "noarch"])
    await install(records, target_prefix=prefix, cache_dir=cache, show_progress=False)
asyncio.run(main())
sys.stdout.flush()
os._exit(0)
"""


def _spec_file(directory: Path, name: str) -> Path:
    path = directory / f"{name}.yml"
    path.write_text(f"name: {name}\ndependencies:\n" + "".join(f"  - {s}\n" for s in SPECS))
    return path


def _rattler_once(channel_url: str, cache: Path, prefix: Path, repodata: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([str(PYTHON), "-c", _RATTLER_SCRIPT, channel_url, str(cache),
                           str(prefix), str(repodata), *SPECS], capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"py-rattler anchor failed: {proc.stderr[-800:]}")
    return seconds


def _stampede(argv: list[str]) -> tuple[list[subprocess.CompletedProcess[str]], float]:
    """``CONCURRENT`` copies of ``argv`` started at once; their results and the wall time."""
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(CONCURRENT)]

    def wait(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        done = list(pool.map(wait, procs))
    return done, time.perf_counter() - start


def run() -> BenchResult:
    from hpcenv.site.config import load_site
    from hpcenv.store.cache_integrity import VerifiedFiles, check_env

    result = BenchResult("build_engine")
    channel = demo_channel()
    with scratch("engine") as root:
        specs = root / "specs"
        specs.mkdir()
        # --- py-rattler alone and hpcenv, taking turns (a load change moves both sides):
        # cold (a fresh cache, and for hpcenv a fresh site, each), then warm (one cache, one
        # site, a new env each) -------------------------------------------------------------
        anchor_cache = root / "anchor-pkgs"
        anchor_cold, cold, cold_inside = [], [], []
        for i in range(RUNS_COLD):
            # A cold run writes ~70 MiB; flushed here, untimed, so that the write-back of one
            # run never lands in the next (the anchor would pay for hpcenv's and vice versa).
            os.sync()
            anchor_cold.append(_rattler_once(channel.url, root / f"anchor-cold{i}",
                                             root / f"anchor-c{i}", root / f"anchor-repo{i}"))
            site = write_site(root / f"cold{i}", channel)
            os.sync()
            seconds, out = build_once(site, _spec_file(specs, f"cold{i}"))
            cold.append(seconds)
            cold_inside.append(out["seconds"])
        _rattler_once(channel.url, anchor_cache, root / "anchor-warmup", root / "anchor-repo")
        site = write_site(root / "warm", channel)
        build_once(site, _spec_file(specs, "warmup"))
        anchor_warm, warm, warm_inside, prefixes = [], [], [], []
        for i in range(RUNS_WARM):
            anchor_warm.append(_rattler_once(channel.url, anchor_cache, root / f"anchor-w{i}",
                                             root / "anchor-repo"))
            seconds, out = build_once(site, _spec_file(specs, f"warm{i}"))
            warm.append(seconds)
            warm_inside.append(out["seconds"])
            prefixes.append(Path(out["prefix"]))
        one_hit = [build_once(site, _spec_file(specs, "warm0"))[0] for _ in range(5)]
        # --- 32 at once: one new spec; then 32 hits of it -------------------------------------
        stampede_spec = _spec_file(specs, "stampede")
        outputs, stampede_wall = _stampede(build_argv(site, stampede_spec))
        hits, hits_wall = _stampede(build_argv(site, stampede_spec))
        _, bare_wall = _stampede([str(PYTHON), "-c", "pass"])
        # --- the cache check on a fresh prefix: no record, then the record it leaves ----------
        state = Path(tempfile.mkdtemp(dir=root))
        first, repeat = [], []
        for prefix in prefixes:
            record = VerifiedFiles.load(state / f"{prefix.name}.json")
            start = time.perf_counter()
            bad = check_env(prefix, record)
            first.append(time.perf_counter() - start)
            start = time.perf_counter()
            bad += check_env(prefix, record)
            repeat.append(time.perf_counter() - start)
            if bad:
                raise RuntimeError(f"cache check found tampering in a clean build: {bad[0]}")
        files = sum(1 for _ in prefixes[0].rglob("*"))
        load_site(site)  # the site is valid as written (the builds above used it)

    failed = [o.stderr for o in outputs + hits if o.returncode != 0]
    parsed = [parse_build_output(o.stdout) for o in outputs if o.returncode == 0]
    statuses = Counter(r["status"] for r in parsed)
    hit_statuses = Counter(parse_build_output(o.stdout)["status"] for o in hits
                           if o.returncode == 0)
    warm_med, anchor_warm_med = statistics.median(warm), statistics.median(anchor_warm)
    cold_med, anchor_cold_med = statistics.median(cold), statistics.median(anchor_cold)
    one_build, hit = warm_med, statistics.median(one_hit)
    result.metrics += [
        timed_metric("py-rattler solve+install, warm cache", anchor_warm, "ms"),
        timed_metric("env build, new env, warm cache", warm, "ms", baseline=anchor_warm,
                     baseline_name="py-rattler warm"),
        timed_metric("  of which inside build_env (JSON seconds)", warm_inside, "ms",
                     baseline=anchor_warm, baseline_name="py-rattler warm"),
        timed_metric("py-rattler solve+install, empty cache", anchor_cold, "ms"),
        timed_metric("env build, new env, empty cache", cold, "ms", baseline=anchor_cold,
                     baseline_name="py-rattler cold"),
        timed_metric("  of which inside build_env (JSON seconds)", cold_inside, "ms",
                     baseline=anchor_cold, baseline_name="py-rattler cold"),
        timed_metric(f"{CONCURRENT} concurrent builds of one new spec, all done",
                     [stampede_wall], "ms", baseline=one_build, baseline_name="one build"),
        timed_metric("one hit (env build of a ready env)", one_hit, "ms"),
        timed_metric(f"{CONCURRENT} concurrent hits, all done", [hits_wall], "ms",
                     baseline=hit, baseline_name="one hit"),
        timed_metric(f"{CONCURRENT} concurrent `python -c pass`", [bare_wall], "ms",
                     baseline=hit, baseline_name="one hit"),
        timed_metric(f"cache check of a new env ({files} paths), no record yet", first, "ms",
                     baseline=warm, baseline_name="warm build"),
        timed_metric("cache check, repeat (the record a first check leaves)", repeat, "ms",
                     baseline=warm, baseline_name="warm build"),
    ]
    result.checks += [
        ratio_target("warm-cache build vs py-rattler", warm_med / anchor_warm_med, 1.3),
        ratio_target("empty-cache build vs py-rattler", cold_med / anchor_cold_med, 1.2),
        ratio_target(f"{CONCURRENT} concurrent builds vs one", stampede_wall / one_build, 1.3),
        ratio_target(f"{CONCURRENT} concurrent hits vs one", hits_wall / hit, 3.0),
        Check("every build exited 0", not failed,
              f"{len(failed)} failed; first: {' '.join(failed[0].split())[-300:]}" if failed
              else "all", kind="invariant"),
        Check("the stampede built once", statuses.get("built", 0) == 1,
              ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())), kind="invariant"),
        Check("every hit reused", hit_statuses.get("reused", 0) == CONCURRENT,
              ", ".join(f"{n} {s}" for s, n in sorted(hit_statuses.items())), kind="invariant"),
    ]
    result.notes += [
        BUILD_NOTE,
        f"specs: {', '.join(SPECS)}; py-rattler anchor: one `python -c` script (import rattler, "
        "solve, install), see bench/build_engine.py",
        f"{CONCURRENT} concurrent hits are {CONCURRENT} interpreters on {_cores()} cores: "
        f"compare with {CONCURRENT} concurrent `python -c pass`",
        f"console script: {HPCENV}",
    ]
    return result


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


if __name__ == "__main__":
    from common import format_result, run_timed

    print(format_result(run_timed(run)))
    sys.exit(0)
