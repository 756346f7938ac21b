"""``engine: conda`` with a real conda (classic solver) on the demo channel, through the CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import conda_environ, hpcenv

from hpcenv.demo.site import write_demo_site

SPEC = """\
name: {name}
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - hpcdemo-tools
{extra}variables:
  ENGINE_SETTING: "by conda"
"""


@pytest.fixture(scope="module")
def sites(real_conda: Path, demo_channel, tmp_path_factory):
    """Two sites on the demo channel: one solving with conda, one with py-rattler."""
    root = tmp_path_factory.mktemp("conda-engine")
    conda_site = write_demo_site(root / "conda", demo_channel, engine="conda",
                                 conda_exe=str(real_conda), launcher="activate")
    rattler_site = write_demo_site(root / "rattler", demo_channel)
    return conda_site, rattler_site, conda_environ(root / "home"), root


def build(site: Path, env: dict[str, str], tmp: Path, name: str, extra: str = "",
          *args: str) -> subprocess.CompletedProcess[str]:
    spec = tmp / f"{name}.yml"
    spec.write_text(SPEC.format(name=name, extra=extra))
    return hpcenv("--site", str(site), "--json", "env", "build", str(spec), *args, env=env)


def packages(site: Path, env: dict[str, str], name: str) -> set[tuple[str, str, str]]:
    out = hpcenv("--site", str(site), "env", "export", name, "--explicit", env=env)
    assert out.returncode == 0, out.stderr
    return {tuple(line.rsplit("/", 1)[1].split("#")[0].rsplit("-", 2))
            for line in out.stdout.splitlines() if line.startswith("file:")}


def test_conda_builds_the_env_rattler_would(sites, tmp_path) -> None:
    conda_site, rattler_site, env, root = sites
    built = build(conda_site, env, tmp_path, "viaconda")
    assert built.returncode == 0, built.stderr
    record = json.loads(built.stdout)
    assert record["status"] == "built"
    shown = json.loads(hpcenv("--site", str(conda_site), "--json", "env", "show", "viaconda",
                              env=env).stdout)
    assert shown["engine"] == "conda"
    assert build(rattler_site, env, tmp_path, "viaconda").returncode == 0
    assert packages(conda_site, env, "viaconda") == packages(rattler_site, env, "viaconda")

    ran = hpcenv("--site", str(conda_site), "run", "-n", "viaconda", "--", "python", "-c",
                 "import os, sys, hpcdemo_kernels as k; "
                 "print(sys.prefix, os.environ['ENGINE_SETTING'], k.VARIANT)", env=env)
    assert ran.stdout.split(" ", 1) == [record["prefix"], "by conda cpu\n"], ran.stderr
    # conda did not list the build prefix as an env of its own (conda env list would show it)
    for listed in (Path(env["HOME"]) / ".conda").glob("environments.txt"):
        assert record["prefix"] not in listed.read_text()


def test_conda_gets_the_cuda_build_through_the_override(sites, tmp_path) -> None:
    conda_site, _, env, _ = sites
    built = build(conda_site, env, tmp_path, "gpu", "  - cuda-version=12.4\n")
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["cuda"] == "12.4"
    ran = hpcenv("--site", str(conda_site), "run", "-n", "gpu", "--", "python", "-c",
                 "import hpcdemo_kernels as k; print(k.VARIANT)", env=env)
    assert ran.stdout == "cuda124\n", ran.stderr
    # without __cuda (and without the pin, which --no-cuda would contradict): the CUDA builds
    # need it, so conda picks the CPU build
    cpu = build(conda_site, env, tmp_path, "gpu2", "", "--no-cuda")
    assert cpu.returncode == 0, cpu.stderr
    ran = hpcenv("--site", str(conda_site), "run", "-n", "gpu2", "--", "python", "-c",
                 "import hpcdemo_kernels as k; print(k.VARIANT)", env=env)
    assert ran.stdout == "cpu\n", ran.stderr


def test_unknown_package_is_bad_input(sites, tmp_path) -> None:
    conda_site, _, env, _ = sites
    refused = build(conda_site, env, tmp_path, "missing", "  - nosuchpkg\n")
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"hpcenv: error: {tmp_path}/missing.yml:") and "nosuchpkg" in line
