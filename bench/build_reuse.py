"""build_reuse: a second `hpcenv env build` of the same spec against the cold first build.

Target (issue 3): `hpcenv env build examples/llm-finetune.yml` a second time returns `reused`
in well under a second (the registry fast path: no lock, no rattler import).  Measured through
the console script, as a user runs it, and through the library call, to separate the CLI's
start-up from the builder's own cost.
"""

from __future__ import annotations

import time

from common import (
    BUILD_NOTE,
    EXAMPLES,
    BenchResult,
    Check,
    build_argv,
    build_once,
    demo_channel,
    import_times,
    scratch,
    timed_metric,
    write_site,
)

SPEC = EXAMPLES / "llm-finetune.yml"
COLD_RUNS = 3       # each in a fresh site: empty envs dir and empty package cache
REUSE_RUNS = 5      # per cold build
LIBRARY_REUSE_RUNS = 20
TARGET_S = 1.0


def run() -> BenchResult:
    result = BenchResult("build_reuse")
    channel = demo_channel()
    cold, reused, statuses, same_prefix = [], [], [], []
    loaded: set[str] = set()
    for i in range(COLD_RUNS):
        with scratch(f"reuse{i}") as root:
            site = write_site(root / "site", channel)
            seconds, first = build_once(site, SPEC)
            cold.append(seconds)
            statuses.append(first["status"])
            for _ in range(REUSE_RUNS):
                seconds, again = build_once(site, SPEC)
                reused.append(seconds)
                statuses.append(again["status"])
                same_prefix.append(again["prefix"] == first["prefix"])
            # The fast path must not load the engine: -X importtime lists every import.
            loaded |= {e.name.split(".")[0] for e in import_times(build_argv(site, SPEC))}

    lib_cold, lib_reused, lib_statuses = _library_runs(channel)
    result.metrics += [
        timed_metric("cold build (cli)", cold, "s"),
        timed_metric("second build, reused (cli)", reused, "s", baseline=cold,
                     baseline_name="cold"),
        timed_metric("library build_env cold", [lib_cold], "s"),
        timed_metric("library build_env reused", lib_reused, "ms", baseline=lib_cold,
                     baseline_name="cold"),
    ]
    expected = (["built"] + ["reused"] * REUSE_RUNS) * COLD_RUNS
    result.checks += [
        Check("first build built, every later one reused, same prefix",
              statuses == expected and all(same_prefix)
              and lib_statuses == ["built"] + ["reused"] * LIBRARY_REUSE_RUNS,
              f"statuses {sorted(set(statuses + lib_statuses))}", kind="invariant"),
        Check("reused build does not import rattler", "rattler" not in loaded,
              "the registry fast path reads a few files; rattler costs ~110 ms to import"),
        Check(f"reused build via cli < {TARGET_S:.0f} s",
              max(reused) < TARGET_S, f"slowest of {len(reused)}: {max(reused) * 1000:.0f} ms"),
    ]
    result.notes += [BUILD_NOTE, f"spec: {SPEC.relative_to(EXAMPLES.parent)}"]
    return result


def _library_runs(channel: object) -> tuple[float, list[float], list[str]]:
    """One cold and many reused ``build_env`` calls in this process."""
    from hpcenv.build.builder import build_env
    from hpcenv.site.config import load_site
    from hpcenv.spec.environment import load_spec

    spec = load_spec(SPEC)
    with scratch("reuse-lib") as root:
        site = load_site(write_site(root / "site", channel))
        start = time.perf_counter()
        statuses = [build_env(spec, site).status]
        cold = time.perf_counter() - start
        reused = []
        for _ in range(LIBRARY_REUSE_RUNS):
            start = time.perf_counter()
            statuses.append(build_env(spec, site).status)
            reused.append(time.perf_counter() - start)
    return cold, reused, statuses
