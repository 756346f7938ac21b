"""hpcenv with a real conda: ``conda hpcenv ...`` through conda's plugin entry point, and the
envs hpcenv builds as plain conda sees them (``hpcenv site condarc``: ``conda env list``,
``conda run -n``, ``conda activate``)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, conda_environ, hpcenv, isolated_environ

from hpcenv.build.builder import build_env
from hpcenv.demo.site import write_demo_site
from hpcenv.site.config import load_site
from hpcenv.spec.environment import parse_spec

SPEC = """\
name: plain
dependencies:
  - python=3.11
  - hpcdemo-kernels
variables:
  PLAIN_SETTING: "set by variables: 1 2"
"""

SHOW = ("import json, os, sys; print(json.dumps([sys.prefix, os.environ.get('PLAIN_SETTING'), "
        "os.environ.get('HPCDEMO_KERNELS_VARIANT')]))")


@pytest.fixture(scope="module")
def conda_world(real_conda: Path, demo_channel, tmp_path_factory):
    """A demo site with env ``plain`` built by hpcenv (py-rattler), its generated .condarc,
    and a clean environment for conda."""
    root = tmp_path_factory.mktemp("conda-world")
    site_file = write_demo_site(root / "site", demo_channel)
    record = build_env(parse_spec(SPEC), load_site(site_file)).record
    out = hpcenv("--site", str(site_file), "site", "condarc", env=isolated_environ(root / "home"))
    assert out.returncode == 0, out.stderr
    condarc = root / "condarc"
    condarc.write_text(out.stdout)
    return site_file, record, conda_environ(root / "home", condarc), real_conda


def test_conda_env_list_shows_hpcenv_envs_by_name(conda_world) -> None:
    site_file, record, env, conda = conda_world
    proc = subprocess.run([str(conda), "env", "list", "--json"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    envs = json.loads(proc.stdout)["envs"]
    published = str(Path(record.prefix).parents[2] / "plain")
    assert published in envs
    assert record.prefix not in envs  # the build dirs stay hpcenv's own


def test_conda_run_by_name_sees_variables_and_activate_d(conda_world) -> None:
    _, record, env, conda = conda_world
    proc = subprocess.run([str(conda), "run", "-n", "plain", "python", "-c", SHOW],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    prefix, setting, variant = json.loads(proc.stdout)
    assert Path(prefix).resolve() == Path(record.prefix).resolve()
    assert (setting, variant) == ("set by variables: 1 2", "cpu")


def test_conda_activate_by_name_and_deactivate(conda_world) -> None:
    _, record, env, conda = conda_world
    script = f"""
eval "$({conda} shell.bash hook)"
conda activate plain
python -c "{SHOW}"
echo "which=$(command -v python)"
conda deactivate
echo "after=${{PLAIN_SETTING:-unset}} ${{HPCDEMO_KERNELS_VARIANT:-unset}}"  # conda leaves some set to ""
"""
    proc = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    prefix, setting, variant = json.loads(lines[0])
    assert Path(prefix).resolve() == Path(record.prefix).resolve()
    assert (setting, variant) == ("set by variables: 1 2", "cpu")
    assert lines[1].endswith("/plain/bin/python")
    assert lines[2] == "after=unset unset"


def test_conda_hpcenv_runs_hpcenv_commands(conda_world) -> None:
    site_file, record, env, conda = conda_world
    helped = subprocess.run([str(conda), "--help"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert "hpcenv" in helped.stdout, helped.stderr

    listed = subprocess.run([str(conda), "hpcenv", "--site", str(site_file), "--json", "env",
                             "list"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [e["name"] for e in json.loads(listed.stdout)] == ["plain"]

    # exit codes and the one-line errors are hpcenv's; usage names the command as typed
    bad = subprocess.run([str(conda), "hpcenv", "--site", str(site_file), "env", "show", "Bad Name"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("hpcenv: error: "), bad.stderr
    usage = subprocess.run([str(conda), "hpcenv", "env", "build", "--help"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert usage.stdout.startswith("usage: conda hpcenv env build"), usage.stderr


def test_conda_hpcenv_submit_runs_the_job_in_the_env(conda_world, tmp_path) -> None:
    site_file, record, env, conda = conda_world
    script = tmp_path / "job.py"
    script.write_text(SHOW.replace("; print(", ";\nimport sys\nprint(") + "\nsys.exit(4)\n")
    proc = subprocess.run([str(conda), "hpcenv", "--site", str(site_file), "--json", "submit",
                           str(script), "--env", "plain", "--wait"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 4, proc.stderr
    job = json.loads(proc.stdout)
    assert job["exit_code"] == 4
    out = subprocess.run([str(conda), "hpcenv", "--site", str(site_file), "logs", job["job_id"]],
                         capture_output=True, text=True, env=env, timeout=120)
    prefix, setting, variant = json.loads(out.stdout)
    assert prefix == record.prefix and setting == "set by variables: 1 2"


def test_plugin_is_declared_for_conda() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points.conda]\nhpcenv = "hpcenv.cli.conda_plugin"' in text
