"""Job commands: ``submit``, ``jobs``, ``status``, ``logs``, ``cancel``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcenv.cli.argtypes import LocalFile, add_sync_options, local_file
from hpcenv.cli.context import Context
from hpcenv.cli.submission import is_local, report_submission
from hpcenv.errors import InvalidInput
from hpcenv.text_table import text_table

if TYPE_CHECKING:
    from hpcenv.scheduler.base import JobInfo, Scheduler

SUBMIT_USAGE = ("hpcenv submit SCRIPT [ARGS...] --env NAME [options] [-- MORE ARGS...]\n"
                "       hpcenv submit --env NAME [options] -- CMD [ARGS...]")


def register_jobs(parser: argparse.ArgumentParser) -> None:
    parser.description = ("List your queued and running jobs, with the env and partition hpcenv "
                          "submitted them with.")
    parser.add_argument("-a", "--all", action="store_true",
                        help="also jobs hpcenv submitted that have finished (while the scheduler "
                             "still knows them)")
    parser.set_defaults(handler=jobs_handler)


def register_status(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Show one job: state, reason, exit code, node, elapsed time, env and "
                          "partition. Works after the job finished.")
    parser.add_argument("job_id", metavar="JOB")
    parser.set_defaults(handler=status_handler)


def register_logs(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Print the job's stdout and stderr files; with -f keep printing what "
                          "is appended until the job ends.")
    parser.add_argument("job_id", metavar="JOB")
    parser.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    parser.set_defaults(handler=logs_handler)


def register_cancel(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Cancel a job (TERM to all its processes, KILL after the grace "
                          "period), or with --signal only deliver that signal to its program, "
                          "once (e.g. USR1 to ask for a checkpoint); the job goes on unless the "
                          "program ends. A job that already ended is left alone: exit 1, naming "
                          "its final state.")
    parser.add_argument("job_id", metavar="JOB")
    parser.add_argument("-s", "--signal", metavar="SIG",
                        help="signal name or number (TERM, USR1, 10)")
    parser.set_defaults(handler=cancel_handler)


def register_submit(parser: argparse.ArgumentParser) -> None:
    parser.usage = SUBMIT_USAGE
    parser.description = ("Submit SCRIPT (a .py file runs with the env's python, anything else "
                          "with bash) or a command after '--' to the site's scheduler, inside "
                          "env NAME. The env is built first if it is missing and its environment "
                          "file is found. The partition is chosen by the env's CUDA unless "
                          "--partition is given. Arguments for SCRIPT that look like options go "
                          "after '--'.")
    parser.add_argument("words", nargs="*", metavar="SCRIPT [ARGS...]", help=argparse.SUPPRESS)
    parser.add_argument("--env", metavar="NAME", help="registered env to run in")
    parser.add_argument("--env-file", metavar="FILE", type=local_file,
                        help="environment file: build (or reuse) the env from it first; NAME "
                             "defaults to its name:")
    # The Slurm options come from the one table (hpcenv.scheduler.job_options), spelled as
    # sbatch spells them.
    from hpcenv.scheduler.job_options import add_arguments

    add_arguments(parser, {"resources": "resources (as sbatch; defaults from the site config)",
                           "job": "job (as sbatch)"})
    parser.add_argument("--launcher", choices=("conda-run", "activate"),
                        help="override the site's launcher")
    parser.add_argument("--stage", action="store_true",
                        help="unpack the env's pack ('hpcenv env pack') on each node's local "
                             "disk (site stage_dir, else $TMPDIR) once per node and run from "
                             "there; falls back to the shared prefix with a warning")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the job script, partition and reason; submit (and build) "
                             "nothing; works without a controller (then routing uses the site "
                             "config alone, and says so)")
    parser.add_argument("--wait", action="store_true",
                        help="wait for the job to end and exit with its exit code")
    add_sync_options(parser)
    parser.set_defaults(handler=submit_handler)
    _split_at_double_dash(parser)


def _split_at_double_dash(parser: argparse.ArgumentParser) -> None:
    """Everything after the first ``--`` belongs to the program, whatever it looks like.

    argparse cannot do this itself once options follow SCRIPT (``submit train.py --env x --
    --lr 1``): its positional is already consumed.  The top-level parser hands the sub-parser
    its words through ``parse_known_args``, so splitting there keeps ``--json``/``--site``
    working after the command and leaves the rest to argparse.
    """
    original = parser.parse_known_args

    def parse_known_args(args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        words = list(sys.argv[1:] if args is None else args)
        tail: list[str] | None = None
        if "--" in words:
            cut = words.index("--")
            words, tail = words[:cut], words[cut + 1:]
        ns, extra = original(words, namespace)
        positional = list(ns.words)
        if positional:
            ns.script = LocalFile(positional[0])
            ns.program_args, ns.program_cmd = positional[1:] + (tail or []), None
        else:
            ns.script, ns.program_args, ns.program_cmd = None, [], tail
        return ns, extra

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign,assignment]


def submit_handler(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.jobs.submit import SubmitOptions, submit
    from hpcenv.scheduler.job_options import from_namespace

    if args.script is None and not args.program_cmd:
        raise InvalidInput(f"nothing to run; usage: {SUBMIT_USAGE.splitlines()[0]}")
    options = SubmitOptions(
        **from_namespace(args), env_file=Path(args.env_file) if args.env_file else None,
        launcher=args.launcher, stage=args.stage)
    target = args.script if args.script is not None else args.program_cmd
    site = ctx.site()
    # A dry run asks no controller, so it picks no backend (see jobs.submit.submit).
    scheduler = None if args.dry_run and site.scheduler != "local" else _scheduler(ctx)
    result = submit(target, args.program_args, env_name=args.env, site=site, options=options,
                    scheduler=scheduler, dry_run=args.dry_run, progress=ctx.info)
    for warning in result.warnings:
        ctx.warn(warning)
    if args.dry_run:
        data = result.to_dict()
        data["script_text"] = result.script_text
        ctx.emit(data, _dry_run_text)
        return 0
    wait = (lambda: _wait(result.job_id or "", ctx, scheduler or _scheduler(ctx))) \
        if args.wait else None
    return report_submission(result.to_dict(), ctx, wait,
                             outputs=lambda _info: _output_paths(ctx, result.job_id or ""))


def _output_paths(ctx: Context, job_id: str) -> tuple[Path | None, Path | None]:
    """Where a finished job's output went (None when the scheduler no longer says)."""
    from hpcenv.errors import HpcenvError
    from hpcenv.jobs.control import job_status, log_paths

    try:
        return log_paths(job_status(_scheduler(ctx), ctx.site().state_dir, job_id))
    except HpcenvError:
        return None, None


def _launcher_text(d: dict[str, Any]) -> str:
    if d["launcher"] == "conda-run":
        return ("conda-run: conda run -p PREFIX, not -n NAME, so the job runs this very build "
                f"(v{d['env_version']}) even if {d['env']} is rebuilt while it waits")
    return "activate: hpcenv's activation inlined, then exec of the program"


def _nodes_text(d: dict[str, Any]) -> str:
    if is_local(d):
        return "this machine (the local executor)"
    if not d.get("constraint"):
        return "any in the partition"
    verdicts = (d.get("routing") or {}).get("partitions") or []
    nodes: list[str] = next((v["nodes"] for v in verdicts if v["partition"] == d["partition"]), [])
    return f"--constraint={d['constraint']}" + (f" ({', '.join(nodes)})" if nodes else "")


def _no_partition(d: dict[str, Any]) -> str:
    return "none (the local executor has none)" if is_local(d) else "the cluster's default"


def _live_text(d: dict[str, Any]) -> str:
    return f"# live:      {d['live_note']}\n" if d.get("live_note") else ""


def _dry_run_text(d: dict[str, Any]) -> str:
    return (f"{d['script_text']}"
            f"# --- dry run: nothing submitted ---\n"
            f"# partition: {d['partition'] or _no_partition(d)}\n"
            f"# nodes:     {_nodes_text(d)}\n"
            f"# reason:    {d['reason']}\n"
            f"# env:       {d['env']} v{d['env_version']} at {d['prefix']}\n"
            f"# launcher:  {_launcher_text(d)}\n"
            f"# scheduler: {d['scheduler']}\n"
            f"{_live_text(d)}"
            f"# script:    {d['script']}")


def _wait(job_id: str, ctx: Context, scheduler: Scheduler) -> JobInfo:
    from hpcenv.jobs.control import live_status, wait_for

    with live_status(sys.stderr, enabled=ctx.verbosity >= 0) as show:
        return wait_for(scheduler, job_id, on_poll=show, on_outage=ctx.info)


def _scheduler(ctx: Context) -> Scheduler:
    """The site's backend; -v says which one and why."""
    from hpcenv.jobs.backend import site_selection

    selection = site_selection(ctx.site())
    ctx.debug(f"hpcenv: scheduler backend {selection.scheduler.kind} ({selection.why})")
    return selection.scheduler


def jobs_handler(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.jobs.control import format_elapsed, my_jobs

    views = my_jobs(_scheduler(ctx), ctx.site().state_dir, include_finished=args.all)

    def table(rows: list[dict[str, Any]]) -> str:
        if not rows:
            return "no jobs"
        return text_table(
            ("JOB", "NAME", "STATE", "PARTITION", "ENV", "NODE", "ELAPSED"),
            [(r["job_id"], r["name"], r["state"], r["partition"] or "-",
              f"{r['env']} v{r['env_version']}" if r["env"] else "-", r["node"] or "-",
              format_elapsed(r["elapsed"])) for r in rows])

    ctx.emit([v.to_dict() for v in views], table)
    return 0


def status_handler(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.jobs.control import (
        format_elapsed,
        job_exit_code,
        job_status,
        signal_display,
    )

    view = job_status(_scheduler(ctx), ctx.site().state_dir, args.job_id)

    def text(d: dict[str, Any]) -> str:
        exit_text = "-"
        if view.info.finished:
            exit_text = str(job_exit_code(view.info))
            if view.info.signal:
                exit_text += f" (signal {signal_display(view.info.signal)})"
        rows = [("job", d["job_id"]), ("name", d["name"]), ("state", d["state"]),
                ("reason", d["reason"] or "-"), ("exit code", exit_text),
                ("node", d["node"] or "-"), ("elapsed", format_elapsed(d["elapsed"])),
                ("partition", d["partition"] or "-"), ("constraint", d["constraint"] or "-"),
                ("env", f"{d['env']} v{d['env_version']}" if d["env"] else "-"),
                ("prefix", d["prefix"] or "-"), ("stdout", d["stdout"] or "-")]
        if d.get("stderr") and d["stderr"] != d["stdout"]:
            rows.append(("stderr", d["stderr"]))
        if d.get("tasks"):
            rows.append(("tasks", " ".join(d["tasks"])))
        return "\n".join(f"{k + ':':<12}{v}" for k, v in rows)

    ctx.emit(view.to_dict(), text)
    return 0


def logs_handler(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.jobs.control import show_logs

    if not ctx.json:
        show_logs(_scheduler(ctx), ctx.site().state_dir, args.job_id, out=sys.stdout.buffer,
                  err=sys.stderr.buffer, follow=args.follow, note=ctx.info)
        return 0
    import io

    from hpcenv.jobs.control import log_paths

    # One JSON document: the output so far (with -f, once the job has ended), not a stream.
    out, err = io.BytesIO(), io.BytesIO()
    view = show_logs(_scheduler(ctx), ctx.site().state_dir, args.job_id, out=out, err=err,
                     follow=args.follow, note=ctx.info)
    stdout_path, stderr_path = log_paths(view)
    ctx.emit({"job_id": args.job_id, "state": view.info.state, "finished": view.info.finished,
              "stdout_path": str(stdout_path) if stdout_path else None,
              "stderr_path": str(stderr_path) if stderr_path else None,
              "stdout": out.getvalue().decode(errors="replace"),
              "stderr": err.getvalue().decode(errors="replace")})
    return 0


def cancel_handler(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.jobs.control import cancel_job

    cancel_job(_scheduler(ctx), args.job_id, args.signal)
    what = f"sent {args.signal} to" if args.signal else "cancelled"
    ctx.emit({"job_id": args.job_id, "signal": args.signal, "cancelled": args.signal is None},
             lambda d: f"{what} job {d['job_id']}")
    return 0
