"""``hpcenv demo DIR``: write a demo channel, example spec, site config and train.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpcenv.cli.context import Context


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write into DIR an offline conda channel built from this python, an "
                          "example environment.yml, a site config using them with the local "
                          "executor, and train.py; then print the three commands that build the "
                          "env and run train.py as a job.  Needs the demo extra: pip install "
                          "'hpcenv[demo]'.")
    parser.add_argument("dir", metavar="DIR", type=Path,
                        help="where to write it (created if missing)")
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.demo.workspace import write_demo

    ctx.info(f"building the demo channel into {args.dir}/channel (cached) ...")
    workspace = write_demo(args.dir)
    data = {"dir": str(workspace.root), "site": str(workspace.site), "spec": str(workspace.spec),
            "script": str(workspace.script), "channel": workspace.channel.url,
            "created": [str(p) for p in workspace.created],
            "next": workspace.next_commands()}

    def human(d: dict[str, Any]) -> str:
        lines = [f"demo written to {d['dir']}:",
                 f"  channel:  {d['channel']}",
                 f"  spec:     {d['spec']}",
                 f"  script:   {d['script']}",
                 f"  site:     {d['site']}",
                 "next, run:"]
        lines += [f"  {command}" for command in d["next"]]
        return "\n".join(lines)

    ctx.emit(data, human)
    return 0
