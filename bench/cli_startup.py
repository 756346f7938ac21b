"""cli_startup: `hpcenv --help` / `--version` wall time and import time against bare python.

Target (issue 2): `hpcenv --help` costs well under 100 ms of import time; py-rattler, fabric
and jinja2 are imported lazily, so the help path never loads them.
"""

from __future__ import annotations

import statistics

from common import (
    HPCENV,
    PYTHON,
    BenchResult,
    Check,
    Imported,
    Metric,
    import_times,
    time_command,
    timed_metric,
)

RUNS = 15
IMPORTTIME_RUNS = 5
IMPORT_BUDGET_MS = 100.0
# Libraries that must stay out of the help path (fabric drags in paramiko and cryptography).
HEAVY = ("rattler", "fabric", "paramiko", "invoke", "cryptography", "jinja2")
TOP = 8


def total_ms(entries: list[Imported]) -> float:
    """Import time of the whole run: the top-level entries' cumulative times."""
    return sum(e.cumulative_us for e in entries if e.depth == 0) / 1000


def run() -> BenchResult:
    result = BenchResult("cli_startup")
    # Warm-up: the first run after an edit compiles .pyc files, which users pay once.
    time_command([str(HPCENV), "--help"], 1)
    bare = time_command([str(PYTHON), "-c", "pass"], RUNS)
    help_ = time_command([str(HPCENV), "--help"], RUNS)
    version = time_command([str(HPCENV), "--version"], RUNS)
    result.metrics += [
        timed_metric("python -c pass (wall)", bare),
        timed_metric("hpcenv --help (wall)", help_, baseline=bare, baseline_name="python -c pass"),
        timed_metric("hpcenv --version (wall)", version, baseline=bare,
                     baseline_name="python -c pass"),
    ]

    help_runs = [import_times([str(HPCENV), "--help"]) for _ in range(IMPORTTIME_RUNS)]
    bare_runs = [import_times(["-c", "pass"]) for _ in range(IMPORTTIME_RUNS)]
    help_totals = [total_ms(r) for r in help_runs]
    bare_totals = [total_ms(r) for r in bare_runs]
    help_ms = statistics.median(help_totals)
    bare_ms = statistics.median(bare_totals)
    result.metrics += [
        Metric("import time, hpcenv --help", help_ms, "ms", bare_ms, "python -c pass",
               (min(help_totals), max(help_totals)), IMPORTTIME_RUNS),
        Metric("import time added by hpcenv", help_ms - bare_ms, "ms", IMPORT_BUDGET_MS,
               "budget", None, IMPORTTIME_RUNS),
    ]
    result.checks.append(Check(f"hpcenv --help import time < {IMPORT_BUDGET_MS:.0f} ms",
                               help_ms < IMPORT_BUDGET_MS,
                               f"{help_ms:.1f} ms in total, {help_ms - bare_ms:.1f} ms beyond "
                               "bare python"))

    # A module shows up in -X importtime output exactly when it was imported.
    loaded = {e.name.split(".")[0] for run_ in help_runs for e in run_}
    heavy = [m for m in HEAVY if m in loaded]
    result.checks.append(Check("heavy libraries not imported by hpcenv --help", not heavy,
                               f"imported: {', '.join(heavy)}" if heavy
                               else "none of " + ", ".join(HEAVY), kind="invariant"))

    typical = help_runs[help_totals.index(help_ms)] if help_ms in help_totals else help_runs[0]
    slowest = sorted(typical, key=lambda e: e.self_us, reverse=True)[:TOP]
    result.notes.append("slowest imports of a median `hpcenv --help` run (self / cumulative ms): "
                        + "; ".join(f"{e.name} {e.self_us / 1000:.1f}/{e.cumulative_us / 1000:.1f}"
                                    for e in slowest))
    return result
