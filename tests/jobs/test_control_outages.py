"""--wait and logs -f ride out controller outages (hpcenv.jobs.control.OutageRider).

Pure logic with a scripted status source and a fake clock; the same behaviour against a real
slurmctld that is stopped and started again is tested on the cluster (tests/jobs/test_submit_slurm).
"""

from __future__ import annotations

import pytest

from hpcenv.jobs.control import wait_for
from hpcenv.scheduler.base import JobInfo, SchedulerUnreachable


class Script:
    """Answers ``status`` from a list: a state name, or "down" for an unreachable controller."""

    def __init__(self, states: list[str]) -> None:
        self.states = list(states)
        self.now = 0.0

    def status(self, job_id: str) -> JobInfo:
        state = self.states.pop(0)
        if state == "down":
            raise SchedulerUnreachable("cannot reach the Slurm controller (scontrol: ...)")
        return JobInfo(job_id=job_id, name="j", state=state, exit_code=0 if state == "COMPLETED"
                       else None)

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_wait_rides_out_an_outage_and_returns_the_jobs_end() -> None:
    script = Script(["RUNNING", "down", "down", "down", "RUNNING", "COMPLETED"])
    notes: list[str] = []
    info = wait_for(script, "7", on_outage=notes.append, sleep=script.sleep, clock=lambda: script.now)
    assert info.state == "COMPLETED" and info.exit_code == 0
    assert len(notes) == 2  # said once when it went away, once when it came back
    assert "does not answer" in notes[0] and "job 7 runs on" in notes[0]
    assert "answers again" in notes[1]


def test_wait_gives_up_after_the_limit_naming_the_job() -> None:
    script = Script(["RUNNING"] + ["down"] * 100)
    with pytest.raises(SchedulerUnreachable) as err:
        wait_for(script, "8", sleep=script.sleep, clock=lambda: script.now, outage_limit=60)
    message = str(err.value)
    assert "has not answered for" in message and "hpcenv status 8" in message
    assert 60 < script.now < 60 + 2 * 10 + 1  # gave up within a poll or two after the limit
