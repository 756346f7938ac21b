"""``hpcenv demo DIR`` gives a pip-installed hpcenv the whole flow: its three printed commands
build the example env from the demo channel it wrote and run train.py as a job."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import HPCENV, isolated_environ


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HPCENV), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def test_demo_writes_a_workspace_whose_printed_commands_run_a_job(tmp_path: Path) -> None:
    env = isolated_environ(tmp_path / "home")
    demo = tmp_path / "my demo"
    written = run("demo", str(demo), env=env, cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    for name in ("environment.yml", "train.py", "site.yaml", "channel/channel/noarch/repodata.json",
                 "channel/wheels"):
        assert (demo / name).exists(), name
    lines = written.stdout.splitlines()
    commands = [line.strip() for line in lines[lines.index("next, run:") + 1:]]
    assert commands == [f"export HPCENV_SITE={demo}/site.yaml",
                        f"hpcenv env build {demo}/environment.yml",
                        f"hpcenv submit {demo}/train.py --env llm-finetune --wait"]

    # The three commands, as a user types them (the paths hold a space: quoted here).
    env["HPCENV_SITE"] = commands[0].split("=", 1)[1]
    built = run("env", "build", str(demo / "environment.yml"), "--json", env=env, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["cuda"] == "12.4"
    job = run("submit", str(demo / "train.py"), "--env", "llm-finetune", "--wait", env=env,
              cwd=tmp_path)
    assert job.returncode == 0, job.stderr
    # --wait says where the output went, and it holds the finished job's output.
    (where,) = [line for line in job.stderr.splitlines() if " output: " in line]
    output = Path(where.split(" output: ", 1)[1].split(" (or: ")[0])
    assert "done: w=" in output.read_text()
    assert "kernels: cuda124" in output.read_text()

    # Again: nothing is overwritten (an edited spec stays), the channel is not rebuilt.
    (demo / "environment.yml").write_text("name: mine\n")
    again = run("--json", "demo", str(demo), env=env, cwd=tmp_path)
    assert json.loads(again.stdout)["created"] == []
    assert (demo / "environment.yml").read_text() == "name: mine\n"


def test_demo_refuses_a_file_as_dir(tmp_path: Path) -> None:
    env = isolated_environ(tmp_path / "home")
    (tmp_path / "f").write_text("")
    proc = run("demo", str(tmp_path / "f"), env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "is not a directory" in proc.stderr
