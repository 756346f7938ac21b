"""concurrent_build: N simultaneous `hpcenv env build` of one spec build it exactly once.

Target (issue 3): 16 concurrent builders make one build, the others wait on the key's lock and
report `reused` with the same prefix.  The figure: the whole stampede's wall time against one
lone cold build (ideal ~1x: waiting costs nothing but the late arrivals' own start-up, shown
by N concurrent `hpcenv --version` on the same 2 cores).  The
build count is an invariant: the run exits non-zero when it is not exactly one.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from common import (
    BUILD_NOTE,
    EXAMPLES,
    HPCENV,
    BenchResult,
    Check,
    build_argv,
    build_once,
    demo_channel,
    parse_build_output,
    scratch,
    timed_metric,
    write_site,
)

SPEC = EXAMPLES / "cpu-analysis.yml"
BUILDERS = 16
TIMEOUT_S = 300


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    seconds: float      # from the common start to this process's exit


def _stampede(argv: list[str]) -> tuple[list[Outcome], float]:
    """Start ``BUILDERS`` copies of ``argv`` at once; their outcomes and the total wall time."""
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(BUILDERS)]

    def wait(proc: subprocess.Popen) -> Outcome:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        return Outcome(proc.returncode, out, err, time.perf_counter() - start)

    # One waiting thread per process, so each exit is timed when it happens.
    with ThreadPoolExecutor(BUILDERS) as pool:
        outcomes = list(pool.map(wait, procs))
    return outcomes, time.perf_counter() - start


def run() -> BenchResult:
    result = BenchResult("concurrent_build")
    channel = demo_channel()
    with scratch("single") as root:
        single, _ = build_once(write_site(root / "site", channel), SPEC)

    with scratch("stampede") as root:
        site = write_site(root / "site", channel)
        outputs, wall = _stampede(build_argv(site, SPEC))
    _, startup = _stampede([str(HPCENV), "--version"])

    failed = [o.stderr for o in outputs if o.returncode != 0]
    parsed = [(o, parse_build_output(o.stdout)) for o in outputs if o.returncode == 0]
    results = [r for _o, r in parsed]
    builder_seconds = [o.seconds for o, r in parsed if r["status"] == "built"]
    statuses = Counter(r["status"] for r in results)
    prefixes = {r["prefix"] for r in results}
    result.metrics += [
        timed_metric("one cold build", [single], "s"),
        timed_metric(f"{BUILDERS} concurrent builds, all done", [wall], "s", baseline=single,
                     baseline_name="one build"),
        timed_metric("per-builder time to result", [o.seconds for o in outputs], "s",
                     baseline=single, baseline_name="one build"),
        timed_metric("the one that built, under the stampede", builder_seconds or [0.0], "s",
                     baseline=single, baseline_name="one build"),
        timed_metric(f"{BUILDERS} concurrent `hpcenv --version`", [startup], "s"),
    ]
    result.checks += [
        Check("every builder exited 0", not failed,
              f"{len(failed)} failed; first: {' '.join(failed[0].split())[-300:]}" if failed
              else f"{BUILDERS}/{BUILDERS}", kind="invariant"),
        Check("exactly one build", statuses.get("built", 0) == 1,
              ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())), kind="invariant"),
        Check("all builders report the same prefix", len(prefixes) == 1,
              f"{len(prefixes)} distinct prefixes", kind="invariant"),
        Check("builders that waited for the lock", True,
              f"{sum(1 for r in results if r.get('waited'))} of {len(results)}", kind="info"),
    ]
    result.notes += [BUILD_NOTE, f"spec: {SPEC.name}; each side in a fresh site "
                     "(empty envs dir and package cache)"]
    return result
