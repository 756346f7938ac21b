"""Infer the CUDA runtime an environment needs from what its file says.

Only dependency entries count: comments, channel names (``nvidia/label/cuda-11.7.1``) and the
env name never decide anything.  Evidence is weighed in tiers:

1. **pins** of the runtime itself: ``cuda-version``, ``cudatoolkit(-dev)``, ``pytorch-cuda``,
   the lock-step ``cuda-*`` component family (``cuda-toolkit``, ``cuda-runtime``, ``cuda-nvcc``,
   ...), ``nvcc_linux-64``, pip ``nvidia-cuda-runtime-cu11==11.7.99``, pip local versions
   (``torch==2.1.0+cu121``) and pip index URLs (``.../whl/cu118``);
2. **builds**: CUDA versions inside build strings (``py3.10_cuda11.8_cudnn8.7.0_0``,
   ``cuda112py310...``, ``py37_cu110``) and package names (``dgl-cuda11.1``, ``magma-cuda110``);
   these are packages *built against* a CUDA and only decide when no pin exists;
3. **majors**: ``cupy-cuda12x``, ``cuml-cu11``, ``jaxlib=*=*cuda12*``;
4. **frameworks** with a known set of CUDA builds but no pin (``pytorch=1.12`` from the pytorch
   channel, ``tensorflow-gpu==1.15``, a plain PyPI ``torch``): ambiguous, with candidates.

``cuda-python`` bounds and library versions (``libcublas=11.11.3.6``) are not runtime pins.
When pins disagree the highest wins and the result is ambiguous.  Anything read from a pip
``-r`` include is also flagged ambiguous: the include is not part of the spec (nor of its
content hash) and may change on its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hpcenv.errors import InvalidInput
from hpcenv.spec.drivers import version_key
from hpcenv.spec.environment import (
    EnvSpec,
    is_pip_option,
    parse_match_spec,
    split_pip_option,
)


@dataclass(frozen=True)
class CudaRequirement:
    cuda: str | None              # "12.4", "12", or None
    ambiguous: bool
    candidates: tuple[str, ...]
    gpu_required: bool | None
    evidence: tuple[str, ...]     # the spec lines that decided it


_Kind = Literal["pin", "min", "build", "major", "gpu", "framework", "optional", "cpu", "rocm"]


@dataclass(frozen=True)
class _Signal:
    kind: _Kind
    line: str
    versions: tuple[str, ...] = ()
    from_include: bool = False
    secondary: bool = False   # a lock-step cuda-* component: listed after the runtime pins


# Conda packages whose version *is* the CUDA runtime version.
_RUNTIME_PACKAGES = frozenset({
    "cuda", "cuda-version", "cudatoolkit", "cudatoolkit-dev", "pytorch-cuda",
    "nvcc_linux-64", "nvcc_linux-aarch64", "nvcc_linux-ppc64le",
})
# `cuda-*` packages that are NOT versioned in lock-step with the toolkit.
_NOT_LOCKSTEP = frozenset({"cuda-python", "cuda-bindings", "cuda-core", "cuda-pathfinder"})
# Packages that need an NVIDIA GPU but whose version says nothing about CUDA.
_GPU_PACKAGES = frozenset({"cudnn", "nccl", "cutensor", "cusparselt", "tensorflow-gpu",
                           "pytorch-gpu"})
_CPU_PACKAGES = frozenset({"cpuonly", "pytorch-cpu", "tensorflow-cpu"})
# pip wheels of the CUDA runtime whose version is the toolkit version (11.7.99 -> 11.7).
_PIP_RUNTIME_RE = re.compile(r"^nvidia-cuda-(runtime|nvrtc|cupti|nvcc)-cu\d+$")

# CUDA builds of pytorch published on the pytorch channel, per release.
_PYTORCH_CHANNEL_CUDA: dict[str, tuple[str, ...]] = {
    "1.7": ("9.2", "10.1", "10.2", "11.0"),
    "1.8": ("10.1", "10.2", "11.1"),
    "1.9": ("10.2", "11.1"),
    "1.10": ("10.2", "11.1", "11.3"),
    "1.11": ("10.2", "11.3"),
    "1.12": ("10.2", "11.3", "11.6"),
    "1.13": ("11.6", "11.7"),
    "2.0": ("11.7", "11.8"),
    "2.1": ("11.8", "12.1"),
    "2.2": ("11.8", "12.1"),
    "2.3": ("11.8", "12.1"),
    "2.4": ("11.8", "12.1", "12.4"),
    "2.5": ("11.8", "12.1", "12.4"),
}
# CUDA of the default Linux torch wheel on the Python package index, per release.
_PYPI_TORCH_CUDA: dict[str, str] = {
    "1.3": "10.1", "1.4": "10.1", "1.5": "10.2", "1.6": "10.2", "1.7": "10.2", "1.8": "10.2",
    "1.9": "10.2", "1.10": "10.2", "1.11": "10.2", "1.12": "10.2", "1.13": "11.7",
    "2.0": "11.7", "2.1": "12.1", "2.2": "12.1", "2.3": "12.1", "2.4": "12.1", "2.5": "12.4",
    "2.6": "12.4", "2.7": "12.6", "2.8": "12.8",
}
# CUDA that TensorFlow GPU builds were made for (tested build configurations).
_TENSORFLOW_CUDA: dict[str, str] = {
    "1.13": "10.0", "1.14": "10.0", "1.15": "10.0", "2.0": "10.0", "2.1": "10.1", "2.2": "10.1",
    "2.3": "10.1", "2.4": "11.0", "2.5": "11.2", "2.6": "11.2", "2.7": "11.2", "2.8": "11.2",
    "2.9": "11.2", "2.10": "11.2", "2.11": "11.2", "2.12": "11.8", "2.13": "11.8",
    "2.14": "11.8", "2.15": "12.2", "2.16": "12.3", "2.17": "12.3", "2.18": "12.5",
}

# CUDA versions written inside names, builds and URLs.  Order matters: dotted forms first.
_TOKEN_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"cuda[-_]?(\d{1,2})\.(\d)"), "full"),                    # cuda11.8, dgl-cuda11.1
    (re.compile(r"cuda(1[0-3])(\d)(?!\d)"), "full"),                       # cuda112, magma-cuda110
    (re.compile(r"cuda([7-9])(\d)(?!\d)"), "full"),                        # cuda92
    (re.compile(r"cuda(1[0-3])(?:x|(?!\d))"), "major"),                    # cuda11x, *cuda12*
    (re.compile(r"(?<![a-z])cu(1[0-3])(\d)(?!\d)"), "full"),               # cu118, py37_cu110
    (re.compile(r"(?<![a-z])cu([7-9])(\d)(?!\d)"), "full"),                # cu92
    (re.compile(r"(?<![a-z])cu(1[0-3])(?:x|(?!\d))"), "major"),            # cuml-cu11
)
_CPU_TOKEN_RE = re.compile(r"(?<![a-z])cpu(?![a-z])")
_ROCM_RE = re.compile(r"rocm\d")
_CPU_INDEX_RE = re.compile(r"/cpu(/|$)")
_PIP_REQ_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*)$")
_INDEX_OPTIONS = frozenset({"-i", "--index-url", "--extra-index-url", "-f", "--find-links"})
_INCLUDE_OPTIONS = frozenset({"-r", "--requirement"})
_MAX_INCLUDE_DEPTH = 5


def _cuda_token(text: str) -> tuple[str, str] | None:
    """``("full", "11.8")`` / ``("major", "12")`` for a CUDA version written inside ``text``."""
    lowered = text.lower()
    for pattern, kind in _TOKEN_PATTERNS:
        match = pattern.search(lowered)
        if match is not None:
            if kind == "major":
                return "major", str(int(match.group(1)))
            return "full", f"{int(match.group(1))}.{int(match.group(2))}"
    return None


def _minor_of(version: str) -> str | None:
    """``"11.7.0"`` -> ``"11.7"``, ``"12"`` -> ``"12"``, non-numeric -> None."""
    parts = version.strip().rstrip("*").rstrip(".").split(".")
    if not parts or not all(p.isdigit() for p in parts[:2]):
        return None
    return ".".join(str(int(p)) for p in parts[:2])


def _constraint_versions(constraint: str | None) -> tuple[list[str], list[str]]:
    """Exact CUDA versions and lower bounds in a conda version constraint.

    ``=11.8``, ``11.8.*``, ``==11.8.0``, ``11.8|12.0`` are exact; ``>=12.0,<13`` is a lower bound;
    ``*`` and upper bounds alone pin nothing.
    """
    exact: list[str] = []
    lower: list[str] = []
    if not constraint:
        return exact, lower
    for alternative in constraint.split("|"):
        for part in alternative.split(","):
            if part.startswith((">=", ">", "~=")):
                version = _minor_of(part.lstrip(">=~"))
                if version is not None:
                    lower.append(version)
            elif not part.startswith(("<", "!")):
                version = _minor_of(part.lstrip("="))
                if version is not None:
                    exact.append(version)
    return exact, lower


def _framework_version(constraint: str | None) -> str | None:
    """Release (``"1.12"``) of an exact or prefix framework pin; None for ranges."""
    exact, _ = _constraint_versions(constraint)
    return exact[0] if len(exact) == 1 and "." in exact[0] else None


def _line(spec: EnvSpec, lines: tuple[int, ...], index: int, entry: str) -> str:
    if index < len(lines):
        text = spec.source_line(lines[index])
        if text:
            return text
    return entry


def _pytorch_from_pytorch_channel(spec: EnvSpec, channel: str | None) -> bool:
    """True when ``pytorch`` resolves from the pytorch channel (whose default is a CUDA build)."""
    if channel is not None:
        return channel == "pytorch"
    channels = list(spec.channels)
    if "pytorch" not in channels:
        return False
    return "conda-forge" not in channels or channels.index("pytorch") < channels.index(
        "conda-forge")


def _conda_signals(spec: EnvSpec) -> Iterator[_Signal]:
    for index, entry in enumerate(spec.conda):
        line = _line(spec, spec.conda_lines, index, entry)
        match = parse_match_spec(entry)
        name = match.name.lower()
        if name in _CPU_PACKAGES:
            yield _Signal("cpu", line)
            continue
        build = (match.build or "").lower()
        build_token = _cuda_token(build)
        if _CPU_TOKEN_RE.search(build):
            yield _Signal("cpu", line)
        elif build_token is not None:
            kind: _Kind = "build" if build_token[0] == "full" else "major"
            yield _Signal(kind, line, (build_token[1],))
        elif "cuda" in build:
            yield _Signal("gpu", line)
        if name in _RUNTIME_PACKAGES or (name.startswith("cuda-") and name not in _NOT_LOCKSTEP):
            exact, lower = _constraint_versions(match.version)
            majors = [v for v in exact if "." not in v]
            exact = [v for v in exact if "." in v]
            if exact:
                yield _Signal("pin", line, tuple(exact), secondary=name not in _RUNTIME_PACKAGES)
            elif lower:
                yield _Signal("min", line, tuple(lower))
            elif majors:
                yield _Signal("major", line, tuple(majors))
            else:
                yield _Signal("gpu", line)
            continue
        name_token = _cuda_token(name)
        if name_token is not None:
            kind = "build" if name_token[0] == "full" else "major"
            yield _Signal(kind, line, (name_token[1],))
        elif name in _GPU_PACKAGES:
            release = _framework_version(match.version)
            if name == "tensorflow-gpu" and release in _TENSORFLOW_CUDA:
                yield _Signal("framework", line, (_TENSORFLOW_CUDA[release],))
            else:
                yield _Signal("gpu", line)
        elif name == "pytorch" and _pytorch_from_pytorch_channel(spec, match.channel):
            release = _framework_version(match.version)
            yield _Signal("framework", line, _PYTORCH_CHANNEL_CUDA.get(release or "", ()))


def _channel_signals(spec: EnvSpec) -> Iterator[_Signal]:
    # Listing NVIDIA's channel says the env wants CUDA packages, though not which version.
    for index, channel in enumerate(spec.channels):
        if channel.split("/")[0] == "nvidia":
            yield _Signal("gpu", _line(spec, spec.channel_lines, index, channel))


def _pip_entries(spec: EnvSpec) -> Iterator[tuple[str, str, bool]]:
    """``(pip line, evidence line, from_include)``, following readable ``-r`` includes."""
    base = spec.source.parent if spec.source is not None else None
    for index, entry in enumerate(spec.pip):
        line = _line(spec, spec.pip_lines, index, entry)
        yield entry, line, False
        yield from ((item, line, True) for item in _included(entry, base, depth=0, seen=set()))


def _included(entry: str, base: Path | None, depth: int, seen: set[Path]) -> Iterator[str]:
    option = split_pip_option(entry)
    if base is None or option is None or option[0] not in _INCLUDE_OPTIONS:
        return
    if option[1] is None or depth >= _MAX_INCLUDE_DEPTH:
        return
    path = (base / option[1]).resolve()
    if path in seen:
        return
    seen.add(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        # An unreadable include cannot be inspected; inference covers what is readable.
        return
    for raw in text.splitlines():
        item = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if item:
            yield item
            yield from _included(item, path.parent, depth + 1, seen)


def _pip_signals(spec: EnvSpec) -> Iterator[_Signal]:
    entries = list(_pip_entries(spec))
    index_kinds: set[str] = set()
    for entry, line, included in entries:
        option = split_pip_option(entry)
        if option is None or option[0] not in _INDEX_OPTIONS or option[1] is None:
            continue
        url = option[1].lower()
        token = _cuda_token(url)
        if _ROCM_RE.search(url):
            index_kinds.add("rocm")
            yield _Signal("rocm", line, from_include=included)
        elif token is not None:
            index_kinds.add("cuda")
            kind: _Kind = "pin" if token[0] == "full" else "major"
            yield _Signal(kind, line, (token[1],), from_include=included)
        elif _CPU_INDEX_RE.search(url):
            index_kinds.add("cpu")
            yield _Signal("cpu", line, from_include=included)

    for entry, line, included in entries:
        if is_pip_option(entry):
            continue
        match = _PIP_REQ_RE.match(entry)
        if match is None or "://" in entry:
            continue
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        extras = (match.group(2) or "").lower()
        constraint, _, local = match.group(3).partition("+")
        local = local.lower()

        def signal(kind: _Kind, versions: tuple[str, ...] = ()) -> _Signal:
            return _Signal(kind, line, versions, from_include=included)

        if local:
            token = _cuda_token(local)
            if token is not None:
                yield signal("pin" if token[0] == "full" else "major", (token[1],))
                continue
            if local.startswith("cpu"):
                yield signal("cpu")
                continue
            if local.startswith("rocm"):
                yield signal("rocm")
                continue
        pinned = re.sub(r"\s+", "", constraint)
        if _PIP_RUNTIME_RE.match(name) and pinned.startswith("=="):
            version = _minor_of(pinned[2:])
            if version is not None and "." in version:
                yield signal("pin", (version,))
                continue
        token = _cuda_token(name) or _cuda_token(extras)
        release = _framework_version(pinned.lstrip("=") if pinned.startswith("==") else None)
        if token is not None:
            yield signal("build" if token[0] == "full" else "major", (token[1],))
        elif name == "tensorflow-gpu" or (name == "tensorflow" and "and-cuda" in extras):
            cuda = _TENSORFLOW_CUDA.get(release or "")
            yield signal("framework", (cuda,)) if cuda else signal("gpu")
        elif name == "torch" and not index_kinds:
            # PyPI's default Linux torch wheels bundle CUDA but also run without a GPU.
            cuda = _PYPI_TORCH_CUDA.get(release or "")
            yield signal("optional", (cuda,) if cuda else ())


def _sorted(versions: set[str]) -> tuple[str, ...]:
    return tuple(sorted(versions, key=version_key))


def infer_cuda(spec: EnvSpec) -> CudaRequirement:
    """The CUDA runtime ``spec`` needs, how sure that is, and which lines said so."""
    try:
        signals = [*_channel_signals(spec), *_conda_signals(spec), *_pip_signals(spec)]
    except InvalidInput as exc:
        raise InvalidInput(f"{spec.source or '<environment.yml>'}: {exc}") from None
    by_kind: dict[str, list[_Signal]] = {}
    for sig in signals:
        by_kind.setdefault(sig.kind, []).append(sig)

    def versions(*kinds: str) -> set[str]:
        return {v for k in kinds for s in by_kind.get(k, []) for v in s.versions}

    cpu = bool(by_kind.get("cpu"))
    cuda: str | None = None
    ambiguous = False
    candidates: set[str] = set()
    deciding: list[_Signal] = []
    decided_by = "pin" if by_kind.get("pin") else "build" if by_kind.get("build") else None
    if decided_by is not None:
        chosen = versions(decided_by)
        cuda = max(chosen, key=version_key)
        candidates = set(chosen)
        chosen_majors = {v.split(".")[0] for v in chosen}
        stray = versions("major") - chosen_majors
        candidates |= stray
        ambiguous = len(candidates) > 1
        # Strongest first: the deciding tier, agreeing builds, then majors that disagree.
        deciding = sorted((s for s in signals if s.kind == decided_by),
                          key=lambda s: s.secondary)
        deciding += [s for s in signals if s.kind == "build" and set(s.versions) & chosen]
        deciding += [s for s in signals if s.kind == "major" and set(s.versions) & stray]
    elif by_kind.get("min"):
        candidates = versions("min")
        cuda = max(candidates, key=version_key)
        ambiguous = True
        deciding = by_kind["min"]
    elif by_kind.get("major"):
        candidates = versions("major")
        cuda = max(candidates, key=version_key)
        ambiguous = len(candidates) > 1
        deciding = by_kind["major"]
    elif by_kind.get("framework") and not cpu:
        candidates = versions("framework")
        ambiguous = True
        deciding = by_kind["framework"] + by_kind.get("gpu", [])
    elif by_kind.get("gpu"):
        ambiguous = True
        deciding = by_kind["gpu"]
    elif by_kind.get("optional") and not cpu:
        candidates = versions("optional")
        ambiguous = True
        deciding = by_kind["optional"]

    cuda_gpu = cuda is not None or bool(by_kind.get("gpu")) or (
        bool(by_kind.get("framework")) and not cpu)
    gpu_required: bool | None
    if cuda_gpu:
        gpu_required = True
    elif by_kind.get("rocm"):
        gpu_required = True
        deciding = by_kind["rocm"]
    elif cpu:
        gpu_required = False
        deciding = by_kind["cpu"]
    elif by_kind.get("optional"):
        gpu_required = None
    else:
        gpu_required = False

    if any(s.from_include for s in deciding):
        ambiguous = True
    evidence = tuple(dict.fromkeys(s.line for s in deciding))
    return CudaRequirement(cuda=cuda, ambiguous=ambiguous, candidates=_sorted(candidates),
                           gpu_required=gpu_required, evidence=evidence)
