"""How a submission is reported, the same for a local and a remote (``--remote``) submit: the
"submitted" line (or one JSON document), and with ``--wait`` the wait and the job's exit code."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from hpcenv.cli.context import Context

if TYPE_CHECKING:
    from hpcenv.scheduler.base import JobInfo


def report_submission(data: dict[str, Any], ctx: Context,
                      wait: Callable[[], JobInfo] | None = None,
                      outputs: Callable[[JobInfo], tuple[PurePath | None, PurePath | None]] | None = None
                      ) -> int:
    """Print a submission; with ``wait``, wait for the job and return its exit code.

    Under ``--wait`` the submission goes to stderr at once and stdout gets one result when the
    job ended (with ``--json``: the submission plus how it ended, as one document); then
    ``outputs`` says, from how the job ended, where its stdout and stderr went.
    """
    if wait is None:
        ctx.emit(data, submitted_text)
        return 0
    from hpcenv.jobs.control import job_exit_code

    ctx.info(f"hpcenv: {submitted_text(data)}; waiting")
    info = wait()
    code = job_exit_code(info)
    stdout, stderr = outputs(info) if outputs is not None else (None, None)
    if stdout is not None:
        ctx.info(f"hpcenv: job {data['job_id']} output: {stdout}"
                 + (f", errors: {stderr}" if stderr else "")
                 + f" (or: hpcenv logs {data['job_id']})")
    if ctx.json:
        ctx.emit({**data, "state": info.state, "exit_code": code, "node": info.node,
                  "elapsed": info.elapsed, "stdout_path": str(stdout) if stdout else None,
                  "stderr_path": str(stderr) if stderr else None})
    return code


def is_local(d: dict[str, Any]) -> bool:
    return d.get("scheduler") == "local"


def where_text(d: dict[str, Any]) -> str:
    if is_local(d):
        routed = f" (routed to partition {d['partition']})" if d.get("partition") else ""
        return f"the local executor{routed}"
    on = f"{d['remote']}'s " if d.get("remote") else "the "
    if not d.get("partition"):
        return f"{on}cluster's default partition"
    constraint = f" with --constraint={d['constraint']}" if d.get("constraint") else ""
    return f"partition {d['partition']}{constraint}" + (f" on {d['remote']}" if d.get("remote")
                                                          else "")


def _why(d: dict[str, Any]) -> str:
    # On the local executor without partitions there is no choice to explain.
    if (is_local(d) and not d.get("partition")) or not d.get("reason"):
        return ""
    return f": {d['reason']}"


def submitted_text(d: dict[str, Any]) -> str:
    version = f" v{d['env_version']}" if d.get("env_version") is not None else ""
    return f"submitted job {d['job_id']} to {where_text(d)}, env {d.get('env')}{version}{_why(d)}"
