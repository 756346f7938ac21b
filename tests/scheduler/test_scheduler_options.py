"""Slurm option values: one grammar for submit, the site config, the local executor and the
durations Slurm prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcenv.errors import InvalidInput
from hpcenv.scheduler.options import (
    extra_arg_problem,
    mem_problem,
    name_problem,
    parse_time_limit,
    signal_spec_problem,
    time_problem,
)
from hpcenv.scheduler.slurm_cli import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 1800), ("1:30", 90), ("1:00:05", 3605), ("2-3", 2 * 86400 + 3 * 3600),
    ("1-2:30", 86400 + 2 * 3600 + 30 * 60), ("1-0:0:10", 86410), ("00:00:02", 2),
    ("UNLIMITED", None), ("infinite", None),
])
def test_time_limits_read_as_sbatch_does(text: str, seconds: float | None) -> None:
    assert time_problem(text) is None
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize("text", ["1h", "1:2:3:4", "-5", "1-", "1.5", "", "1:0a", "1-2-3"])
def test_bad_time_limits_are_refused(text: str) -> None:
    assert time_problem(text) is not None
    with pytest.raises(InvalidInput, match="expected a Slurm time limit"):
        parse_time_limit(text)


def test_durations_slurm_prints() -> None:
    # Elapsed/RunTime are HH:MM:SS or D-HH:MM:SS; Slurm's placeholders mean "no value".
    assert parse_duration("00:01:05") == 65
    assert parse_duration("1-00:00:01") == 86401
    assert parse_duration("INVALID") is None
    assert parse_duration("N/A") is None
    assert parse_duration(None) is None
    assert parse_duration("garbage") is None


@pytest.mark.parametrize(("text", "ok"), [("16G", True), ("4000", True), ("4000M", True),
                                          ("2GB", True), ("1.5G", False), ("16 G", False),
                                          ("G", False), ("16B", False)])
def test_memory_sizes(text: str, ok: bool) -> None:
    assert (mem_problem(text) is None) == ok


@pytest.mark.parametrize("arg", ["--exclusive", "--mail-type=END,FAIL", "--requeue", "-H",
                                 "--cpus-per-gpu=4", "--gpu-bind=closest", "--exclusive=user",
                                 "--comment=x"])
def test_good_extra_args(arg: str) -> None:
    assert extra_arg_problem(arg) is None


@pytest.mark.parametrize(("arg", "why"), [
    ("exclusive", "expected one sbatch option"),
    ("--mail-user=a b", "expected one sbatch option"),
    ("--comment=$(id)", "expected one sbatch option"),
    ("--x\n--y", "control characters"),
    ("--wrap=id", "replace the job script"),
    ("--wrap", "replace the job script"),
    # Placement belongs to routing; each spelling sbatch accepts is refused, naming the option
    # hpcenv offers instead.
    ("--partition=gpu-v100", "--partition is not allowed here: placement is decided by routing"),
    ("--part=gpu-v100", "--partition is not allowed here"),
    ("-pgpu-v100", "--partition is not allowed here"),
    ("-p", "--partition is not allowed here"),
    ("--constraint=cuda12.2", "--constraint is not allowed here"),
    ("-Ccuda12.2", "--constraint is not allowed here"),
    ("--gres=gpu:v100:1", "use --gpus N and --gpu-type T"),
    ("--gpus=2", "--gpus is not allowed here"),
    ("-G2", "--gpus is not allowed here"),
    ("--gpus-per-node=2", "--gpus-per-node is not allowed here"),
    ("--nodelist=v100n1", "--nodelist is not allowed here"),
    ("-wv100n1", "--nodelist is not allowed here"),
    ("--exclude=a100n1", "--exclude is not allowed here"),
    ("-xa100n1", "--exclude is not allowed here"),
    ("-W", "use hpcenv's --wait"),
    ("--wait", "use hpcenv's --wait"),
    ("--parsable", "reads the job id itself"),
    ("--test-only", "use hpcenv's --dry-run"),
])
def test_bad_extra_args_say_why(arg: str, why: str) -> None:
    problem = extra_arg_problem(arg)
    assert problem is not None and why in problem


def test_names() -> None:
    assert name_problem("proj_1.a-b", "an account name") is None
    problem = name_problem("a;b", "an account name")
    assert problem is not None and problem.startswith("expected an account name")


@pytest.mark.parametrize(("slurm", "line", "fragment"), [
    ("  extra_args:\n    - --exclusive\n    - --wrap=id\n", 4,
     "slurm.extra_args: '--wrap=id' is not an sbatch option hpcenv can pass on: --wrap is not "
     "allowed here"),
    ("  extra_args: ['--mail-user=a b']\n", 2, "expected one sbatch option"),
    ("  time: 1h\n", 2, "slurm.time: '1h' is not a valid sbatch value: expected a Slurm time"),
    ("  mem: 1.5G\n", 2, "slurm.mem: '1.5G' is not a valid sbatch value: expected a memory size"),
    ("  account: 'a b'\n", 2, "expected an account name"),
])
def test_site_defaults_are_checked_by_the_same_rules(tmp_path: Path, slurm: str, line: int,
                                                     fragment: str) -> None:
    # What submit would refuse must fail when the site config is read, at its line.
    from hpcenv.site.config import load_site

    cfg = tmp_path / "site.yaml"
    cfg.write_text("slurm:\n" + slurm)
    with pytest.raises(InvalidInput) as err:
        load_site(cfg)
    assert str(err.value).startswith(f"{cfg}:{line}: ") and fragment in str(err.value)


def test_good_site_defaults_render(tmp_path: Path) -> None:
    from hpcenv.scheduler.job_options import JobOptions, sbatch_lines
    from hpcenv.site.config import load_site

    cfg = tmp_path / "site.yaml"
    cfg.write_text("slurm:\n  time: 1-00:00\n  mem: 16G\n  extra_args: [--exclusive]\n")
    site = load_site(cfg)
    lines = sbatch_lines(JobOptions(job_name="x", time=site.slurm.time, mem=site.slurm.mem,
                                    extra_args=site.slurm.extra_args))
    assert "--time=1-00:00" in lines and "--mem=16G" in lines and "--exclusive" in lines


def test_signal_specs_use_the_cancel_validator() -> None:
    from hpcenv.scheduler.options import signal_name, signal_number

    assert signal_spec_problem("USR1@120") is None and signal_spec_problem("B:10") is None
    # sbatch and scancel refuse PIPE by name: both paths refuse it before anything is built.
    for bad in ("PIPE", "BANANA@5"):
        assert "unknown signal" in (signal_spec_problem(bad) or "")
        with pytest.raises(InvalidInput, match="unknown signal"):
            signal_number(bad.split("@")[0])
    assert signal_spec_problem("USR1@99999") is not None
    assert signal_spec_problem("USR1@6\n0") is not None
    # A number Slurm has no name for is passed on as a number.
    assert (signal_name(13), signal_name("sigusr1"), signal_number(13)) == ("13", "USR1", 13)
