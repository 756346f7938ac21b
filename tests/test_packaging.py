"""A built wheel carries the Slurm templates and site configs, and an installed (non-editable)
hpcenv finds them inside site-packages, not in this checkout.

The wheel is built the ordinary way (``pip wheel``, with build isolation, so hatchling comes
from the package index like any user's build) and installed with ``--no-deps`` into a fresh
venv without system site-packages: finding the data needs nothing but the standard library.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = sorted(p.name for p in (ROOT / "slurm_templates").glob("*.j2"))
SITE_CONFIGS = sorted(p.name for p in (ROOT / "site_configs").glob("*.yaml"))


def _run(*cmd: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, ROOT, cwd=out)
    wheels = list(out.glob("hpcenv-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the hpcenv wheel (no dependencies, no system packages)."""
    path = tmp_path_factory.mktemp("venv") / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", path, cwd=path.parent)
    python = path / "bin" / "python"
    # This interpreter's pip installs into the new venv (pip >= 22.3 `--python`).
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         "--no-index", wheel, cwd=path.parent)
    return path


def test_preconditions() -> None:
    assert TEMPLATES and "local.yaml" in SITE_CONFIGS


def test_wheel_carries_templates_and_site_configs(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        local = zf.read("hpcenv/_data/site_configs/local.yaml")
    assert {f"hpcenv/_data/slurm_templates/{n}" for n in TEMPLATES} <= names
    assert {f"hpcenv/_data/site_configs/{n}" for n in SITE_CONFIGS} <= names
    assert local == (ROOT / "site_configs" / "local.yaml").read_bytes()
    # `hpcenv demo DIR` copies the example spec and train.py from the wheel.
    assert {"hpcenv/_data/examples/llm-finetune.yml", "hpcenv/_data/examples/train.py"} <= names
    assert "hpcenv/cli/__init__.py" in names and "hpcenv/resources.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


_PROBE = """\
import importlib.util, json, sys
import hpcenv
from hpcenv.resources import data_dir
from hpcenv.site.config import embedded_site_path
print(json.dumps({
    "package": hpcenv.__file__,
    "templates": str(data_dir("slurm_templates")),
    "site_configs": str(data_dir("site_configs")),
    "embedded_site": str(embedded_site_path()),
    "template_files": sorted(p.name for p in data_dir("slurm_templates").glob("*.j2")),
    "site_files": sorted(p.name for p in data_dir("site_configs").glob("*.yaml")),
    "has_yaml": importlib.util.find_spec("yaml") is not None,
    "prefix": sys.prefix,
}))
"""


def test_installed_package_finds_its_data_in_site_packages(venv: Path, tmp_path: Path) -> None:
    # cwd is an empty dir: `python -c` puts cwd on sys.path, and the checkout must not be it.
    result = _run(venv / "bin" / "python", "-c", _PROBE, cwd=tmp_path)
    info = json.loads(result.stdout)
    site_packages = Path(info["prefix"]) / "lib"
    assert Path(info["prefix"]) == venv
    assert not info["has_yaml"], "the venv should hold hpcenv alone"
    for key in ("package", "templates", "site_configs", "embedded_site"):
        path = Path(info[key])
        assert path.is_relative_to(site_packages), (key, path)
        assert not path.is_relative_to(ROOT), (key, path)
    assert Path(info["templates"]).parts[-2:] == ("_data", "slurm_templates")
    assert info["template_files"] == TEMPLATES
    assert info["site_files"] == SITE_CONFIGS
    assert Path(info["embedded_site"]).read_bytes() == \
        (ROOT / "site_configs" / "local.yaml").read_bytes()


def test_installed_console_script_runs(venv: Path, tmp_path: Path) -> None:
    # `--version` and `--help` load only the CLI's light modules: no dependency is needed.
    version = _run(venv / "bin" / "hpcenv", "--version", cwd=tmp_path)
    assert version.stdout.startswith("hpcenv ")
    help_ = _run(venv / "bin" / "python", "-m", "hpcenv", "--help", cwd=tmp_path)
    assert "usage: hpcenv" in help_.stdout
