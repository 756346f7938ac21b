"""The env build a job runs in, carried in its comment (hpcenv.scheduler.build_use): the format
both the Slurm backends and the local executor store, and how it is read back from job records."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcenv.errors import InvalidInput
from hpcenv.scheduler.base import JobInfo
from hpcenv.scheduler.build_use import (
    BuildJob,
    build_of,
    describe,
    tag_comment,
    use_from,
)
from hpcenv.scheduler.job_options import comment_problem


def test_the_tag_follows_the_users_own_comment_and_reads_back(tmp_path: Path) -> None:
    prefix = tmp_path / "builds" / "q-1-abc"
    alone = tag_comment(None, prefix)
    assert alone == f"hpcenv-build={prefix}"
    assert build_of(alone) == str(prefix)
    both = tag_comment("run-7", prefix)
    assert both == f"run-7,hpcenv-build={prefix}"
    assert build_of(both) == str(prefix)
    assert build_of("run-7") is None and build_of(None) is None


def test_any_envs_dir_path_fits_a_slurm_comment_and_reads_back_exactly(tmp_path: Path) -> None:
    prefix = tmp_path / "my envs, 100%" / "caf\u00e9 it's" / "q-1-abc"
    comment = tag_comment("run-7", prefix)
    assert comment_problem(comment) is None, comment
    assert build_of(comment) == str(prefix)


def test_the_tag_names_the_real_build_not_a_symlink_to_it(tmp_path: Path) -> None:
    build = tmp_path / "builds" / "q-1-abc"
    build.mkdir(parents=True)
    (tmp_path / "q").symlink_to(build)
    assert build_of(tag_comment(None, tmp_path / "q")) == str(build)


@pytest.mark.parametrize("comment, says", [
    ("x,hpcenv-build=/elsewhere", "hpcenv's own mark"),
    ("a" * 240, "shorten --comment"),
])
def test_a_comment_that_cannot_carry_the_tag_is_refused_in_one_line(
        tmp_path: Path, comment: str, says: str) -> None:
    with pytest.raises(InvalidInput) as err:
        tag_comment(comment, tmp_path / "builds" / "q-1-abc")
    assert says in str(err.value) and "\n" not in str(err.value)


def test_only_unfinished_jobs_of_any_user_use_a_build(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "q-1-a", tmp_path / "q-2-b"
    infos = [JobInfo("12", "a", "PENDING", user="bob", comment=tag_comment("x", v1)),
             JobInfo("13", "b", "RUNNING", user="alice", comment=tag_comment(None, v1)),
             JobInfo("14", "c", "COMPLETED", user="bob", comment=tag_comment(None, v2)),
             JobInfo("15", "d", "RUNNING", user="carol", comment="not ours")]
    use = use_from(infos)
    assert use.of(v1) == (BuildJob("12", "bob", "PENDING"), BuildJob("13", "alice", "RUNNING"))
    assert use.of(v2) == () and use.of(tmp_path / "other") == ()
    assert describe(use.of(v1)) == "job 12 (bob, pending), job 13 (alice, running)"
