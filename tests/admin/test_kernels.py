"""Jupyter kernels of hpcenv envs, started and driven by the real jupyter_client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import hpcenv, isolated_environ

from hpcenv.build.builder import build_env
from hpcenv.demo.site import write_demo_site
from hpcenv.site.config import load_site
from hpcenv.spec.environment import parse_spec
from hpcenv.store import store_for
from hpcenv.store.lifecycle import remove_version

KERNEL_SPEC = """\
name: kenv
dependencies:
  - python=3.11
  - pip
  - hpcdemo-kernels
  - pip:
    - ipykernel
variables:
  KENV_SETTING: "from variables: a b"
"""

# Runs in a child with HOME set, so jupyter_client finds kernels by its own default paths.
DRIVER = r"""
import json, sys
from jupyter_client.manager import start_new_kernel

km, kc = start_new_kernel(kernel_name=sys.argv[1], startup_timeout=120)
out = []
def hook(msg):
    if msg["msg_type"] == "stream":
        out.append(msg["content"]["text"])
try:
    kc.execute_interactive(
        "import os, sys; print(json.dumps([sys.prefix, sys.executable, "
        "os.environ['KENV_SETTING'], os.environ['CONDA_PREFIX'], "
        "os.environ['HPCDEMO_KERNELS_VARIANT']]))".replace("json.dumps", "__import__('json').dumps"),
        output_hook=hook, timeout=60)
    # An interrupt must reach the kernel's python (the launcher execs it).
    msg_id = kc.execute("import time; time.sleep(60)")
    import time; time.sleep(2)
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=30)
    print(json.dumps({"out": "".join(out), "interrupt": reply["content"].get("ename")}))
finally:
    kc.stop_channels()
    km.shutdown_kernel(now=True)
"""


@pytest.fixture(scope="session")
def ipykernel_wheels(test_cache_dir: Path) -> Path:
    """ipykernel and its dependencies as wheels for the host python (the demo channel's), fetched
    once from the package registry with pip and cached: env builds then install them offline."""
    directory = test_cache_dir / f"ipykernel-wheels-py{sys.version_info.major}{sys.version_info.minor}"
    stamp = directory / ".complete"
    if not stamp.exists():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet",
                               "--disable-pip-version-check", "ipykernel", "-d", str(directory)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip("cannot fetch ipykernel's wheels with pip (no package registry?)")
        stamp.touch()
    return directory


@pytest.fixture(scope="module")
def kernel_site(tmp_path_factory, demo_channel, ipykernel_wheels):
    """A demo site whose pip sections install from the ipykernel wheels, and env kenv on it."""
    root = tmp_path_factory.mktemp("kernels")
    site_file = write_demo_site(root / "site", demo_channel,
                                pip=f"{{wheel_dir: {ipykernel_wheels}, no_index: true}}",
                                kernels_dir=str(root / "site-kernels"))
    record = build_env(parse_spec(KERNEL_SPEC), load_site(site_file)).record
    return site_file, record, root


def drive(kernel: str, home: Path) -> dict:
    env = isolated_environ(home)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_DATA_DIR", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, kernel], capture_output=True, text=True,
                          env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_user_kernel_runs_the_env_python_activated(kernel_site, tmp_path):
    site_file, record, _ = kernel_site
    home = tmp_path / "home"
    out = hpcenv("--site", str(site_file), "env", "kernel", "kenv", env=isolated_environ(home))
    assert out.returncode == 0, out.stderr
    kernel_dir = home / ".local/share/jupyter/kernels/hpcenv-kenv"
    assert str(kernel_dir) in out.stdout
    assert json.loads((kernel_dir / "kernel.json").read_text())["display_name"] == "kenv (hpcenv v1)"

    result = drive("hpcenv-kenv", home)
    prefix, executable, setting, conda_prefix, variant = json.loads(result["out"])
    assert os.path.realpath(prefix) == os.path.realpath(record.prefix)
    assert executable == f"{record.prefix}/bin/python"
    assert setting == "from variables: a b"
    assert conda_prefix == record.prefix
    assert variant == "cpu"  # the activate.d script of hpcdemo-kernels ran
    assert result["interrupt"] == "KeyboardInterrupt"


def test_site_wide_kernel_goes_to_kernels_dir(kernel_site, tmp_path):
    site_file, record, root = kernel_site
    home = tmp_path / "home"
    out = hpcenv("--site", str(site_file), "--json", "env", "kernel", "kenv", "--site-wide",
                 env=isolated_environ(home))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["directory"] == str(root / "site-kernels" / "hpcenv-kenv")
    assert data["version"] == record.version
    assert not (home / ".local/share/jupyter").exists()
    # Jupyter finds it through JUPYTER_PATH, as an Open OnDemand app would set it.
    env = isolated_environ(home)
    env["JUPYTER_PATH"] = str(root)
    os.rename(root / "site-kernels", root / "kernels")
    try:
        proc = subprocess.run([sys.executable, "-c",
                               "from jupyter_client.kernelspec import KernelSpecManager as K; "
                               "print(K().find_kernel_specs()['hpcenv-kenv'])"],
                              capture_output=True, text=True, env=env)
    finally:
        os.rename(root / "kernels", root / "site-kernels")
    assert proc.stdout.strip() == str(root / "kernels" / "hpcenv-kenv"), proc.stderr


def test_env_without_ipykernel_is_refused(tmp_path, demo_channel):
    site_file = write_demo_site(tmp_path / "site", demo_channel)
    build_env(parse_spec("name: nokernel\ndependencies:\n  - python=3.11\n"), load_site(site_file))
    home = tmp_path / "home"
    out = hpcenv("--site", str(site_file), "env", "kernel", "nokernel", env=isolated_environ(home))
    assert out.returncode == 1
    assert "nokernel version 1 lacks ipykernel" in out.stderr
    assert "add 'ipykernel' to the env's dependencies" in out.stderr
    assert not (home / ".local/share/jupyter/kernels/hpcenv-nokernel").exists()


def test_site_wide_without_kernels_dir_names_the_key(kernel_site, tmp_path, demo_channel,
                                                    ipykernel_wheels):
    _, _, root = kernel_site
    # the same envs and registry, through a site file without kernels_dir
    other = write_demo_site(root / "site", demo_channel, path=tmp_path / "no-kernels-dir.yaml",
                            pip=f"{{wheel_dir: {ipykernel_wheels}, no_index: true}}")
    out = hpcenv("--site", str(other), "env", "kernel", "kenv", "--site-wide",
                 env=isolated_environ(tmp_path / "home"))
    assert out.returncode == 2
    assert f"{other}: no kernels_dir is set" in out.stderr


def test_kernel_of_a_removed_version_says_how_to_fix(kernel_site, tmp_path, demo_channel):
    site_file, _, _ = kernel_site
    site = load_site(site_file)
    record = build_env(parse_spec(KERNEL_SPEC.replace("a b", "other")), site).record
    kernels = tmp_path / "kernels"
    out = hpcenv("--site", str(site_file), "env", "kernel", "kenv", "--dir", str(kernels),
                 env=isolated_environ(tmp_path / "home"))
    assert out.returncode == 0, out.stderr
    remove_version(store_for(site), "kenv", record.version, force=True)
    proc = subprocess.run(["/bin/bash", str(kernels / "hpcenv-kenv" / "launch.sh"), "-f", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"version {record.version} of kenv" in proc.stderr
    assert "hpcenv env kernel kenv" in proc.stderr
