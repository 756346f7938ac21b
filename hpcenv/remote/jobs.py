"""Remote jobs: the remote hpcenv's JSON answers, a job's status read over the session, and
waiting for a job as a local ``--wait`` does (``hpcenv.jobs.control.wait_for``).  A dropped connection is
reopened on the session's backoff schedule, so a long wait outlives a login node's reboot.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpcenv.jobs.control import POLL_FIRST, POLL_MAX, live_status, wait_for
from hpcenv.remote.errors import HostUnreachable, RemoteCommandFailed, last_lines
from hpcenv.scheduler.base import JobInfo

if TYPE_CHECKING:
    from hpcenv.remote.session import RemoteSession


def parse_json(text: str, session: RemoteSession, what: str) -> dict[str, Any]:
    """The JSON object the remote ``hpcenv --json WHAT`` printed (an error if there is none)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RemoteCommandFailed(f"remote '{session.name}': hpcenv {what} printed no JSON "
                                  f"({last_lines(text, 1)}); is the remote hpcenv too old?",
                                  1) from exc
    if not isinstance(data, dict):
        raise RemoteCommandFailed(f"remote '{session.name}': hpcenv {what} printed "
                                  f"{type(data).__name__} JSON, expected an object", 1)
    return data


def job_info(status: dict[str, Any]) -> JobInfo:
    """A ``JobInfo`` from the remote's ``hpcenv --json status`` record (paths stay remote)."""
    def number(key: str) -> Any:
        value = status.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return JobInfo(
        job_id=str(status.get("job_id", "")), name=str(status.get("name") or ""),
        state=str(status.get("state") or "UNKNOWN").upper(), reason=status.get("reason"),
        exit_code=number("exit_code"), signal=number("signal"), node=status.get("node"),
        elapsed=number("elapsed"), partition=status.get("partition"),
        constraint=status.get("constraint"))


@dataclass(frozen=True)
class RemoteJobStatus:
    """``status(job_id)`` of the remote scheduler, read through the remote ``hpcenv status``;
    all ``hpcenv.jobs.control.wait_for`` asks of a scheduler.  A dropped connection is reopened on the
    session's backoff schedule and the question asked again, so a long wait outlives a login
    node's reboot; only the reconnects are bounded."""

    session: RemoteSession

    def status(self, job_id: str) -> JobInfo:
        session = self.session
        line = session.hpcenv_line(["--json", "status", job_id])
        while True:
            try:
                result = session.run(line, what=f"hpcenv status {job_id}")
            except HostUnreachable:  # see RemoteSession.follow
                session.info(f"hpcenv: connection to {session.target} dropped; reconnecting")
                session.reconnect()
                continue
            return job_info(parse_json(result.stdout, session, "status"))


def wait_for_job(session: RemoteSession, job_id: str, *, show_status: bool = True,
                 first_poll: float = POLL_FIRST, max_poll: float = POLL_MAX) -> JobInfo:
    """Wait for a remote job as a local ``--wait`` does (``hpcenv.jobs.control.wait_for``: backoff
    polling, the same live status line), polling over the session.  No overall limit, as with
    ``sbatch --wait``: jobs may run for days."""
    with live_status(sys.stderr, enabled=show_status) as show:
        return wait_for(RemoteJobStatus(session), job_id, on_poll=show,
                        first=first_poll, most=max_poll)
