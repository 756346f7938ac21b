"""Lmod modulefiles of published envs, loaded by Debian's real Lmod (installed when root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import hpcenv, isolated_environ

from hpcenv.build.builder import build_env
from hpcenv.demo.site import write_demo_site
from hpcenv.errors import InvalidInput
from hpcenv.site.config import load_site
from hpcenv.spec.environment import parse_spec
from hpcenv.store import store_for
from hpcenv.store.lifecycle import remove_env, remove_version, rollback
from hpcenv.store.modules import _lua_string, env_module_dir

LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")

SPEC = """\
name: modenv
dependencies:
  - python=3.11
  - hpcdemo-kernels
variables:
  MODENV_GREETING: "{greeting}"
"""


@pytest.fixture(scope="module")
def lmod() -> Path:
    """Debian's lmod, installed with apt-get when missing (root only)."""
    if not LMOD_INIT.exists():
        if os.geteuid() != 0:
            pytest.skip("Lmod is not installed and installing it (apt-get install lmod) needs root")
        cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "lmod"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=True)
            subprocess.run(cmd, env=env, capture_output=True, check=True)
    return LMOD_INIT


def module_shell(script: str, modules: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``script`` in a clean bash with Lmod initialised and ``modules`` on MODULEPATH."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "LMOD_IGNORE_CACHE": "1", "MODENV_GREETING": "before"}
    text = f"source {LMOD_INIT}\nmodule use {modules}\n{script}"
    return subprocess.run(["bash", "--noprofile", "--norc", "-c", text], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def two_versions(tmp_path: Path, demo_channel):
    """A site with a module tree, and env modenv built twice (variables differ: two builds)."""
    site_file = write_demo_site(tmp_path / "site", demo_channel,
                                modules_dir=str(tmp_path / "modulefiles"))
    site = load_site(site_file)
    records = [build_env(parse_spec(SPEC.format(greeting=g)), site).record
               for g in ("hello one", "hello 'two' $HOME")]
    return site_file, site, records


def test_module_load_activates_the_env_and_unload_restores(lmod, two_versions, tmp_path):
    site_file, site, (v1, v2) = two_versions
    home = tmp_path / "home"
    out = hpcenv("--site", str(site_file), "env", "module", "modenv",
                 env=isolated_environ(home))
    assert out.returncode == 0, out.stderr
    modulefile = env_module_dir(store_for(site), "modenv") / "2.lua"
    assert str(modulefile) in out.stdout and modulefile.is_file()
    assert os.readlink(modulefile.with_name("default")) == "2.lua"

    shell = module_shell("""
before=$(env | sort)
module load hpcenv/modenv
echo "python=$(command -v python)"
python -c 'import sys, os; print("prefix=" + sys.prefix); print("greeting=" + os.environ["MODENV_GREETING"])'
echo "conda=$CONDA_PREFIX|$CONDA_DEFAULT_ENV|$CONDA_SHLVL"
echo "kernels=$HPCDEMO_KERNELS_VARIANT|$HPCDEMO_KERNELS_HOME"
module unload hpcenv/modenv
after=$(env | sort)
diff <(echo "$before" | grep -v -e '^_=' -e '^LMOD' -e '^__LMOD' -e '^MODULE' -e '^_ModuleTable' -e '^LOADEDMODULES' -e '^SHLVL') \
     <(echo "$after" | grep -v -e '^_=' -e '^LMOD' -e '^__LMOD' -e '^MODULE' -e '^_ModuleTable' -e '^LOADEDMODULES' -e '^SHLVL') \
  && echo restored
""", tmp_path / "modulefiles", home)
    assert shell.returncode == 0, shell.stderr
    lines = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    assert lines["python"] == f"{v2.prefix}/bin/python"
    assert os.path.realpath(lines["prefix"]) == os.path.realpath(v2.prefix)
    assert lines["greeting"] == "hello 'two' $HOME"
    assert lines["conda"] == f"{v2.prefix}|modenv|1"
    # activate.d of hpcdemo-kernels, through source_sh: it reads CONDA_PREFIX set just before
    assert lines["kernels"] == f"cpu|{v2.prefix}/share/hpcdemo-kernels"
    assert "restored" in shell.stdout, shell.stdout


def test_avail_marks_the_current_version_default_through_rollback_and_rm(lmod, two_versions,
                                                                        tmp_path):
    site_file, site, (v1, v2) = two_versions
    env = isolated_environ(tmp_path / "home")
    for version in ("1", "2"):
        out = hpcenv("--site", str(site_file), "env", "module", "modenv", "--version", version,
                     env=env)
        assert out.returncode == 0, out.stderr
    tree = tmp_path / "modulefiles"

    def avail() -> str:
        shell = module_shell("module avail hpcenv/modenv 2>&1", tree, tmp_path / "home")
        assert shell.returncode == 0, shell.stderr
        return shell.stdout

    def loaded_prefix() -> str:
        shell = module_shell("module load hpcenv/modenv && echo $CONDA_PREFIX", tree,
                             tmp_path / "home")
        assert shell.returncode == 0, shell.stderr
        return shell.stdout.strip()

    listing = avail()
    assert "hpcenv/modenv/1" in listing and "hpcenv/modenv/2 (D)" in listing
    assert loaded_prefix() == v2.prefix

    rollback(store_for(site), "modenv")
    listing = avail()
    assert "hpcenv/modenv/1 (D)" in listing and "hpcenv/modenv/2 (D)" not in listing
    assert "hpcenv/modenv/2" in listing
    assert loaded_prefix() == v1.prefix

    remove_version(store_for(site), "modenv", 2)
    assert not (env_module_dir(store_for(site), "modenv") / "2.lua").exists()
    assert "hpcenv/modenv/2" not in avail()
    again = hpcenv("--site", str(site_file), "env", "module", "modenv", "--version", "2", env=env)
    assert again.returncode == 1 and "version 2 is retired, not a ready build" in again.stderr

    remove_env(store_for(site), "modenv", force=True)
    assert not env_module_dir(store_for(site), "modenv").exists()


def test_modules_on_publish_writes_each_new_current_version(lmod, tmp_path, demo_channel):
    site = load_site(write_demo_site(tmp_path / "site", demo_channel, modules_on_publish="true",
                                     modules_dir=str(tmp_path / "modulefiles")))
    record = build_env(parse_spec(SPEC.format(greeting="published")), site).record
    directory = env_module_dir(store_for(site), "modenv")
    assert sorted(p.name for p in directory.iterdir()) == ["1.lua", "default"]
    shell = module_shell("module load hpcenv/modenv && echo $MODENV_GREETING",
                         tmp_path / "modulefiles", tmp_path / "home")
    assert shell.stdout.strip() == "published", shell.stderr
    assert record.version == 1


def test_module_without_modules_dir_names_the_key(tmp_path, demo_channel):
    site_file = write_demo_site(tmp_path / "site", demo_channel)
    build_env(parse_spec(SPEC.format(greeting="x")), load_site(site_file))
    out = hpcenv("--site", str(site_file), "env", "module", "modenv",
                 env=isolated_environ(tmp_path / "home"))
    assert out.returncode == 2
    assert "no modules_dir is set" in out.stderr and str(site_file) in out.stderr


def test_modules_on_publish_needs_a_tree(tmp_path, demo_channel):
    site_file = write_demo_site(tmp_path / "site", demo_channel, modules_on_publish="true")
    with pytest.raises(InvalidInput, match=r"site.yaml:\d+: modules_on_publish: .*modules_dir"):
        load_site(site_file)


def test_lua_strings_cannot_break_out() -> None:
    assert _lua_string('a"b\\c\nd]]') == '"a\\034b\\092c\\010d]]"'
    assert _lua_string("é") == '"\\195\\169"'
    lua = shutil.which("lua5.3") or shutil.which("lua")
    if lua:  # Lmod's own interpreter reads the literal back unchanged
        hostile = 'x"; os.exit(3) --é\n'
        out = subprocess.run([lua, "-e", f"io.write({_lua_string(hostile)})"],
                             capture_output=True, text=True)
        assert out.stdout == hostile
