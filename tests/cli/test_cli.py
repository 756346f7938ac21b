"""Global CLI behaviour through the installed console script: version, help on every command,
global options on either side of the command, exit codes and one-line errors, interrupts,
and a light import path for ``hpcenv --help``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HPCENV, REPO, hpcenv, isolated_environ

from hpcenv import __version__
from hpcenv.cli import build_parser, main

ROOT = REPO
HEAVY = ("rattler", "fabric", "jinja2", "paramiko", "invoke")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return isolated_environ(tmp_path / "home")


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "environment.yml"
    path.write_text("name: demo\nchannels: [conda-forge]\ndependencies:\n"
                    "  - python=3.11\n  - pytorch-cuda=12.1\n")
    return path


# --------------------------------------------------------------------------- version and help

def test_version_through_the_console_script() -> None:
    result = hpcenv("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"hpcenv {__version__}"


def test_python_dash_m_help(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hpcenv", "--help"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: hpcenv")
    for option in ("--site PATH", "--json", "--verbose", "--quiet", "--version"):
        assert option in result.stdout


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
              ) -> Iterator[tuple[str, ...]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    continue  # an alias (env create = env build): its help is the command's
                seen.add(id(sub))
                yield (*path, name)
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))


def test_the_walk_finds_every_command_group() -> None:
    assert {c[0] for c in COMMANDS} >= {"site", "env", "run", "submit", "jobs", "status",
                                        "logs", "cancel"}
    assert ("env", "inspect") in COMMANDS and ("site", "condarc") in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...],
                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: hpcenv {' '.join(command)}")
    # The global options are accepted after every command, so its help lists them.
    assert "--json" in out and "--site PATH" in out
    # A description or the sub-command list, not just a bare usage line.
    assert len(out.splitlines()) > 4


def _sub_parser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_the_parser_of_one_command_reads_it_as_the_whole_parser_does(
        command: tuple[str, ...]) -> None:
    # main() builds only the command (and action) named: its options and help are the same,
    # and so is the help of the group above it, which lists its siblings by their help lines.
    full = build_parser()
    for depth in range(1, len(command) + 1):
        one = build_parser(path=command[:depth])
        for level in range(depth + 1):
            assert (_sub_parser(one, command[:level]).format_help()
                    == _sub_parser(full, command[:level]).format_help())


def test_the_top_level_help_lists_every_command_without_building_their_options() -> None:
    # main() builds the summaries when no command is named (--help, no command, a typo).
    summaries = build_parser(path=())
    assert summaries.format_help() == build_parser().format_help()
    assert summaries.format_usage() == build_parser().format_usage()
    env = _sub_parser(summaries, ("env",))
    assert env.format_help().startswith("usage: hpcenv env [-h]\n")  # a help line, no options


@pytest.mark.parametrize("argv, path", [
    (["status", "12"], ("status",)), (["--site", "status", "jobs"], ("jobs",)),
    (["--site=x.yaml", "-vv", "--json", "env", "list"], ("env", "list")),
    (["-q", "submit", "x.py"], ("submit",)), (["--remote", "hpc", "logs", "3"], ("logs",)),
    # Global options between the command and its action; an alias names its action.
    (["env", "--site", "show", "-q", "show", "x"], ("env", "show")),
    (["env", "create", "-f", "x.yml"], ("env", "build")), (["site", "check"], ("site", "check")),
    # A command's help lists its actions; an unknown action: all of them.
    (["env", "--help", "list"], ("env",)), (["env", "lsit"], ("env",)), (["env"], ("env",)),
    (["submit", "list"], ("submit",)),
    # The top-level help and version list every command; unknown or no command: all of them.
    (["--help", "status"], ()), (["-h"], ()), (["--version"], ()), (["bogus"], ()),
    (["--json"], ()), (["--remote"], ()), ([], ()),
    # After "--" every word is positional: the first is still the command, then its action.
    (["-v", "--", "status", "12"], ("status",)), (["--", "--json"], ()),
    (["--", "env", "list"], ("env", "list"))])
def test_the_command_path_is_found_past_the_global_options(argv: list[str],
                                                           path: tuple[str, ...]) -> None:
    from hpcenv.cli import _command_path

    assert _command_path(argv) == path


def test_job_control_commands_do_not_build_the_job_option_table(tmp_path: Path,
                                                                env: dict[str, str]) -> None:
    result = subprocess.run([str(HPCENV), "status", "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, timeout=60)
    assert result.returncode == 0 and "usage: hpcenv status" in result.stdout, result.stderr
    timed = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:")}
    assert "hpcenv.cli.job_cmd" in timed and "hpcenv.scheduler.job_options" not in timed


@pytest.mark.parametrize("words, module", [(("env", "list"), "env_build_cmd"),
                                           (("site", "show"), "site_cmd"),
                                           (("status", "1"), "job_cmd")])
def test_a_command_imports_only_its_own_command_module(tmp_path: Path, env: dict[str, str],
                                                       words: tuple[str, ...],
                                                       module: str) -> None:
    result = subprocess.run([str(HPCENV), *words, "--help"], capture_output=True, text=True,
                            cwd=tmp_path, env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, timeout=60)
    assert result.returncode == 0 and f"usage: hpcenv {words[0]}" in result.stdout, result.stderr
    timed = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:")}
    commands = {name for name in timed if name.startswith("hpcenv.cli.") and name.endswith("_cmd")}
    assert commands - {"hpcenv.cli.env_cmd"} == {f"hpcenv.cli.{module}"}


def test_sub_command_help_through_the_console_script() -> None:
    result = hpcenv("env", "inspect", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: hpcenv env inspect")


# --------------------------------------------------------------------------- global options

def test_global_options_before_and_after_the_command(spec_file: Path,
                                                     env: dict[str, str]) -> None:
    before = hpcenv("--json", "env", "inspect", str(spec_file), env=env)
    after = hpcenv("env", "inspect", str(spec_file), "--json", env=env)
    assert before.returncode == after.returncode == 0
    assert json.loads(before.stdout) == json.loads(after.stdout)
    assert json.loads(before.stdout)["cuda"] == "12.1"
    # Without --json the same command prints text, not JSON.
    human = hpcenv("env", "inspect", str(spec_file), env=env)
    with pytest.raises(json.JSONDecodeError):
        json.loads(human.stdout)


def test_site_option_before_and_after_the_command(tmp_path: Path, env: dict[str, str]) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("channels: [bioconda]\n")
    for args in (("--site", str(site), "--json", "site", "show"),
                 ("site", "show", "--json", "--site", str(site))):
        result = hpcenv(*args, env=env)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["config"]["channels"] == ["bioconda"]
        assert data["provenance"]["channels"] == f"{site}:1"


def test_quiet_and_verbose_are_accepted_on_either_side(spec_file: Path,
                                                       env: dict[str, str]) -> None:
    for args in (("-q", "env", "inspect", str(spec_file)),
                 ("env", "inspect", str(spec_file), "--quiet"),
                 ("-v", "env", "inspect", str(spec_file)),
                 ("env", "inspect", "--verbose", str(spec_file))):
        result = hpcenv(*args, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert "demo" in result.stdout


# --------------------------------------------------------------------------- usage errors

@pytest.mark.parametrize("args", [
    ("bogus",),
    ("env", "bogus"),
    ("--no-such-option", "site", "show"),
    ("site", "show", "--no-such-option"),
    ("env", "inspect"),
    ("env", "inspect", "a.yml", "b.yml"),
    ("--site",),
    ("cancel",),
], ids=" ".join)
def test_usage_errors_exit_2_with_one_line(args: tuple[str, ...], env: dict[str, str]) -> None:
    result = hpcenv(*args, env=env)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hpcenv: error: ")
    assert "--help" in lines[0]


@pytest.mark.parametrize(("args", "message"), [
    (("env", "build", "F", "--cdua", "12.4"),
     "unknown option --cdua (did you mean --cuda?) (see 'hpcenv env build --help')"),
    (("env", "list", "--jsno"),
     "unknown option --jsno (did you mean --json?) (see 'hpcenv env list --help')"),
    (("--json", "status", "1", "--zzz=3"), "unknown option --zzz (see 'hpcenv status --help')"),
    (("env", "inspect", "a.yml", "b.yml"),
     "unexpected argument b.yml (see 'hpcenv env inspect --help')"),
    # Before SCRIPT an unknown option is a typo of submit's own ...
    (("submit", "--evn", "x", "train.py"),
     "unknown option --evn (did you mean --env?) (see 'hpcenv submit --help')"),
    # ... after it, most likely the script's: say how to pass it, and guess only at slips.
    (("submit", "train.py", "--env", "x", "--steps", "3"),
     "unknown option --steps; put the script's own options after '--': "
     "hpcenv submit train.py --env x -- --steps 3 (see 'hpcenv submit --help')"),
    (("submit", "train.py", "--steps", "3", "--env", "x", "--", "--lr", "1"),
     "unknown option --steps; put the script's own options after '--': "
     "hpcenv submit train.py --env x -- --steps 3 --lr 1 (see 'hpcenv submit --help')"),
    (("submit", "train.py", "--tiem", "5", "--env", "x"),
     "unknown option --tiem (did you mean --time?); put the script's own options after '--': "
     "hpcenv submit train.py --env x -- --tiem 5 (see 'hpcenv submit --help')"),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_unknown_options_name_the_sub_command_and_a_fix(
        args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    # Under --json the error is also the one JSON document on stdout.
    expected_out = {"error": message, "exit_code": 2} if "--json" in args else None
    assert (json.loads(captured.out) if captured.out else None) == expected_out
    assert captured.err == f"hpcenv: error: {message}\n"


def test_script_options_after_double_dash_still_reach_the_script() -> None:
    args = build_parser().parse_args(["submit", "train.py", "--env", "x", "--", "--steps", "3"])
    assert (args.script, args.program_args, args.env) == ("train.py", ["--steps", "3"], "x")


def test_no_command_prints_usage_and_exits_2(env: dict[str, str]) -> None:
    result = hpcenv(env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: hpcenv")
    assert "COMMAND" in result.stderr


def test_group_without_action_prints_its_usage_and_exits_2(env: dict[str, str]) -> None:
    result = hpcenv("env", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: hpcenv env")


# --------------------------------------------------------------------------- failures

# Runs the real main() with the `env inspect` handler replaced, standing in for a bug or a
# long-running command.  The handler is looked up when the parser is built, inside main().
_PATCHED = """\
import sys, time
import hpcenv.cli.env_spec_cmd as cmd
from hpcenv.cli import main

def handler(args, ctx):
    if "{mode}" == "bug":
        raise RuntimeError("boom\\nsecond line")
    print("ready", flush=True)
    time.sleep(60)
    return 0

cmd._inspect = handler
raise SystemExit(main(sys.argv[1:]))
"""


def _patched(mode: str, *args: str, tmp_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _PATCHED.format(mode=mode), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)


def test_unexpected_exception_is_one_line_exit_1(tmp_path: Path) -> None:
    proc = _patched("bug", "env", "inspect", "x.yml", tmp_path=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert out == ""
    assert err.splitlines() == ["hpcenv: internal error: RuntimeError: boom second line "
                                "(rerun with -v for the traceback)"]


def test_unexpected_exception_with_verbose_shows_the_traceback(tmp_path: Path) -> None:
    proc = _patched("bug", "-v", "env", "inspect", "x.yml", tmp_path=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in err
    assert ", in handler" in err and "RuntimeError: boom\nsecond line" in err
    assert err.splitlines()[-1].startswith("hpcenv: internal error: RuntimeError: boom")


def test_keyboard_interrupt_exits_130(tmp_path: Path) -> None:
    proc = _patched("wait", "env", "inspect", "x.yml", tmp_path=tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip() == "hpcenv: interrupted"


def test_bad_input_error_has_traceback_only_with_verbose(tmp_path: Path,
                                                         env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("dependencies:\n  - numpy\n - scipy\n")
    quiet = hpcenv("env", "inspect", str(bad), env=env)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    loud = hpcenv("env", "inspect", str(bad), "-v", env=env)
    assert loud.returncode == 2 and "Traceback" in loud.stderr
    assert loud.stderr.splitlines()[-1] == quiet.stderr.strip()


def test_closed_stdout_is_not_a_traceback(spec_file: Path, env: dict[str, str]) -> None:
    # `hpcenv ... | head -0`: the reader is gone before hpcenv writes.
    proc = subprocess.Popen([str(HPCENV), "--json", "env", "inspect", str(spec_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    proc.stderr.close()
    assert "Traceback" not in err and "Exception ignored" not in err
    assert proc.returncode in (0, 1)


# --------------------------------------------------------------------------- import cost

def test_help_path_imports_no_heavy_library(tmp_path: Path) -> None:
    code = ("import json, sys, hpcenv.cli; hpcenv.cli.build_parser(); "
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = {m.split(".")[0] for m in json.loads(result.stdout)}
    # -X importtime lists every module imported, including any a module dropped again.
    timed = {line.split("|")[-1].strip().split(".")[0]
             for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "hpcenv" in timed
    for name in HEAVY:
        assert name not in loaded and name not in timed, name


@pytest.mark.parametrize("words", [("--help",), ("env", "build", "--help"),
                                   ("submit", "--help"), ("site", "check", "--help")])
def test_help_through_the_console_script_loads_no_yaml_or_heavy_library(
        tmp_path: Path, env: dict[str, str], words: tuple[str, ...]) -> None:
    # The real entry point, not just build_parser: main() must not read a site config (YAML)
    # or reach the engines before argparse prints the help and exits.
    result = subprocess.run([str(HPCENV), *words], capture_output=True, text=True, cwd=tmp_path,
                            env={**env, "PYTHONPROFILEIMPORTTIME": "1"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: hpcenv" in result.stdout
    timed = {line.split("|")[-1].strip().split(".")[0]
             for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "hpcenv" in timed
    for name in (*HEAVY, "yaml"):
        assert name not in timed, name


# --------------------------------------------------------------------------- bad input

# (file name, content or None for a directory, command, line or None, fragments of the fix)
BAD_INPUT = [
    ("bad.yml", "name: x\ndependencies:\n  - numpy\n - scipy\n", "inspect", 4,
     ("invalid YAML", "fix the syntax")),
    ("site.yaml", "channels: [a\nengine: rattler\n", "site", 2, ("invalid YAML",)),
    ("site.yaml", "# notes\nenvs_dir: [/x]\n", "site", 2,
     ("unknown key 'envs_dir'", "did you mean 'envs_dirs'?")),
    ("site.yaml", "slurm:\n  cpus_per_task: many\n", "site", 2,
     ("slurm.cpus_per_task: expected a whole number", "write a number")),
    ("site.yaml", "partitions:\n  - {name: a}\n  - {name: a}\n", "site", 3,
     ("duplicate partition 'a' (first on line 2)", "list each partition once")),
    ("site.yaml", "partitions:\n  - {name: g, gpus_per_node: 1, max_cuda: '12'}\n", "site", 2,
     ("max_cuda: '12' is not a CUDA version", "MAJOR.MINOR")),
    ("site.yaml", "partitions:\n  - {name: g, gpus_per_node: 1, driver: latest}\n", "site", 2,
     ("'latest' is not a driver version", "nvidia-smi")),
    ("env.yml", "name: ../escape\ndependencies: [numpy]\n", "inspect", 1,
     ("invalid environment name '../escape'", "e.g. 'cv-resnet50-exp1'")),
    ("env.yml", "name: x\nchannels: [conda-forge]\n", "inspect", 1,
     ("no 'dependencies:' section", "list the packages")),
    ("env.yml", "", "inspect", None, ("empty environment file", "needs at least")),
    ("env.yml", "dependencies: [numpy]\nvariables: [A]\n", "inspect", 2,
     ("'variables' must be a mapping",)),
    ("site.yaml", "", "site", None, ("empty site config", "or delete the file")),
    ("env.yml", None, "inspect", None, ("is a directory", "give the path")),
    ("site.yaml", None, "site", None, ("is a directory", "give the path")),
    ("env.yml", b"name: x\n# caf\xe9\ndependencies: [a]\n", "inspect", 2,
     ("not UTF-8 text", "save the environment file as UTF-8")),
]


def _command(kind: str, path: Path) -> tuple[str, ...]:
    return ("env", "inspect", str(path)) if kind == "inspect" else \
        ("--site", str(path), "site", "show")


@pytest.mark.parametrize(("name", "content", "kind", "line", "fragments"), BAD_INPUT,
                         ids=[f"{b[2]}-{b[4][0][:30]}" for b in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_naming_file_line_and_fix(
        tmp_path: Path, env: dict[str, str], name: str, content: str | bytes | None, kind: str,
        line: int | None, fragments: tuple[str, ...]) -> None:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    result = hpcenv(*_command(kind, path), env=env)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    where = f"{path}:{line}: " if line is not None else str(path)
    assert lines[0].startswith("hpcenv: error: ")
    assert where in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("kind", ["inspect", "site"])
def test_missing_file_exits_2(tmp_path: Path, env: dict[str, str], kind: str) -> None:
    path = tmp_path / "absent.yml"
    result = hpcenv(*_command(kind, path), env=env)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert str(path) in result.stderr
    assert ("check the path" if kind == "inspect" else "fix the path") in result.stderr


def _as_other_user() -> list[str]:
    """A prefix that runs a command as a user the test's files are not readable by.

    Root reads every file whatever its mode, so as root the command runs as nobody.
    """
    if os.geteuid() != 0:
        return []
    import shutil

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot make a file unreadable")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.parametrize(("kind", "what"), [("inspect", "environment file"),
                                            ("site", "site config")])
def test_unreadable_file_exits_2(kind: str, what: str, env: dict[str, str]) -> None:
    import tempfile

    # Outside pytest's tmp dir, whose 0700 parent would hide the file from the other user.
    with tempfile.TemporaryDirectory(prefix="hpcenv-unreadable-") as tmp:
        os.chmod(tmp, 0o755)
        path = Path(tmp) / "private.yml"
        path.write_text("name: x\ndependencies: [numpy]\n")
        path.chmod(0)
        env = {**env, "HOME": tmp}
        result = subprocess.run([*_as_other_user(), str(HPCENV), *_command(kind, path)],
                                capture_output=True, text=True, env=env, cwd=tmp, timeout=60)
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        f"hpcenv: error: {path}: permission denied; make the {what} (and the directories "
        "above it) readable for you, or use a copy"]



def test_error_details_are_printed_indented_below_the_one_line_message(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from hpcenv import cli
    from hpcenv.errors import InvalidInput

    def failing(_args: object, _ctx: object) -> int:
        raise InvalidInput("needs CUDA 12.8;\nbest is 12.4",
                           details="PARTITION  CUDA\ngpu-a100   12.4\n")

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands.choices["site"].set_defaults(handler=failing)
    monkeypatch.setattr(cli, "build_parser", lambda prog="hpcenv", **_which: parser)

    assert cli.main(["site"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "hpcenv: error: needs CUDA 12.8; best is 12.4",
        "  PARTITION  CUDA",
        "  gpu-a100   12.4",
    ]


@pytest.mark.parametrize("args, code, fragment", [
    (("env", "show", "nope"), 1, "no environment 'nope'"),
    (("env", "bild"), 2, "invalid choice: 'bild'"),
    (("env", "inspect", "missing.yml"), 2, "missing.yml"),
    (("env",), 2, "no command given"),
    (("submit", "x.py", "--tiem", "5"), 2, "--tiem (did you mean --time?)"),
], ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_json_errors_are_one_json_document_on_stdout(args: tuple[str, ...], code: int,
                                                     fragment: str, env: dict[str, str],
                                                     tmp_path: Path) -> None:
    proc = hpcenv("--json", *args, env=env, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    document = json.loads(proc.stdout)  # the whole of stdout is one document
    assert document["exit_code"] == code and fragment in document["error"]
    # Humans still get the line (or, for a group without an action, its usage).
    assert f"hpcenv: error: {document['error']}" in proc.stderr or \
        proc.stderr.startswith("usage: hpcenv env")
    # Without --json, stdout stays empty.
    assert hpcenv(*args, env=env, cwd=tmp_path).stdout == ""


def test_json_internal_error_is_a_json_document(tmp_path: Path) -> None:
    proc = _patched("bug", "--json", "env", "inspect", "x.yml", tmp_path=tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert json.loads(out) == {"error": "internal error: RuntimeError: boom second line",
                               "exit_code": 1}
