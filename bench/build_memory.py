"""build_memory: peak memory of a cold `hpcenv env build` against importing py-rattler.

Login nodes are shared and often memory-capped per user, so a build should cost about what its
engine costs to load, not a multiple of it.  Peak RSS comes from ``wait4``: the largest single
process among the build and the children it waited for (the rattler engine child, the env's
python for verification and pip), not their sum.
"""

from __future__ import annotations

import statistics

from common import (
    BUILD_NOTE,
    EXAMPLES,
    HPCENV,
    PYTHON,
    BenchResult,
    ChildRun,
    Metric,
    build_argv,
    demo_channel,
    run_child,
    scratch,
    write_site,
)

SPEC = EXAMPLES / "llm-finetune.yml"          # conda part, then pip in the env's python
SPEC_NO_PIP = EXAMPLES / "cpu-analysis.yml"   # conda part only: the engine child's peak
BUILD_RUNS = 2       # cold builds, each in a fresh site
BASELINE_RUNS = 3
MIB_PER_KIB = 1 / 1024


def _peak(name: str, runs: list[ChildRun], baseline: float | None = None,
          baseline_name: str = "") -> Metric:
    for r in runs:
        if r.returncode != 0:
            raise RuntimeError(f"{name} exited {r.returncode}: {r.stderr[-500:]}")
    peaks = [r.maxrss_kib * MIB_PER_KIB for r in runs]
    return Metric(name, statistics.median(peaks), "MiB", baseline, baseline_name,
                  (min(peaks), max(peaks)) if len(peaks) > 1 else None, len(peaks))


def run() -> BenchResult:
    result = BenchResult("build_memory")
    channel = demo_channel()
    bare = _peak("python -c pass", [run_child([str(PYTHON), "-c", "pass"])
                                    for _ in range(BASELINE_RUNS)])
    rattler = _peak("python -c 'import rattler'",
                    [run_child([str(PYTHON), "-c", "import rattler"])
                     for _ in range(BASELINE_RUNS)])
    cold, reused, no_pip = [], [], []
    for i in range(BUILD_RUNS):
        with scratch(f"mem{i}") as root:
            site = write_site(root / "site", channel)
            cold.append(run_child(build_argv(site, SPEC)))
            reused.append(run_child(build_argv(site, SPEC)))
        with scratch(f"mem-nopip{i}") as root:
            no_pip.append(run_child(build_argv(write_site(root / "site", channel), SPEC_NO_PIP)))
    result.metrics += [
        bare,
        rattler,
        _peak("hpcenv --version", [run_child([str(HPCENV), "--version"])
                                   for _ in range(BASELINE_RUNS)], rattler.value,
              "import rattler"),
        _peak(f"env build {SPEC.name}, cold", cold, rattler.value, "import rattler"),
        _peak(f"env build {SPEC_NO_PIP.name}, cold", no_pip, rattler.value, "import rattler"),
        _peak(f"env build {SPEC.name}, reused", reused, rattler.value, "import rattler"),
    ]
    result.notes += [BUILD_NOTE, "peak RSS of the largest process in the build's tree "
                     "(wait4 ru_maxrss), each cold build in a fresh site"]
    return result
