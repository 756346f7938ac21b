"""Run hpcenv's benchmarks: ``.venv/bin/python bench/run.py [NAME...] [--json]``.

Each benchmark prints a table (metric, median, spread, baseline measured in the same run,
ratio), then MET/MISSED for its targets and OK/BROKEN for its invariants.  The exit status is
1 when an invariant is broken (e.g. a spec built twice) or a benchmark crashed, else 0; missed
speed targets are reported, never asserted.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchResult, Check, format_result, machine_info, run_timed  # noqa: E402

# Name -> module in bench/ exposing run() -> BenchResult; cheap ones first.
BENCHMARKS = ("cli_startup", "cli_commands", "spec_corpus", "build_reuse", "disk_sharing",
              "build_engine", "build_memory", "stage_startup", "registry_scale")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout instead of tables")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")

    results = []
    for name in args.names or BENCHMARKS:
        try:
            result = run_timed(importlib.import_module(name).run)
        except Exception as exc:  # one crashed benchmark must not hide the others' figures
            result = BenchResult(name, checks=[Check("benchmark ran", False,
                                                     " ".join(str(exc).split())[:500],
                                                     kind="invariant")])
            print(traceback.format_exc(), file=sys.stderr)
        results.append(result)
        if not args.json:
            print(format_result(result), flush=True)
            print(flush=True)

    if args.json:
        json.dump({"machine": machine_info(), "benchmarks": [r.to_dict() for r in results]},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        info = machine_info()
        print(f"{info['date']}  python {info['python']}  {info['cpus']} cpus  {info['platform']}")
    return 1 if any(r.broken for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
