"""CUDA inference rules, one behaviour per test, on small hand-written environment files."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcenv.spec.cuda import CudaRequirement, infer_cuda
from hpcenv.spec.environment import EnvSpec, load_spec, parse_spec


def infer(deps: str, channels: str = "", pip: str = "", name: str = "env") -> CudaRequirement:
    text = f"name: {name}\n"
    if channels:
        text += "channels:\n" + "".join(f"  - {c}\n" for c in channels.split(","))
    text += "dependencies:\n" + "".join(f"  - {d}\n" for d in deps.split(";") if d)
    if pip:
        text += "  - pip:\n" + "".join(f"    - {p}\n" for p in pip.split(";"))
    return infer_cuda(parse_spec(text))


@pytest.mark.parametrize(("dep", "cuda"), [
    ("cuda-version=12.4", "12.4"),
    ("cuda-version 12.6.*", "12.6"),
    ("cudatoolkit=11.3.1", "11.3"),
    ("cudatoolkit=10.1.*", "10.1"),
    ("cudatoolkit-dev=11.7.0=h1de0b5d_6", "11.7"),
    ("pytorch-cuda=11.8", "11.8"),
    ("pytorch::pytorch-cuda=11.7.0", "11.7"),
    ("cuda-toolkit = 12.4", "12.4"),
    ("nvidia/label/cuda-11.7.1::cuda-toolkit = 11.7", "11.7"),
    ("cuda-nvcc=12.1.105", "12.1"),
    ("cuda-runtime==11.8.0", "11.8"),
    ("nvcc_linux-64=11.0", "11.0"),
    ("cuda-version=11.8=h70ddcb2_3", "11.8"),
])
def test_runtime_pins(dep: str, cuda: str) -> None:
    req = infer(f"python=3.11;{dep}")
    assert (req.cuda, req.ambiguous, req.gpu_required) == (cuda, False, True)
    assert req.candidates == (cuda,)
    assert req.evidence == (f"- {dep}",)


def test_build_strings_decide_without_pins() -> None:
    req = infer("pytorch=2.0.1=py3.10_cuda11.8_cudnn8.7.0_0;torchvision=0.15.2=py310_cu118")
    assert (req.cuda, req.ambiguous) == ("11.8", False)
    assert len(req.evidence) == 2
    assert infer("pytorch=1.7.1=py3.7_cuda11.0.221_cudnn8.0.5_0").cuda == "11.0"
    assert infer("tensorflow=2.11.0=cuda112py310he87a039_0").cuda == "11.2"


def test_pins_outrank_builds_of_other_packages() -> None:
    # dgl built against 11.2 runs on an 11.8 runtime; the pin decides, no ambiguity.
    req = infer("cuda-version=11.8;dgl=1.1.2=cuda112py310hc641c19_2;"
                "pytorch=2.0.1=py3.10_cuda11.8_cudnn8.7.0_0")
    assert (req.cuda, req.ambiguous, req.candidates) == ("11.8", False, ("11.8",))
    assert "- pytorch=2.0.1=py3.10_cuda11.8_cudnn8.7.0_0" in req.evidence
    assert "- dgl=1.1.2=cuda112py310hc641c19_2" not in req.evidence


def test_disagreeing_pins_are_ambiguous_and_highest_wins() -> None:
    req = infer("cudatoolkit-dev=11.7.0",
                pip="torch==1.12.1+cu116;nvidia-cuda-runtime-cu11==11.8.89")
    assert (req.cuda, req.ambiguous) == ("11.8", True)
    assert req.candidates == ("11.6", "11.7", "11.8")


@pytest.mark.parametrize(("dep", "cuda"), [
    ("dgl-cuda11.1", "11.1"), ("magma-cuda110", "11.0"), ("magma-cuda92", "9.2"),
    ("cupy-cuda114", "11.4"),
])
def test_cuda_in_package_names(dep: str, cuda: str) -> None:
    req = infer(dep)
    assert (req.cuda, req.ambiguous, req.gpu_required) == (cuda, False, True)


@pytest.mark.parametrize(("deps", "pip", "major"), [
    ("jaxlib=*=*cuda12*", "", "12"),
    ("", "cupy-cuda11x", "11"),
    ("", "cuml-cu11", "11"),
    ("", "jax[cuda12]==0.4.30", "12"),
    ("", "jaxlib==0.4.23+cuda12.cudnn89", "12"),
])
def test_major_only_signals(deps: str, pip: str, major: str) -> None:
    req = infer(deps or "python", pip=pip)
    assert (req.cuda, req.ambiguous, req.gpu_required) == (major, False, True)


def test_major_signal_of_another_major_makes_it_ambiguous() -> None:
    req = infer("pytorch-cuda=12.1", pip="cuml-cu11")
    assert (req.cuda, req.ambiguous, req.candidates) == ("12.1", True, ("11", "12.1"))
    agreeing = infer("pytorch-cuda=11.7", pip="cuml-cu11")
    assert (agreeing.cuda, agreeing.ambiguous) == ("11.7", False)


def test_pip_local_versions_and_index_urls() -> None:
    req = infer("python", pip="torch==2.1.0+cu121")
    assert (req.cuda, req.ambiguous, req.gpu_required) == ("12.1", False, True)
    req = infer("python", pip="--index-url https://wheels.example.org/whl/cu118;torch;torchvision")
    assert (req.cuda, req.ambiguous) == ("11.8", False)
    assert req.evidence == ("- --index-url https://wheels.example.org/whl/cu118",)
    req = infer("python", pip="--find-links https://w.example.org/torch-2.5.0+cu124.html;x")
    assert req.cuda == "12.4"
    req = infer("python", pip="-i https://wheels.example.org/whl/cu92;torch")
    assert req.cuda == "9.2"
    # An abbreviated option pip accepts is the same index.
    req = infer("python", pip="--extra-index https://wheels.example.org/whl/cu121;torch")
    assert (req.cuda, req.ambiguous) == ("12.1", False)


@pytest.mark.parametrize(("deps", "channels", "candidates"), [
    ("pytorch=1.12.1", "pytorch,nvidia", ("10.2", "11.3", "11.6")),
    ("pytorch::pytorch=1.12.*", "conda-forge,pytorch", ("10.2", "11.3", "11.6")),
    ("pytorch=2.0.0;pytorch-mutex=1.0=cuda", "pytorch,defaults", ("11.7", "11.8")),
    ("pytorch >= 1.13", "pytorch", ()),
])
def test_pytorch_channel_without_pin_is_ambiguous(deps: str, channels: str,
                                                   candidates: tuple[str, ...]) -> None:
    req = infer(deps, channels=channels)
    assert (req.cuda, req.ambiguous, req.gpu_required) == (None, True, True)
    assert req.candidates == candidates


def test_tensorflow_gpu_uses_its_tested_cuda() -> None:
    # A pip TensorFlow GPU wheel loads the env's runtime; conda's cudnn=7 brings one the solver
    # picks, so TensorFlow's 10.0 is the reading, but not a sure one.
    req = infer("cudnn=7", pip="tensorflow-gpu==1.15.5")
    assert (req.cuda, req.ambiguous, req.candidates, req.gpu_required) == \
        ("10.0", True, ("10.0",), True)
    assert req.evidence == ("- tensorflow-gpu==1.15.5", "- cudnn=7")
    unpinned = infer("tensorflow-gpu")
    assert (unpinned.cuda, unpinned.ambiguous, unpinned.candidates) == (None, True, ())
    assert infer("python", pip="tensorflow[and-cuda]==2.15.1").candidates == ("12.2",)


def test_gpu_without_version_is_ambiguous() -> None:
    for deps, channels in [("jaxlib=*=cuda*", ""), ("pytorch-gpu 2.0.*", "conda-forge"),
                           ("arrow-cpp-proc * cuda", ""), ("cudatoolkit", ""),
                           ("numpy", "conda-forge,nvidia")]:
        req = infer(deps, channels=channels)
        assert (req.cuda, req.ambiguous, req.gpu_required) == (None, True, True), deps


def test_pypi_torch_is_gpu_optional() -> None:
    req = infer("python", pip="torch==2.0.1")
    assert (req.cuda, req.ambiguous, req.candidates, req.gpu_required) == \
        (None, True, ("11.7",), None)
    bare = infer("python", pip="torch;torchvision")
    assert (bare.ambiguous, bare.candidates, bare.gpu_required) == (True, (), None)
    # With explicit runtime wheels the pins decide.
    pinned = infer("python", pip="torch==2.0.1;nvidia-cuda-runtime-cu11==11.7.99")
    assert (pinned.cuda, pinned.ambiguous, pinned.gpu_required) == ("11.7", False, True)


@pytest.mark.parametrize(("deps", "channels", "pip"), [
    ("cpuonly;pytorch;torchvision", "pytorch,conda-forge", ""),
    ("pytorch::pytorch >= 1.13;pytorch::pytorch-mutex = *=*cpu*", "pytorch", ""),
    ("pytorch=2.0.1=py3.10_cpu_0", "pytorch", ""),
    ("python", "", "--index-url https://wheels.example.org/whl/cpu;torch"),
    ("python", "", "torch==2.3.0+cpu"),
])
def test_cpu_markers(deps: str, channels: str, pip: str) -> None:
    req = infer(deps, channels=channels, pip=pip)
    assert (req.cuda, req.ambiguous, req.gpu_required) == (None, False, False)
    assert req.evidence


def test_rocm_is_a_gpu_but_not_cuda() -> None:
    req = infer("python", pip="--extra-index-url  https://wheels.example.org/whl/rocm5.2/;torch")
    assert (req.cuda, req.ambiguous, req.gpu_required) == (None, False, True)
    assert req.evidence == ("- --extra-index-url  https://wheels.example.org/whl/rocm5.2/",)
    assert infer("python", pip="torch==2.3.0+rocm6.0").gpu_required is True


def test_plain_cpu_env() -> None:
    req = infer("python=3.11;numpy;pandas;pytorch", channels="conda-forge",
                pip="py-cpuinfo==9.0.0;tensorflow==2.16.1")
    assert req == CudaRequirement(None, False, (), False, ())


def test_look_alikes_are_ignored() -> None:
    text = """\
# CONDA_OVERRIDE_CUDA=11.7 conda env create; cudatoolkit=10.2 magma-cuda102
name: all_cuda-118_arch-x86_64
channels:
  - nvidia  # no version
dependencies:
  # - cudatoolkit=11.7
  - cuda-version=12.5
  - cuda-python>=11.7.1,<12.0a0
  - libcublas=11.11.3.6
  - libcusparse=11.7.5.86
  - dask-cuda==24.10.*
  - cuda-cudart-dev
  - pip:
    - nvidia-cublas-cu12==12.1.3.1
    - cuda-python==11.8.3
"""
    req = infer_cuda(parse_spec(text))
    assert (req.cuda, req.ambiguous, req.candidates) == ("12.5", False, ("12.5",))
    assert req.evidence == ("- cuda-version=12.5",)


def test_lower_bound_only_is_ambiguous() -> None:
    req = infer("cuda-version>=12.0,<13")
    assert (req.cuda, req.ambiguous, req.candidates, req.gpu_required) == \
        ("12.0", True, ("12.0",), True)


def test_major_only_pin_of_runtime() -> None:
    req = infer("cuda-version=12")
    assert (req.cuda, req.ambiguous) == ("12", False)


def test_evidence_falls_back_to_entries_without_source_text() -> None:
    spec = EnvSpec(name=None, channels=(), conda=("cudatoolkit=11.3",), pip=(), variables=(),
                   source=None)
    assert infer_cuda(spec).evidence == ("cudatoolkit=11.3",)


def test_pip_include_is_followed_and_flagged_ambiguous(tmp_path: Path) -> None:
    env = tmp_path / "environment.yml"
    env.write_text("name: x\ndependencies:\n  - pip\n  - pip:\n"
                   "      - -r ./reqs/gpu.txt  # GPU wheels\n      - -r missing.txt\n")
    (tmp_path / "reqs").mkdir()
    (tmp_path / "reqs" / "gpu.txt").write_text(
        "# pick the CUDA build\n-i https://wheels.example.org/whl/cu128\n-r more.txt\n")
    (tmp_path / "reqs" / "more.txt").write_text("torch  # latest\n-r gpu.txt\n")
    req = infer_cuda(load_spec(env))
    assert (req.cuda, req.ambiguous, req.candidates, req.gpu_required) == \
        ("12.8", True, ("12.8",), True)
    assert req.evidence == ("- -r ./reqs/gpu.txt  # GPU wheels",)


def test_unreadable_or_sourceless_include_is_skipped(tmp_path: Path) -> None:
    text = "name: x\ndependencies:\n  - pip:\n    - -r reqs.txt\n"
    (tmp_path / "reqs.txt").write_text("torch==2.1.0+cu121\n")
    assert infer_cuda(parse_spec(text)).cuda is None
    env = tmp_path / "env.yml"
    env.write_text(text)
    assert infer_cuda(load_spec(env)).cuda == "12.1"
    (tmp_path / "reqs.txt").unlink()
    assert infer_cuda(load_spec(env)) == CudaRequirement(None, False, (), False, ())


def test_runtime_pins_lead_the_evidence_before_lockstep_components() -> None:
    req = infer("cuda-cudart=11.8.89=0;cuda-nvrtc=11.8.89=0;cudatoolkit=11.8.0=h4ba93d1_13")
    assert req.evidence == ("- cudatoolkit=11.8.0=h4ba93d1_13", "- cuda-cudart=11.8.89=0",
                            "- cuda-nvrtc=11.8.89=0")


@pytest.mark.parametrize(("pip", "cuda"), [
    ("https://wheels.example.org/cuda101/torch-1.4.0-cp37-cp37m-linux_x86_64.whl", "10.1"),
    ("torch @ https://wheels.example.org/cuda-10.1/torch-1.4.0-cp37-none-any.whl", "10.1"),
    ("https://download.example.org/whl/cu118/torch-2.1.0%2Bcu118-cp310-linux_x86_64.whl",
     "11.8"),
])
def test_direct_wheel_urls_pin(pip: str, cuda: str) -> None:
    req = infer("python", pip=pip)
    assert (req.cuda, req.ambiguous, req.gpu_required) == (cuda, False, True)
    assert req.evidence == (f"- {pip}",)


def test_pins_of_another_major_or_newer_builds_conflict_components_only_support() -> None:
    # A component of the pinned major, whatever its minor, supports; another major conflicts.
    assert infer("pytorch-cuda=12.1;cuda-cccl=12.6.77").ambiguous is False
    other_major = infer("pytorch-cuda=11.8;cuda-cccl=12.6.77")
    assert (other_major.cuda, other_major.ambiguous, other_major.candidates) == \
        ("11.8", True, ("11.8", "12.6"))
    # A build for an older minor of the same major runs on the pin; a newer one does not.
    assert infer("cuda-version=12.4;dgl=*=cuda121*").ambiguous is False
    assert infer("cuda-version=12.1;dgl=*=cuda124*").ambiguous is True


def test_tensorflow_gpu_pins_agree_or_disagree_with_runtime_pins() -> None:
    agree = infer("cudatoolkit=11.0", pip="tensorflow-gpu==2.4.1")
    assert (agree.cuda, agree.ambiguous) == ("11.0", False)
    disagree = infer("cudatoolkit=10.1", pip="tensorflow-gpu==2.4.1")
    assert (disagree.cuda, disagree.ambiguous, disagree.candidates) == \
        ("11.0", True, ("10.1", "11.0"))
