"""``hpcenv run``: exec semantics through the real console script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HPCENV = str(Path(sys.executable).with_name("hpcenv"))


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """A conda prefix with a python and an activate.d script, made by hand."""
    prefix = tmp_path / "envs" / "demo"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "bin").mkdir()
    (prefix / "bin" / "python").symlink_to(os.path.realpath(sys.executable))
    activate_d = prefix / "etc" / "conda" / "activate.d"
    activate_d.mkdir(parents=True)
    (activate_d / "demo.sh").write_text('export DEMO_HOME="$CONDA_PREFIX/share/demo"\n')
    return prefix


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([HPCENV, "run", *argv], capture_output=True, text=True, timeout=60,
                          **kwargs)


def test_exit_code_passes_through(prefix: Path) -> None:
    proc = run("-p", str(prefix), "--", "python", "-c", "raise SystemExit(7)")
    assert proc.returncode == 7, proc.stderr


def test_activation_is_applied(prefix: Path) -> None:
    code = "import os, sys; print(os.environ['CONDA_PREFIX']); print(os.environ['DEMO_HOME']); print(sys.argv[1:])"
    proc = run("-p", str(prefix), "--", "python", "-c", code, "--json", "-n", "x")
    assert proc.returncode == 0, proc.stderr
    conda_prefix, demo_home, argv = proc.stdout.splitlines()
    assert conda_prefix == str(prefix)
    assert demo_home == f"{prefix}/share/demo"
    # options after CMD belong to CMD, not to hpcenv
    assert argv == "['--json', '-n', 'x']"


def test_command_is_found_on_the_env_path_first(prefix: Path) -> None:
    tool = prefix / "bin" / "ls"
    tool.write_text("#!/bin/sh\necho env-ls\n")
    tool.chmod(0o755)
    proc = run("-p", str(prefix), "ls")
    assert (proc.returncode, proc.stdout) == (0, "env-ls\n")


def test_missing_command_exits_127(prefix: Path) -> None:
    proc = run("-p", str(prefix), "--", "no-such-command-xyz")
    assert proc.returncode == 127
    assert proc.stderr.startswith("hpcenv: error: no-such-command-xyz: command not found")


def test_no_command_is_bad_usage(prefix: Path) -> None:
    proc = run("-p", str(prefix), "--")
    assert proc.returncode == 2
    assert f"no command given; usage: hpcenv run -p {prefix} -- CMD" in proc.stderr


def test_not_an_env(tmp_path: Path) -> None:
    proc = run("-p", str(tmp_path), "--", "true")
    assert proc.returncode == 1
    assert "conda-meta" in proc.stderr


def _wait_for(path: Path, proc: subprocess.Popen) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text().strip()
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    raise AssertionError(f"{path} was never written")


@pytest.mark.parametrize("handled", [True, False])
def test_sigterm_reaches_the_command_in_the_same_process(prefix: Path, tmp_path: Path,
                                                         handled: bool) -> None:
    pidfile = tmp_path / "pid"
    code = (
        "import os, signal, sys, time\n"
        + ("signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))\n" if handled else "")
        + f"open({str(pidfile)!r}, 'w').write(f'{{os.getpid()}}\\n')\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([HPCENV, "run", "-p", str(prefix), "--", "python", "-c", code],
                            stderr=subprocess.PIPE, text=True)
    try:
        child_pid = int(_wait_for(pidfile, proc))
        assert child_pid == proc.pid  # exec: CMD is the hpcenv process, nothing in between
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == (42 if handled else -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("argv", [["run", "-n", "N", "--", "true"],
                                  ["submit", "x.py", "--env", "N", "--dry-run"],
                                  ["env", "show", "N"]])
def test_a_5000_character_env_name_is_one_short_line(argv: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from hpcenv.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.py").write_text("print(1)\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("HPCENV_SITE", raising=False)
    name = "a" * 5000
    code = main([name if word == "N" else word for word in argv])
    err = capsys.readouterr().err
    assert code in (1, 2) and err.count("\n") == 1 and len(err) < 400, err[:500]
    assert "(5000 characters)" in err and "internal error" not in err
