"""Shared pieces of the benchmarks: result records, timing, printing, a throw-away site.

Every figure is printed next to a baseline measured in the same run, so a slow machine moves
both and the ratio stays meaningful.  Nothing here asserts on timings: targets are printed as
MET/MISSED; only invariants (e.g. "built exactly once") make ``bench/run.py`` exit non-zero.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from hpcenv.demo.channel import DemoChannel

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
# The console script next to the interpreter: the same entry point a user runs.
HPCENV = PYTHON.parent / "hpcenv"
# The corpus lives in shared/ beside the checkout, as for tests/spec/test_corpus.py.
CORPUS = Path(os.environ.get("HPCENV_CORPUS")
              or REPO.parent / "shared" / "corpus" / "environment-yml") / "files"
EXAMPLES = REPO / "examples"


# --- records -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """One figure: ``value`` against ``baseline`` (same unit, same run); ratio = value/baseline."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    spread: tuple[float, float] | None = None   # (min, max) over the repetitions
    runs: int = 1

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass(frozen=True)
class Check:
    """A yes/no outcome.  ``invariant`` failures fail the run; ``target`` ones are only reported."""

    name: str
    ok: bool
    detail: str = ""
    kind: Literal["invariant", "target", "info"] = "target"


def ratio_target(name: str, ratio: float, limit: float, anchor: str = "") -> Check:
    """The target ``ratio <= limit``, named ``NAME <= LIMITx [ANCHOR]``."""
    return Check(f"{name} <= {limit:g}x" + (f" {anchor}" if anchor else ""), ratio <= limit,
                 f"{ratio:.2f}x")


@dataclass
class BenchResult:
    name: str
    metrics: list[Metric] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def broken(self) -> bool:
        return any(c.kind == "invariant" and not c.ok for c in self.checks)

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "seconds": round(self.seconds, 3),
                "metrics": [m.to_dict() for m in self.metrics],
                "checks": [asdict(c) for c in self.checks], "notes": list(self.notes),
                "broken": self.broken}


# --- measuring ---------------------------------------------------------------------------------

def summary(samples: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Median and (min, max): medians resist the odd slow run on a shared 2-core machine."""
    return statistics.median(samples), (min(samples), max(samples))


def timed_metric(name: str, samples: Sequence[float], unit: str = "ms", *,
                 baseline: Sequence[float] | float | None = None,
                 baseline_name: str = "") -> Metric:
    """A timing metric from samples in seconds, shown in ``unit`` ("ms" or "s")."""
    scale = 1000.0 if unit == "ms" else 1.0
    med, (lo, hi) = summary(samples)
    base: float | None
    if baseline is None or isinstance(baseline, float | int):
        base = None if baseline is None else float(baseline) * scale
    else:
        base = statistics.median(baseline) * scale
    spread = (lo * scale, hi * scale) if len(samples) > 1 else None
    return Metric(name, med * scale, unit, base, baseline_name, spread, len(samples))


def time_command(argv: Sequence[str], runs: int) -> list[float]:
    """Wall seconds of ``runs`` executions of ``argv``; a failing run aborts the benchmark."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, check=False)
        samples.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}: "
                               f"{proc.stderr.decode(errors='replace')[-500:]}")
    return samples


@dataclass(frozen=True)
class ChildRun:
    returncode: int
    seconds: float
    maxrss_kib: int     # peak RSS of the child or of any descendant it waited for
    stdout: str
    stderr: str


# Linux carries the forking process's RSS high-water mark across exec into the child's
# ru_maxrss, so a child forked by this (large) process would never report less than we use.  A
# bare interpreter (-I -S: ~8 MiB, below any python's own peak) spawns and reaps the command and
# writes its rusage to a file instead.
_RUSAGE_PROBE = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_pid, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as out:
    json.dump([os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss], out)
"""


def run_child(argv: Sequence[str]) -> ChildRun:
    """Run ``argv`` and report its own wall time and peak RSS (see ``_RUSAGE_PROBE``)."""
    with tempfile.TemporaryDirectory(prefix="hpcenv-bench-rusage-") as tmp:
        report = Path(tmp) / "rusage.json"
        proc = subprocess.run([str(PYTHON), "-I", "-S", "-c", _RUSAGE_PROBE, str(report),
                               *map(str, argv)], capture_output=True, check=False)
        if proc.returncode != 0 or not report.exists():
            raise RuntimeError(f"rusage probe for {argv[0]} failed: "
                               f"{proc.stderr.decode(errors='replace')[-500:]}")
        returncode, seconds, maxrss = json.loads(report.read_text())
    return ChildRun(returncode, seconds, maxrss, proc.stdout.decode(errors="replace"),
                    proc.stderr.decode(errors="replace"))


@dataclass(frozen=True)
class Imported:
    name: str
    self_us: int
    cumulative_us: int
    depth: int          # 0: imported by running code rather than by another import


def import_times(argv: list[str]) -> list[Imported]:
    """``python -X importtime`` entries of one run of ``argv`` (a script or ``-c`` and args)."""
    proc = subprocess.run([str(PYTHON), "-X", "importtime", *argv], capture_output=True,
                          text=True, check=True)
    out = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        # "import time:   self |  cumulative | <2 spaces per nesting level>name"
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|", 2)
        bare = name[1:] if name.startswith(" ") else name
        stripped = bare.lstrip(" ")
        out.append(Imported(stripped, int(self_us), int(cumulative_us),
                            (len(bare) - len(stripped)) // 2))
    return out


# --- demo channel and sites ------------------------------------------------------------------

def demo_channel() -> DemoChannel:
    """The test suite's cached demo channel (built here when absent or stale)."""
    from hpcenv.demo.channel import build_demo_channel

    root = os.environ.get("HPCENV_TEST_CACHE") or Path.home() / ".cache" / "hpcenv-test"
    return build_demo_channel(Path(root).expanduser() / "channel")


def write_site(root: Path, channel: DemoChannel) -> Path:
    """The demo site under ``root``, listing the demo channel by path (conda-forge mirrored to
    it, so specs that name conda-forge still solve offline)."""
    from hpcenv.demo.site import write_demo_site

    return write_demo_site(root, channel, channels=f"[{channel.path}]")


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temp dir removed afterwards, even though published prefixes are read-only."""
    from hpcenv.store.debris import force_rmtree

    path = Path(tempfile.mkdtemp(prefix=f"hpcenv-bench-{prefix}-"))
    try:
        yield path
    finally:
        force_rmtree(path)


# --- building ----------------------------------------------------------------------------------

def build_argv(site: Path, spec: Path) -> list[str]:
    """The ``env build`` command the benchmarks run: the console script a user runs.  A missing
    or broken command fails the benchmark; nothing else is timed in its place."""
    return [str(HPCENV), "--site", str(site), "env", "build", str(spec), "--json", "-q"]


BUILD_NOTE = "builds via the console script: hpcenv env build SPEC --json"


def parse_build_output(stdout: str) -> dict:
    """The ``env build --json`` object."""
    return json.loads(stdout)


def build_once(site: Path, spec: Path) -> tuple[float, dict]:
    """Wall seconds and JSON result of one build; a failing build aborts the benchmark."""
    start = time.perf_counter()
    proc = subprocess.run(build_argv(site, spec), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"env build {spec.name} exited {proc.returncode}: {proc.stderr[-800:]}")
    return seconds, parse_build_output(proc.stdout)


# --- output ------------------------------------------------------------------------------------

def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f} {unit}".strip()


def _fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "-"
    # Tiny ratios read better as "1/N" than as 0.00x.
    if ratio == 0:
        return "0x"
    return f"{ratio:.2f}x" if ratio >= 0.01 else f"1/{1 / ratio:,.0f}"


def format_result(result: BenchResult) -> str:
    rows = [("metric", "value (median)", "spread min..max", "baseline", "ratio")]
    for m in result.metrics:
        spread = (f"{_fmt(m.spread[0], '')}..{_fmt(m.spread[1], '')} (n={m.runs})"
                  if m.spread else "-")
        base = f"{_fmt(m.baseline, m.unit)} {m.baseline_name}".strip() if m.baseline is not None \
            else "-"
        rows.append((m.name, _fmt(m.value, m.unit), spread, base, _fmt_ratio(m.ratio)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"== {result.name} ({result.seconds:.1f} s)"]
    for i, row in enumerate(rows):
        lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    for c in result.checks:
        word = {"invariant": "OK" if c.ok else "BROKEN", "target": "MET" if c.ok else "MISSED",
                "info": "yes" if c.ok else "no"}[c.kind]
        lines.append(f"  [{word}] {c.name}" + (f": {c.detail}" if c.detail else ""))
    lines.extend(f"  note: {n}" for n in result.notes)
    return "\n".join(lines)


def machine_info() -> dict[str, object]:
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}


def run_timed(fn: Callable[[], BenchResult]) -> BenchResult:
    start = time.perf_counter()
    result = fn()
    result.seconds = time.perf_counter() - start
    return result

