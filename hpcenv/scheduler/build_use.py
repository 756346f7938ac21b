"""Which env build each job runs in, carried where the scheduler keeps it for every user.

``hpcenv submit`` writes the job's build prefix into the job's comment (``--comment``), after the
user's own comment if there is one: ``run-7,hpcenv-build=/envs/.hpcenv/builds/q-1-ab12...``.
Slurm shows a job's comment to every user (``scontrol show job``, ``squeue -o %k``; unless the
site sets ``PrivateData=jobs``), and the local executor keeps it in its job record, so removing
a build can first ask which pending or running jobs, of anyone, still run in it
(:func:`builds_in_use`).  A job's prefix is its build's real path, never the ``envs_dir/NAME``
symlink: the job keeps the build it was submitted with when the env is rebuilt.  The path is
percent-encoded (bytes outside ``_.:=+@/-`` and the alphanumerics), so an envs dir with spaces,
commas or non-ASCII names still fits the characters a Slurm comment may hold.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes, unquote_to_bytes

from hpcenv.errors import InvalidInput
from hpcenv.records import JsonRecord

if TYPE_CHECKING:
    from hpcenv.scheduler.base import JobInfo, Scheduler

BUILD_TAG = "hpcenv-build="
_TAG_SAFE = "_.:=+@/-"


def tag_comment(user_comment: str | None, prefix: Path | str) -> str:
    """The job comment carrying ``prefix``: the user's comment (if any), a comma, the tag."""
    if user_comment and BUILD_TAG in user_comment:
        raise InvalidInput(f"--comment {user_comment!r}: {BUILD_TAG!r} is hpcenv's own mark of the "
                           "env build a job runs in; drop it from the comment")
    tag = BUILD_TAG + quote_from_bytes(os.fsencode(os.path.realpath(prefix)), safe=_TAG_SAFE)
    comment = f"{user_comment},{tag}" if user_comment else tag
    # Imported here: the store imports this module for its records (every `env build` that
    # reuses a build), and the job option table is only for submitting.
    from hpcenv.scheduler.job_options import comment_problem

    if (problem := comment_problem(comment)) is not None:
        what = f"--comment {user_comment!r} plus " if user_comment else ""
        raise InvalidInput(f"the job's comment carries the env build it runs in: {what}{tag!r} "
                           f"cannot be a Slurm comment ({problem}); "
                           + ("shorten --comment" if user_comment else
                              "build the env under a shorter envs_dirs path"))
    return comment


def build_of(comment: str | None) -> str | None:
    """The build prefix a job comment carries, or None (a job hpcenv did not submit)."""
    if not comment or BUILD_TAG not in comment:
        return None
    encoded = comment.rpartition(BUILD_TAG)[2].strip()
    return os.fsdecode(unquote_to_bytes(encoded)) if encoded else None


@dataclass(frozen=True)
class BuildJob(JsonRecord):
    """A pending or running job that runs in a build."""

    job_id: str
    user: str | None
    state: str

    def __str__(self) -> str:
        return f"{self.job_id} ({self.user or 'unknown user'}, {self.state.lower()})"


@dataclass(frozen=True)
class BuildUse:
    """Which unfinished jobs run in which build, as the scheduler saw it when asked."""

    jobs: Mapping[str, tuple[BuildJob, ...]]   # real path of a build prefix -> its jobs

    def of(self, prefix: Path | str) -> tuple[BuildJob, ...]:
        return self.jobs.get(os.path.realpath(prefix), ())


def describe(jobs: Iterable[BuildJob]) -> str:
    """``"job 12 (bob, pending), job 14 (alice, running)"``."""
    return ", ".join(f"job {job}" for job in jobs)


def use_from(infos: Iterable[JobInfo]) -> BuildUse:
    """The builds the unfinished jobs among ``infos`` run in."""
    found: dict[str, list[BuildJob]] = {}
    for info in infos:
        prefix = build_of(info.comment)
        if prefix is None or info.finished:
            continue
        found.setdefault(os.path.realpath(prefix), []).append(
            BuildJob(info.job_id, info.user, info.state))
    return BuildUse({k: tuple(v) for k, v in found.items()})


# How the store layer asks (a caller above it binds the site's scheduler): None where nobody
# can say, e.g. a library call that passes no scheduler.
BuildUseLookup = Callable[[], BuildUse]


def builds_in_use(scheduler: Scheduler) -> BuildUse:
    """Ask ``scheduler`` which builds its unfinished jobs (every user's) run in.  Raises
    HpcenvError (SchedulerUnreachable when the controller is down) if it cannot be asked."""
    return use_from(scheduler.jobs(all_users=True))
