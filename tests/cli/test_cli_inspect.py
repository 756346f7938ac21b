"""``hpcenv env inspect`` through the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HPCENV = Path(sys.executable).parent / "hpcenv"

GPU_ENV = """\
name: trainer
channels:
  - conda-forge
  - nvidia
dependencies:
  - python >= 3.11
  - cuda-version=12.4  # the runtime
  - pytorch
  - pip:
      - --extra-index-url https://wheels.example.org/simple
      - transformers==4.40
variables:
  TOKENIZERS_PARALLELISM: "false"
"""


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HPCENV), "env", "inspect", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


@pytest.fixture()
def gpu_env(tmp_path: Path) -> Path:
    path = tmp_path / "environment.yml"
    path.write_text(GPU_ENV)
    return path


def test_human_summary(gpu_env: Path) -> None:
    result = run(str(gpu_env))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0] == str(gpu_env)
    assert "trainer" in out
    assert "conda-forge, nvidia" in out
    assert "3 specs" in out
    assert "1 requirements, 1 option line" in out
    assert "12.4; GPU required" in out
    assert "- cuda-version=12.4  # the runtime" in out
    assert result.stderr == ""


def test_json_output(gpu_env: Path) -> None:
    result = run(str(gpu_env), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "trainer"
    assert data["channels"] == ["conda-forge", "nvidia"]
    assert data["conda"] == ["python >= 3.11", "cuda-version=12.4", "pytorch"]
    assert data["pip"] == ["--extra-index-url https://wheels.example.org/simple",
                           "transformers==4.40"]
    assert data["variables"] == {"TOKENIZERS_PARALLELISM": "false"}
    assert (data["cuda"], data["cuda_ambiguous"], data["cuda_candidates"]) == \
        ("12.4", False, ["12.4"])
    assert data["gpu_required"] is True
    assert data["cuda_evidence"] == ["- cuda-version=12.4  # the runtime"]
    assert len(data["hash"]) == 64


def test_global_json_flag_before_command_and_hash_ignores_name(gpu_env: Path,
                                                               tmp_path: Path) -> None:
    renamed = tmp_path / "renamed.yml"
    renamed.write_text(GPU_ENV.replace("name: trainer", "name: other-name"))
    first = subprocess.run([str(HPCENV), "--json", "env", "inspect", str(gpu_env)],
                           capture_output=True, text=True, timeout=60)
    second = run(str(renamed), "--json")
    assert first.returncode == 0 and second.returncode == 0
    assert json.loads(first.stdout)["hash"] == json.loads(second.stdout)["hash"]


def test_ambiguous_cpu_and_rocm_summaries(tmp_path: Path) -> None:
    cases = {
        "amb.yml": ("channels: [pytorch]\ndependencies:\n  - pytorch=2.0.0\n",
                    "not pinned (candidates: 11.7, 11.8); GPU required"),
        "cpu.yml": ("dependencies:\n  - numpy\n", "none; no GPU needed"),
        "opt.yml": ("dependencies:\n  - pip:\n    - torch\n", "not pinned; GPU optional"),
        "rocm.yml": ("dependencies:\n  - pip:\n    - -i https://w.example.org/whl/rocm6.0\n"
                     "    - torch\n", "none (a non-CUDA GPU such as ROCm); GPU required"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        result = run(name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout, result.stdout
        assert "(none)" in result.stdout  # no name


def test_long_evidence_is_capped_in_human_output(tmp_path: Path) -> None:
    deps = "".join(f"  - cuda-{part}=11.8.89\n" for part in
                   ("cudart", "nvrtc", "cupti", "nvcc", "nvtx", "libraries", "runtime"))
    (tmp_path / "export.yml").write_text("dependencies:\n" + deps)
    human = run("export.yml", cwd=tmp_path)
    assert "(2 more; see --json)" in human.stdout
    assert len(json.loads(run("export.yml", "--json", cwd=tmp_path).stdout)["cuda_evidence"]) == 7


def _assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("hpcenv: error: ")
    # stdout: nothing, or under --json the error as the one JSON document.
    expected = {"error": lines[0].removeprefix("hpcenv: error: "), "exit_code": 2}
    assert result.stdout == "" if "--json" not in result.args else \
        json.loads(result.stdout) == expected
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("name: x\ndependencies:\n  - numpy\n - scipy\n")
    _assert_one_line_error(run(str(path)), f"{path}:4: invalid YAML")


def test_bad_shape(tmp_path: Path) -> None:
    path = tmp_path / "shape.yml"
    path.write_text("name: x\ndependencies:\n  - numpy\n  - pip: requests\n")
    _assert_one_line_error(run(str(path), "--json"), f"{path}:4:", "'pip' must be a list")


def test_bad_name_in_spec(tmp_path: Path) -> None:
    path = tmp_path / "name.yml"
    path.write_text("name: ../../etc\ndependencies:\n  - numpy\n")
    _assert_one_line_error(run(str(path)), f"{path}:1:", "invalid environment name")


def test_variable_name_that_is_shell_code_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "vars.yml"
    marker = tmp_path / "pwned"
    path.write_text(f"dependencies:\n  - numpy\nvariables:\n  A=1; touch {marker}; B: x\n")
    _assert_one_line_error(run(str(path)), f"{path}:4: invalid variable name",
                           "^[A-Za-z_][A-Za-z0-9_]*$")
    assert not marker.exists()


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    _assert_one_line_error(run(str(missing)), str(missing), "no such environment file")


def test_verbose_error_shows_traceback(tmp_path: Path) -> None:
    result = subprocess.run([str(HPCENV), "-v", "env", "inspect", str(tmp_path / "nope.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "FILE" in result.stdout and "--json" in result.stdout


def test_list_items_run_together_by_indentation_are_flagged(tmp_path: Path) -> None:
    # YAML folds the over-indented line into the item above: one spec "python=3.11 - pip",
    # which conda parses (version 3.11-, build pip) and no solve satisfies: a warning says why.
    path = tmp_path / "indent.yml"
    path.write_text("dependencies:\n  - python=3.11\n    - pip\n")
    result = run(str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"hpcenv: warning: {path}:2: 'python=3.11 - pip' looks like two "
                             "list items run together; check the indentation of line 3\n")


def test_bad_match_spec_and_pip_requirement_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "ops.yml"
    path.write_text("dependencies:\n  - numpy\n  - python>=>3.11\n")
    _assert_one_line_error(run(str(path)), f"{path}:3: invalid conda spec 'python>=>3.11'",
                           "bad version constraint '>=>3.11'")
    path.write_text("dependencies:\n  - pip\n  - pip:\n    - requests=>2\n")
    _assert_one_line_error(run(str(path)), f"{path}:4: invalid pip requirement 'requests=>2'")


def test_warnings_name_file_and_line_and_the_file_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text("name: nb\ndependencies:\n  - python=3.11\n  - nbconvert[execute]>=7\n"
                    "  - pip:\n    - rich\n  - pip:\n    - typer\n")
    result = run(str(path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["pip"] == ["typer"]
    assert [w.split(": ", 1)[0] for w in data["warnings"]] == [f"{path}:4", f"{path}:7"]
    assert result.stderr.splitlines() == [f"hpcenv: warning: {w}" for w in data["warnings"]]


def test_a_pip_line_pip_refuses_exits_2_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "environment.yml"
    path.write_text("name: old\ndependencies:\n  - python=3.7\n  - pip:\n    - nibabel=2.5.1\n")
    result = run(str(path), "--json")
    assert result.returncode == 2 and json.loads(result.stdout)["exit_code"] == 2
    assert result.stderr.startswith(f"hpcenv: error: {path}:5: invalid pip requirement "
                                    "'nibabel=2.5.1'")
