"""Environment files written in the patterns real projects use (tests/spec/data/realworld), one per
failure kind seen on public environment files: what hpcenv reads from each, and the CUDA it
infers.  test_conda_verdicts.py checks the same files against the real conda and pip."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcenv.errors import InvalidInput
from hpcenv.spec.cuda import CudaRequirement, infer_cuda
from hpcenv.spec.drivers import driver_supports, min_driver
from hpcenv.spec.environment import EnvSpec, load_spec

DATA = Path(__file__).resolve().parent / "data" / "realworld"


def load(name: str) -> EnvSpec:
    return load_spec(DATA / name)


def cuda_of(name: str) -> CudaRequirement:
    return infer_cuda(load(name))


# --- files conda accepts that hpcenv used to refuse --------------------------------------------

def test_local_project_and_per_requirement_options_in_pip() -> None:
    spec = load("01-local-project-file-url.yml")
    assert spec.pip == ("file:.", "dipy --only-binary dipy", "nilearn==0.10.3")
    assert spec.warnings == ()


def test_pip_style_extras_in_the_conda_section_are_read_as_conda_does() -> None:
    spec = load("02-pip-extras-in-conda-section.yml")
    assert spec.conda[2:4] == ("nbconvert[execute]!=6.0.0,!=6.0.1",
                               "gymnasium[classic_control,atari]")
    # The solver gets what conda installs; the user learns what conda drops.
    assert spec.conda_to_solve()[2:4] == ("nbconvert!=6.0.0,!=6.0.1", "gymnasium")
    path = DATA / "02-pip-extras-in-conda-section.yml"
    assert spec.warnings == (
        f"{path}:7: conda ignores [execute] in 'nbconvert[execute]!=6.0.0,!=6.0.1' (pip-style "
        "extras; conda installs 'nbconvert!=6.0.0,!=6.0.1'); list the extra packages, or move "
        "the line to the 'pip:' section",
        f"{path}:8: conda ignores [classic_control, atari] in 'gymnasium[classic_control,atari]' "
        "(pip-style extras; conda installs 'gymnasium'); list the extra packages, or move the "
        "line to the 'pip:' section")


def test_only_the_last_pip_section_counts_and_a_warning_says_so() -> None:
    spec = load("03-two-pip-sections.yml")
    assert spec.pip == ("rich", "typer>=0.9")
    assert spec.pip_lines == (10, 11)
    assert spec.warnings == (
        f"{DATA / '03-two-pip-sections.yml'}:9: 2 'pip:' sections: conda installs only this "
        "last one and ignores the one(s) on line 6; merge them into one",)
    # No `pip` among the conda specs: conda adds it, and so does hpcenv's solve.
    assert "pip" not in spec.conda and spec.conda_to_solve()[-1] == "pip"


def test_a_pip_line_pip_refuses_is_refused_with_file_and_line() -> None:
    with pytest.raises(InvalidInput) as info:
        load("04-pip-single-equals.yml")
    assert str(info.value) == (
        f"{DATA / '04-pip-single-equals.yml'}:9: invalid pip requirement 'nibabel=2.5.1': "
        "Expected semicolon (after name with no version specifier) or end; '=' is not a pip "
        "operator: write '==' (e.g. 'numpy==1.26.4'); fix the 'pip' entry")


# --- GPU packages without a version -------------------------------------------------------------

@pytest.mark.parametrize("name", ["05-rapids-unversioned.yml", "06-cupy-conda-forge-only.yml"])
def test_cuda_only_packages_need_a_gpu(name: str) -> None:
    req = cuda_of(name)
    assert (req.cuda, req.ambiguous, req.gpu_required) == (None, True, True)
    assert req.evidence


def test_rapids_evidence_names_the_cuda_packages_verbatim() -> None:
    assert set(cuda_of("05-rapids-unversioned.yml").evidence) == \
        {"- nvidia", "- cudf", "- cucim", "- cupy"}


# --- framework pins that fix the CUDA ----------------------------------------------------------

@pytest.mark.parametrize(("name", "cuda", "line"), [
    ("07-tensorflow-gpu-conda-114.yml", "10.0", "- tensorflow-gpu=1.14.0"),
    ("08-tensorflow-gpu-conda-21.yml", "10.1", "- tensorflow-gpu=2.1.0"),
    ("09-tensorflow-gpu-pip-24.yml", "11.0", "- tensorflow-gpu==2.4"),
    ("10-tensorflow-gpu-pip-012.yml", "8.0", "- tensorflow-gpu==0.12.1"),
    ("11-tensorflow-and-cuda.yml", "12.2", "- tensorflow[and-cuda]==2.15.0"),
])
def test_tensorflow_pins_give_its_tested_cuda(name: str, cuda: str, line: str) -> None:
    req = cuda_of(name)
    assert req == CudaRequirement(cuda, False, (cuda,), True, (line,))


def test_plain_tensorflow_names_the_cuda_of_a_gpu_env() -> None:
    req = cuda_of("12-tensorflow-plain-with-cudnn.yml")
    assert (req.cuda, req.ambiguous, req.candidates, req.gpu_required) == \
        ("12.2", True, ("12.2",), True)
    assert req.evidence == ("- cudnn", "- tensorflow==2.15")


def test_pip_torch_keeps_its_default_wheel_cuda_on_the_nvidia_channel() -> None:
    req = cuda_of("13-pip-torch-on-nvidia-channel.yml")
    assert (req.cuda, req.ambiguous, req.candidates, req.gpu_required) == \
        ("12.6", True, ("12.6",), True)
    assert req.evidence == ("- nvidia", "- torch==2.7.1")


# --- strongest evidence, not highest pin ---------------------------------------------------------

def test_runtime_and_framework_pins_decide_components_only_support() -> None:
    req = cuda_of("14-nvidia-export-components.yml")
    assert (req.cuda, req.ambiguous, req.candidates) == ("12.1", False, ("12.1",))
    # Runtime pins first, the pytorch builds next, agreeing components after;
    # cuda-opencl 12.4 and cuda-cccl 12.6 (their own numbering) are no evidence for 12.1.
    assert req.evidence == (
        "- cuda-libraries=12.1.0=0", "- cuda-runtime=12.1.0=0", "- pytorch-cuda=12.1=ha16c6d3_5",
        "- pytorch=2.1.0=py3.10_cuda12.1_cudnn8.9.2_0", "- torchvision=0.16.0=py310_cu121",
        "- cuda-cudart=12.1.105=0", "- cuda-cupti=12.1.105=0", "- cuda-nvrtc=12.1.105=0",
        "- cuda-nvtx=12.1.105=0")


def test_direct_wheel_urls_are_evidence() -> None:
    req = cuda_of("15-wheel-urls.yml")
    assert (req.cuda, req.ambiguous, req.gpu_required) == ("10.1", False, True)
    assert len(req.evidence) == 2


def test_a_range_that_leaves_one_release_is_a_pin() -> None:
    req = cuda_of("16-cudatoolkit-range.yml")
    assert req == CudaRequirement("10.1", False, ("10.1",), True, ("- cudatoolkit<10.2,>10.0",))


@pytest.mark.parametrize(("name", "cuda", "line"), [
    ("17-label-channel.yml", "12.1", "- nvidia/label/cuda-12.1.0"),
    ("18-label-qualified-spec.yml", "11.8", "- nvidia/label/cuda-11.8.0::cuda-toolkit"),
])
def test_nvidia_release_labels_pin_the_toolkit(name: str, cuda: str, line: str) -> None:
    req = cuda_of(name)
    assert (req.cuda, req.ambiguous, req.candidates, req.gpu_required) == \
        (cuda, False, (cuda,), True)
    assert req.evidence[0] == line


def test_a_build_string_that_disagrees_with_the_pin_makes_it_ambiguous() -> None:
    req = cuda_of("19-conflicting-build-string.yml")
    assert (req.cuda, req.ambiguous, req.candidates) == ("12.4", True, ("12.1", "12.4"))
    assert req.evidence == ("- cuda-version=12.1", "- pytorch=2.4.0=*cuda12.4*")


def test_a_build_for_a_newer_cuda_than_the_pin_is_a_conflict() -> None:
    req = cuda_of("21-newer-build-of-another-package.yml")
    assert (req.cuda, req.ambiguous, req.candidates) == ("11.8", True, ("11.8", "12.1"))
    assert req.evidence == ("- cuda-version=11.8", "- dgl=2.1.0=*cuda121*")


# --- CUDA releases after the old driver table --------------------------------------------------

def test_an_env_needing_cuda_13_1_routes_to_a_590_driver() -> None:
    req = cuda_of("20-cuda-131.yml")
    assert (req.cuda, req.ambiguous, req.gpu_required) == ("13.1", False, True)
    assert req.cuda is not None
    assert min_driver(req.cuda) == "590.44.01"
    assert driver_supports("590.44.01", req.cuda)
    assert not driver_supports("580.95.05", req.cuda)


def test_every_file_keeps_its_evidence_verbatim() -> None:
    for path in sorted(DATA.glob("*.yml")):
        try:
            spec = load_spec(path)
        except InvalidInput:
            continue
        lines = {line.strip() for line in path.read_text(encoding="utf-8").splitlines()}
        assert set(infer_cuda(spec).evidence) <= lines, path.name
