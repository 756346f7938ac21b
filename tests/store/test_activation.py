"""Activation of a prefix without conda: variables, activate.d scripts, the bash form, exec."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcenv.errors import HpcenvError, NotFound
from hpcenv.store.activation import (
    CommandNotExecutable,
    CommandNotFound,
    activation_env,
    activation_script,
    resolve_command,
)

BASE = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/home/u", "LANG": "C.UTF-8"}


def make_prefix(root: Path, *, scripts: dict[str, str] | None = None,
                state: dict | None = None) -> Path:
    prefix = root / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "bin").mkdir()
    for name, text in (scripts or {}).items():
        d = prefix / "etc" / "conda" / "activate.d"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    if state is not None:
        (prefix / "conda-meta" / "state").write_text(json.dumps(state))
    return prefix


def test_plain_prefix_gets_conda_variables(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path)
    env = activation_env(prefix, BASE, name="demo")
    assert env["PATH"] == f"{prefix}/bin:/usr/local/bin:/usr/bin:/bin"
    assert env["CONDA_PREFIX"] == str(prefix)
    assert env["CONDA_DEFAULT_ENV"] == "demo"
    assert env["CONDA_PROMPT_MODIFIER"] == "(demo) "
    assert env["CONDA_SHLVL"] == "1"
    assert env["HOME"] == "/home/u"
    assert not any(k.startswith("CONDA_PREFIX_") for k in env)


def test_default_env_name_is_the_path(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path)
    assert activation_env(prefix, BASE)["CONDA_DEFAULT_ENV"] == str(prefix)


def test_replaces_a_previously_active_env(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path)
    base = dict(BASE, CONDA_PREFIX="/opt/old", CONDA_SHLVL="1",
                PATH="/opt/old/bin:/usr/bin:/bin")
    env = activation_env(prefix, base)
    assert env["PATH"] == f"{prefix}/bin:/usr/bin:/bin"
    assert env["CONDA_SHLVL"] == "2"
    assert env["CONDA_PREFIX_1"] == "/opt/old"


def test_activate_d_scripts_run_in_sorted_order_and_can_unset(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, scripts={
        "b.sh": 'export ORDER="${ORDER}b"\nexport LIB_HOME="$CONDA_PREFIX/share/lib"\n',
        "a.sh": 'export ORDER="a"\nunset LANG\necho "noise on stdout"\n',
        "ignored.csh": "setenv CSH_ONLY 1\n",
    })
    env = activation_env(prefix, BASE)
    assert env["ORDER"] == "ab"
    assert env["LIB_HOME"] == f"{prefix}/share/lib"
    assert "LANG" not in env
    assert "CSH_ONLY" not in env
    # bash's own bookkeeping does not leak into the activated environment
    assert "SHLVL" not in env and "_" not in env


def test_state_env_vars_are_exported(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, state={"env_vars": {"OMP_NUM_THREADS": "4", "SPACED": "a b"}})
    env = activation_env(prefix, BASE)
    assert env["OMP_NUM_THREADS"] == "4"
    assert env["SPACED"] == "a b"


@pytest.mark.parametrize("name", ["X;touch PWNED", "$(touch PWNED)", "1ABC", "A-B", "",
                                  "A B"])
def test_state_names_that_are_not_shell_names_are_refused(tmp_path: Path, name: str) -> None:
    # A hand-edited state file must not inject commands into job scripts.
    prefix = make_prefix(tmp_path, state={"env_vars": {"OK": "1", name: "v"}})
    state = prefix / "conda-meta" / "state"
    with pytest.raises(HpcenvError, match=rf"{state}: env_vars name .* is not a shell variable"):
        activation_script(prefix)
    with pytest.raises(HpcenvError, match="is not a shell variable name"):
        activation_env(prefix, BASE)
    assert not (tmp_path / "PWNED").exists()


def test_state_values_are_quoted_in_the_bash_form(tmp_path: Path) -> None:
    hostile = "$(touch PWNED); `touch PWNED`\n'\"; touch PWNED"
    prefix = make_prefix(tmp_path, state={"env_vars": {"V": hostile, "_U2": "x"}})
    script = activation_script(prefix)
    proc = subprocess.run(["/bin/bash", "--noprofile", "--norc", "-c", script + 'printf %s "$V"'],
                          env=BASE, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert proc.stdout == hostile
    assert not (tmp_path / "PWNED").exists()
    nul = make_prefix(tmp_path / "nul", state={"env_vars": {"V": "a\u0000b"}})
    with pytest.raises(HpcenvError, match="NUL byte"):
        activation_script(nul)


def test_failing_activation_script_is_a_clear_error(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, scripts={"bad.sh": "exit 3\n"})
    with pytest.raises(HpcenvError, match="bad.sh"):
        activation_env(prefix, BASE)


def test_not_a_prefix(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="conda-meta"):
        activation_env(tmp_path, BASE)


@pytest.mark.parametrize("base", [
    BASE,
    dict(BASE, CONDA_PREFIX="/opt/old", CONDA_SHLVL="1", PATH="/opt/old/bin:/usr/bin:/bin"),
])
def test_bash_script_matches_activation_env(tmp_path: Path, base: dict[str, str]) -> None:
    prefix = make_prefix(tmp_path, scripts={"x.sh": 'export X_HOME="$CONDA_PREFIX/x"\n'},
                         state={"env_vars": {"QUOTED": "it's $HOME"}})
    script = activation_script(prefix, name="demo")
    proc = subprocess.run(["/bin/bash", "--noprofile", "--norc", "-c", script + "exec env -0"],
                          env=base, capture_output=True, check=True)
    from_bash = dict(e.split("=", 1) for e in proc.stdout.decode().split("\0") if e)
    for key in ("_", "SHLVL", "PWD", "OLDPWD"):
        from_bash.pop(key, None)
    assert from_bash == activation_env(prefix, base, name="demo")
    assert from_bash["QUOTED"] == "it's $HOME"


def test_resolve_command_uses_the_env_path(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path)
    tool = prefix / "bin" / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    env = activation_env(prefix, dict(BASE, PATH=os.environ["PATH"]))
    assert resolve_command("tool", env) == str(tool)
    with pytest.raises(CommandNotFound) as info:
        resolve_command("no-such-tool-xyz", env)
    assert info.value.exit_code == 127
    data = prefix / "bin" / "data"
    data.write_text("x")
    data.chmod(0o644)
    with pytest.raises(CommandNotExecutable) as info2:
        resolve_command(str(data), env)
    assert info2.value.exit_code == 126


def test_exec_in_env_replaces_the_process(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, scripts={"v.sh": "export FROM_SCRIPT=yes\n"})
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hpcenv.store.activation import exec_in_env\n"
        f"exec_in_env(Path({str(prefix)!r}), ['sh', '-c', 'echo $$ $FROM_SCRIPT; exit 5'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    pid, value = out.split()
    assert int(pid) == proc.pid
    assert value == "yes"
    assert proc.returncode == 5


def test_find_named_env_searches_envs_dirs_in_order_and_resolves_symlinks(tmp_path: Path) -> None:
    from hpcenv.store.activation import find_named_env

    first, second = tmp_path / "a", tmp_path / "b"
    build = make_prefix(tmp_path / "builds")
    second.mkdir()
    (second / "demo").symlink_to(build)
    (first / "other" / "conda-meta").mkdir(parents=True)
    assert find_named_env([first, second], "demo") == build.resolve()
    assert find_named_env([first, second], "other") == (first / "other").resolve()
    with pytest.raises(NotFound, match="hpcenv env list"):
        find_named_env([first, second], "missing")
    with pytest.raises(HpcenvError) as info:
        find_named_env([first], "../a/other")
    assert info.value.exit_code == 2
