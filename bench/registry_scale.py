"""registry_scale: `env list`, `env history`, a new build and a reuse with a registry of 10,000.

Target (issue 10): with 10,000 envs in the registry, or one env with 10,000 versions, each of
`hpcenv env list`, `hpcenv env history NAME`, a new build and a reuse (cache hit) takes at most
1.5x what it takes with 10.  Four throw-away sites: 10 and 10,000 envs of one ready version
each, and one env (`deep`) with 10 and 10,000 versions.  The filler records are written in the
registry's on-disk format (no builds behind them); the builds measured are real builds of
`cpu-analysis.yml` against the demo channel, as a user runs them: whole `hpcenv` processes,
medians.  A new build is a spec nobody built yet (a new name in the envs sites, a new version
of `deep` in the versions sites); a reuse builds one of them again.

The registry's index is a cache its readers keep: the first `env list` after the filler was
written builds it (shown on its own line, as "first list"); the timed runs find it in place.
Its entries are trusted once a name's directory has been unchanged for 2 s by the filesystem's
clock (see hpcenv/store/registry_index.py); until then each reader re-checks the name's record
files.  So the new builds and the timed reuses start with the registry idle that long, as
between two users' commands, and a reuse started right after a build is shown on its own line.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hpcenv.store.registry_index import SETTLE_NS

from common import (
    BUILD_NOTE,
    EXAMPLES,
    HPCENV,
    BenchResult,
    Check,
    build_argv,
    demo_channel,
    ratio_target,
    scratch,
    time_command,
    timed_metric,
    write_site,
)

SMALL, LARGE = 10, 10_000
SPEC = EXAMPLES / "cpu-analysis.yml"
NEW_BUILDS = 3
REUSES = 5
READ_RUNS = 7
TARGET_RATIO = 1.5
DEEP = "deep"


# Idle time before a timed build: the index's settle time, and a little.
SETTLE_S = SETTLE_NS / 1e9 + 0.2


@dataclass
class Figures:
    """What one site measured, in seconds."""

    first_list: float
    lists: list[float]
    histories: list[float]
    builds: list[float]
    reuse_right_after: float
    reuses: list[float]
    statuses: list[str]


def run() -> BenchResult:
    result = BenchResult("registry_scale")
    channel = demo_channel()
    with scratch("registry-scale") as root:
        sites = {}
        for shape in ("envs", "versions"):
            for count in (SMALL, LARGE):
                site = write_site(root / f"{shape}-{count}" / "site", channel)
                start = time.perf_counter()
                _fill(site, shape, count)
                result.notes.append(f"{shape} x {count:,}: filler records written in "
                                    f"{time.perf_counter() - start:.1f} s")
                sites[shape, count] = site
        figures = _measure(sites, root)

    statuses_ok = True
    for shape, what in (("envs", "envs"), ("versions", f"versions of {DEEP}")):
        small, large = figures[shape, SMALL], figures[shape, LARGE]
        label = f"{LARGE:,} {what}"
        base = f"{SMALL} {what}"
        rows = [("env list", large.lists, small.lists),
                (f"env history {'NAME' if shape == 'envs' else DEEP}",
                 large.histories, small.histories),
                ("new build", large.builds, small.builds),
                ("reuse (cache hit)", large.reuses, small.reuses)]
        result.metrics.append(timed_metric(f"first env list after filling, {label}",
                                           [large.first_list], "ms",
                                           baseline=[small.first_list], baseline_name=base))
        result.metrics.append(timed_metric(f"reuse right after a build, {label}",
                                           [large.reuse_right_after], "ms",
                                           baseline=[small.reuse_right_after],
                                           baseline_name=base))
        for metric, value, baseline in rows:
            m = timed_metric(f"{metric}, {label}", value, "ms", baseline=baseline,
                             baseline_name=base)
            result.metrics.append(m)
            result.checks.append(ratio_target(m.name, m.ratio or 0.0, TARGET_RATIO))
        for count in (SMALL, LARGE):
            statuses_ok &= figures[shape, count].statuses == (["built"] * NEW_BUILDS
                                                              + ["reused"] * (1 + REUSES))
    result.checks.append(Check("every new build built, every repeat reused", statuses_ok,
                               kind="invariant"))
    result.notes += [BUILD_NOTE, f"spec: {SPEC.relative_to(EXAMPLES.parent)} (a `variables:` "
                     "entry makes each new build a new build key)",
                     "the four sites take turns at every step, so a busy moment of the "
                     "machine falls on the 10 and the 10,000 case alike"]
    return result


def _fill(site: Path, shape: str, count: int) -> None:
    """``count`` filler envs of one ready version (``shape`` "envs"), or ``count`` versions of
    ``deep``, written as the registry writes them: one JSON record per version, ``current``."""
    from hpcenv.site.config import load_site
    from hpcenv.spec.cuda_target import NO_CUDA
    from hpcenv.store import store_for
    from hpcenv.store.layout import builds_dir
    from hpcenv.store.registry import EnvRecord

    store = store_for(load_site(site))
    builds = builds_dir(store)
    names = [f"filler-{i:05d}" for i in range(count)] if shape == "envs" else [DEEP]
    versions = range(1, 2) if shape == "envs" else range(1, count + 1)
    for name in names:
        directory = store.registry_root / name
        directory.mkdir(parents=True)
        for version in versions:
            key = secrets.token_hex(32)
            record = EnvRecord(
                name=name, version=version, key=key, spec={"name": name}, spec_hash=key,
                lock_path=str(directory / f"{version}.lock.yml"),
                prefix=str(builds / f"{name}-{version}-{key[:12]}"), cuda=NO_CUDA,
                cuda_override=None, channels=["conda-forge"], platform="linux-64",
                status="ready", creator="bench@login1", created="2026-12-01T00:00:00+00:00",
                size_bytes=70_000_000, unique_bytes=1_000_000, file_count=1900, packages=40)
            (directory / f"{version}.json").write_text(
                json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
        (directory / "current").write_text(f"{versions[-1]}\n")


def _measure(sites: dict[tuple[str, int], Path], root: Path) -> dict[tuple[str, int], Figures]:
    """Every figure of every site, the sites taking turns at each step."""
    out = {where: Figures(0.0, [], [], [], 0.0, [], []) for where in sites}

    def hpcenv(where: tuple[str, int], *args: str) -> list[str]:
        return [str(HPCENV), "--site", str(sites[where]), *args]

    for where in sites:
        out[where].first_list = time_command(hpcenv(where, "env", "list"), 1)[0]
    specs: dict[tuple[str, int], list[Path]] = {where: [] for where in sites}
    last_write: dict[tuple[str, int], float] = {}
    for i in range(NEW_BUILDS):
        for where in sites:
            shape, count = where
            spec = root / f"{shape}-{count}" / f"new-{i}.yml"
            name = f"new-{i}" if shape == "envs" else DEEP
            spec.write_text(SPEC.read_text().replace("name: cpu-analysis", f"name: {name}")
                            + f"variables:\n  BENCH_BUILD: \"{i}\"\n")
            specs[where].append(spec)
            # Idle since this site's last build (the others' turns count).
            time.sleep(max(0.0, SETTLE_S - (time.monotonic() - last_write.get(where, 0.0))))
            seconds, status = _build(sites[where], spec)
            last_write[where] = time.monotonic()
            out[where].builds.append(seconds)
            out[where].statuses.append(status)
            if i == NEW_BUILDS - 1:
                out[where].reuse_right_after, status = _build(sites[where], spec)
                out[where].statuses.append(status)
    time.sleep(SETTLE_S)
    for _ in range(REUSES):
        for where in sites:
            seconds, status = _build(sites[where], specs[where][-1])
            out[where].reuses.append(seconds)
            out[where].statuses.append(status)
    for _ in range(READ_RUNS):
        for where in sites:
            history_name = DEEP if where[0] == "versions" else "new-0"
            out[where].lists += time_command(hpcenv(where, "env", "list"), 1)
            out[where].histories += time_command(hpcenv(where, "env", "history", history_name),
                                                 1)
    return out


def _build(site: Path, spec: Path) -> tuple[float, str]:
    """Seconds and status of one build of ``spec``."""
    start = time.perf_counter()
    proc = subprocess.run(build_argv(site, spec), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"env build {spec.name} exited {proc.returncode}: "
                           f"{proc.stderr[-800:]}")
    return seconds, json.loads(proc.stdout)["status"]
