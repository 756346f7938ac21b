"""hpcenv accepts exactly the environment files the real conda and pip accept.

The files under ``tests/spec/data/conda-verdicts`` (odd spellings both ways) and
``tests/spec/data/realworld`` are judged by conda 26's own loader for environment files and, for the
``pip:`` entries conda keeps, by pip's own requirements-file parser (conda_pip_verdict.py
beside this file, run by conda's Python).  hpcenv must accept a file exactly when both do,
and name file:line when it refuses.  The few files hpcenv refuses although conda's loader
takes them are listed in STRICTER, each with its reason.

The real conda is the suite's ``real_conda`` fixture (tests/conftest.py), which installs it once
into the test cache from the shared test assets (``HPCENV_CONDA_INSTALLER``) or skips, saying why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpcenv.errors import InvalidInput
from hpcenv.spec.environment import load_spec

HERE = Path(__file__).resolve().parent
FILES = sorted([*(HERE / "data" / "conda-verdicts").glob("*.yml"),
                *(HERE / "data" / "realworld").glob("*.yml")])
# Files conda's loader takes that hpcenv refuses on purpose, and why.
STRICTER = {
    # Env names become directories on shared filesystems (see validate_env_name).
    "env-name-path.yml": "invalid environment name '../evil'",
    # Variable names reach `export NAME=...` in activation scripts.
    "variable-name-shell.yml": "invalid variable name",
    # conda would hand pip each character of 'numpy' as a requirement.
    "pip-section-text.yml": "'pip' must be a list of requirements",
    # conda reads '' as the spec '*' (any package): never what was meant.
    "empty-dependency.yml": "empty 'dependencies' entry",
}
STRICTER_DIR = HERE / "data" / "hpcenv-stricter"

@pytest.fixture(scope="module")
def reference(real_conda: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # The suite's one real conda (tests/conftest.py: skips, saying why, where there is none):
    # its installer puts conda's own python at DEST/venv, beside DEST/bin/conda.
    python = real_conda.parent.parent / "venv" / "bin" / "python"
    out = tmp_path_factory.mktemp("verdicts") / "verdicts.json"
    env = {**os.environ, "CONDA_PKGS_DIRS": str(out.parent / "pkgs")}
    files = [*FILES, *sorted(STRICTER_DIR.glob("*.yml"))]
    run = subprocess.run([str(python), str(HERE / "conda_pip_verdict.py"), str(out),
                          *map(str, files)], capture_output=True, text=True, timeout=300,
                         env=env)
    assert run.returncode == 0, run.stderr
    verdicts: dict[str, str] = json.loads(out.read_text())
    return verdicts


def test_the_file_names_say_the_expected_verdict(reference: dict[str, str]) -> None:
    # Guards the set itself: a 'refuse-' file conda and pip accept would test nothing.
    for path in (HERE / "data" / "conda-verdicts").glob("*.yml"):
        expected = "accept" if path.name.startswith("accept-") else "refuse"
        assert reference[str(path)].startswith(expected), (path.name, reference[str(path)])


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_hpcenv_agrees_with_conda_and_pip(path: Path, reference: dict[str, str]) -> None:
    theirs = reference[str(path)]
    try:
        load_spec(path)
    except InvalidInput as exc:
        assert theirs.startswith("refuse"), f"hpcenv refuses what conda and pip accept: {exc}"
        assert re.match(rf"{re.escape(str(path))}:\d+: ", str(exc)), exc
        assert "\n" not in str(exc)
    else:
        assert theirs == "accept", f"hpcenv accepts what they refuse: {theirs}"


def test_the_deliberate_differences_are_exactly_these(reference: dict[str, str]) -> None:
    assert sorted(p.name for p in STRICTER_DIR.glob("*.yml")) == sorted(STRICTER)
    for name, reason in STRICTER.items():
        path = STRICTER_DIR / name
        assert reference[str(path)] == "accept", (name, reference[str(path)])
        with pytest.raises(InvalidInput) as info:
            load_spec(path)
        assert re.match(rf"{re.escape(str(path))}:\d+: .*{re.escape(reason)}", str(info.value))


def test_env_inspect_json_exits_as_conda_and_pip_judge(reference: dict[str, str]) -> None:
    # The user-facing contract: `hpcenv env inspect --json` exits 0 on every file they accept,
    # and 2 with one `file:line: ...` error line on every file they refuse.
    hpcenv = Path(sys.executable).parent / "hpcenv"
    for path in FILES:
        result = subprocess.run([str(hpcenv), "env", "inspect", str(path), "--json"],
                                capture_output=True, text=True, timeout=60)
        if reference[str(path)] == "accept":
            assert result.returncode == 0, (path.name, result.stderr)
            assert json.loads(result.stdout)["file"] == str(path)
        else:
            assert result.returncode == 2, (path.name, result.stdout, result.stderr)
            error = json.loads(result.stdout)
            assert error["exit_code"] == 2
            assert re.match(rf"{re.escape(str(path))}:\d+: ", error["error"]), (path.name, error)
            assert result.stderr == f"hpcenv: error: {error['error']}\n"
