"""Infer the CUDA runtime an environment needs from what its file says.

Only what conda and pip act on counts: dependency entries, channels and pip lines; comments and
the env name never decide anything.  Evidence is weighed in tiers, strongest first:

1. **runtime and framework pins**, which fix the runtime the env runs: ``cuda-version``,
   ``cudatoolkit(-dev)``, ``pytorch-cuda``, the toolkit metapackages (``cuda``,
   ``cuda-toolkit``, ``cuda-runtime``...), ``nvcc_linux-64``, a label channel
   ``nvidia/label/cuda-12.1.0`` (listed, or before ``::``), pip ``nvidia-cuda-runtime-cu11==``,
   pip local versions (``torch==2.1.0+cu121``), wheel index URLs (``.../whl/cu118``) and direct
   wheel URLs (``.../cu101/torch-...whl``), the CUDA in a pytorch build string
   (``pytorch=*=py3.10_cuda12.1*``) and TensorFlow GPU pins, read through TensorFlow's tested
   build configurations (``tensorflow-gpu==2.4`` is 11.0);
2. **components**: the other ``cuda-*`` packages (``cuda-cudart=12.1.105``, ``cuda-cccl``);
   they follow the toolkit's updates or their own numbering, so they decide only without a
   pin, and otherwise just support it;
3. **builds**: the CUDA other packages were built against (``dgl=*=cuda112*``,
   ``magma-cuda110``, ``spconv-cu124``): they decide only without pins; with pins, a build for
   a *newer* CUDA or another major is a conflict, an older one of the same major runs fine;
4. **majors**: ``cupy-cuda12x``, ``cuml-cu11``, ``jaxlib=*=*cuda12*``, ``cuda-version=12``;
5. **lower bounds** of a runtime package (``cuda-version>=12.0,<13``; a range that leaves one
   release, such as ``cudatoolkit>10.0,<10.2``, is a pin);
6. **frameworks with several CUDA builds** (``pytorch=1.12`` from the pytorch channel): the
   candidates, ambiguous;
7. **GPU without a version**: CUDA-only packages (``cudnn``, ``cupy``, RAPIDS' ``cudf``...),
   ``*cuda*`` build globs, the nvidia channel; a framework that names one CUDA (pip ``torch``'s
   default wheel, a plain ``tensorflow==2.15``) fills in the candidate;
8. **GPU optional**: PyPI's default ``torch`` wheels (bundled CUDA, runs without a GPU).

Disagreeing pins make the result ambiguous, and the highest wins.  A pip TensorFlow GPU wheel
carries no CUDA: it loads whatever runtime the env holds, so when the conda side installs a
CUDA runtime nothing pins (``cudnn=7``), the result is ambiguous too.  Anything read from a pip
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
from hpcenv.spec.drivers import known_cuda_versions, version_key
from hpcenv.spec.environment import (
    EnvSpec,
    is_pip_option,
    parse_match_spec,
    split_pip_option,
)


@dataclass(frozen=True)
class CudaRequirement:
    """The CUDA version an environment needs, as inferred from its spec."""

    cuda: str | None              # "12.4", "12", or None
    ambiguous: bool
    candidates: tuple[str, ...]
    gpu_required: bool | None
    evidence: tuple[str, ...]     # the spec lines that decided it, strongest first


_Kind = Literal["pin", "component", "build", "major", "min", "framework", "gpu", "hint",
                "optional", "cpu", "rocm"]


@dataclass(frozen=True)
class _Signal:
    """One spec line's evidence about CUDA."""

    kind: _Kind
    line: str
    versions: tuple[str, ...] = ()
    from_include: bool = False
    rank: int = 0                 # order inside a tier: runtime pins before framework pins
    needs_runtime: bool = False   # a pip TensorFlow wheel: uses the runtime the env holds
    gives_runtime: bool = False   # a conda package that installs a CUDA runtime


# Conda packages whose version *is* the CUDA toolkit version.
_RUNTIME_PACKAGES = frozenset({
    "cuda", "cuda-version", "cudatoolkit", "cudatoolkit-dev", "pytorch-cuda", "cuda-toolkit",
    "cuda-runtime", "cuda-libraries", "cuda-libraries-dev", "cuda-libraries-static",
    "cuda-tools", "cuda-command-line-tools", "cuda-visual-tools", "cuda-compiler",
    "cuda-minimal-build",
    "nvcc_linux-64", "nvcc_linux-aarch64", "nvcc_linux-ppc64le",
})
# `cuda-*` packages that are not part of the toolkit.
_NOT_COMPONENTS = frozenset({"cuda-python", "cuda-bindings", "cuda-core", "cuda-pathfinder"})
# Packages that only exist as CUDA builds (conda-forge, rapidsai, nvidia; the same names on the
# Python package index), whose version says nothing about the CUDA runtime.
_CUDA_ONLY_PACKAGES = frozenset({
    "cudnn", "libcudnn", "nccl", "libnccl", "cutensor", "libcutensor", "cusparselt",
    "libcusparselt", "tensorrt", "libnvinfer", "cuquantum", "cuquantum-python", "custatevec",
    "cutensornet", "magma", "libmagma",
    "cupy", "cupy-core", "cudf", "libcudf", "dask-cudf", "cudf-kafka", "custreamz", "cuml",
    "libcuml", "cugraph", "libcugraph", "pylibcugraph", "nx-cugraph", "cuspatial",
    "libcuspatial", "cuproj", "cuxfilter", "cucim", "libcucim", "rmm", "librmm", "pylibraft",
    "libraft", "raft-dask", "cuvs", "libcuvs", "kvikio", "libkvikio", "rapids",
    "tensorflow-gpu", "pytorch-gpu",
})
_CPU_PACKAGES = frozenset({"cpuonly", "pytorch-cpu", "tensorflow-cpu"})
# pytorch builds name the CUDA runtime they were linked with (pytorch-cuda pins it exactly).
_PYTORCH_FAMILY = frozenset({"pytorch", "torchvision", "torchaudio", "libtorch"})
# pip wheels of the CUDA runtime whose version is the toolkit version (11.7.99 -> 11.7).
_PIP_RUNTIME_RE = re.compile(r"^nvidia-cuda-(runtime|nvrtc|cupti|nvcc)-cu\d+$")
_LABEL_CHANNEL_RE = re.compile(r"^nvidia/label/cuda-(\d+)\.(\d+)(?:\.\d+)?/?$")

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
# The CUDA each TensorFlow release was built and tested with on Linux: TensorFlow's "tested
# build configurations" table (its install-from-source guide), GPU rows, one CUDA per release
# from 1.0 on (1.5-1.12 name "9", i.e. 9.0; 1.0-1.4 name "8", i.e. 8.0); 0.12's install guide
# asked for CUDA 8.0 as well.
_TENSORFLOW_CUDA: dict[str, str] = {
    "0.12": "8.0", "1.0": "8.0", "1.1": "8.0", "1.2": "8.0", "1.3": "8.0", "1.4": "8.0",
    "1.5": "9.0", "1.6": "9.0", "1.7": "9.0", "1.8": "9.0", "1.9": "9.0", "1.10": "9.0",
    "1.11": "9.0", "1.12": "9.0", "1.13": "10.0", "1.14": "10.0", "1.15": "10.0",
    "2.0": "10.0", "2.1": "10.1", "2.2": "10.1", "2.3": "10.1", "2.4": "11.0", "2.5": "11.2",
    "2.6": "11.2", "2.7": "11.2", "2.8": "11.2", "2.9": "11.2", "2.10": "11.2", "2.11": "11.2",
    "2.12": "11.8", "2.13": "11.8", "2.14": "11.8", "2.15": "12.2", "2.16": "12.3",
    "2.17": "12.3", "2.18": "12.5", "2.19": "12.5", "2.20": "12.5",
}

# CUDA versions written inside names, builds and URLs.  Order matters: dotted forms first.
_TOKEN_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"cuda[-_]?(\d{1,2})\.(\d)"), "full"),                    # cuda11.8, cuda-10.1
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
    """``"11.7.0"`` -> ``"11.7"``, ``"12"`` -> ``"12"``, ``"12.0a0"`` -> ``"12.0"``, else None."""
    parts = version.strip().rstrip("*").rstrip(".").split(".")
    if not parts or not parts[0].isdigit():
        return None
    if len(parts) == 1:
        return str(int(parts[0]))
    minor = re.match(r"\d+", parts[1])
    if minor is None:
        return str(int(parts[0]))
    return f"{int(parts[0])}.{int(minor.group(0))}"


def _release_matches(term: str, release: tuple[int, int]) -> bool | None:
    """Whether the CUDA ``release`` satisfies one constraint term (``>10.0``, ``<12.0a0``,
    ``=11.8``); None when the term is no CUDA version.  Bounds are read at minor precision."""
    operator = re.match(r"==|!=|>=|<=|~=|=|>|<", term)
    op = operator.group(0) if operator else ""
    rest = term[len(op):]
    if rest in ("*", ""):
        return True
    version = _minor_of(rest)
    if version is None:
        return None
    parts = [int(p) for p in version.split(".")]
    bound = (parts[0], parts[1] if len(parts) > 1 else 0)
    if op in ("", "=", "=="):
        return release[0] == bound[0] if len(parts) == 1 else release == bound
    if op == "~=":
        return release >= bound and release[0] == bound[0]
    return {">=": release >= bound, "<=": release <= bound, ">": release > bound,
            "<": release < bound, "!=": release != bound}[op]


def _constraint_versions(constraint: str | None) -> tuple[list[str], list[str]]:
    """Exact CUDA versions and lower bounds in a conda version constraint.

    ``=11.8``, ``11.8.*``, ``==11.8.0``, ``11.8|12.0`` are exact; a range that only one known
    release satisfies (``>10.0,<10.2``) is exact too; ``>=12.0,<13`` is a lower bound; ``*``
    and upper bounds alone pin nothing.
    """
    exact: list[str] = []
    lower: list[str] = []
    if not constraint:
        return exact, lower
    for alternative in constraint.split("|"):
        terms = [t for t in alternative.split(",") if t]
        if any(t.startswith((">", "<", "~=", "!=")) for t in terms):
            releases = [(int(v.split(".")[0]), int(v.split(".")[1])) for v in known_cuda_versions()]
            verdicts = [[_release_matches(t, r) for t in terms] for r in releases]
            if not any(None in v for v in verdicts):
                fitting = [r for r, v in zip(releases, verdicts, strict=True) if all(v)]
                if len(fitting) == 1:
                    exact.append(".".join(map(str, fitting[0])))
                    continue
        for part in terms:
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
    if not constraint or any(op in constraint for op in (">", "<", "!", "~", "|", ",")):
        return None
    version = _minor_of(constraint.lstrip("="))
    return version if version is not None and "." in version else None


def _line(spec: EnvSpec, lines: tuple[int, ...], index: int, entry: str) -> str:
    if index < len(lines):
        text = spec.source_line(lines[index])
        if text:
            return text
    return entry


def _label_cuda(channel: str | None) -> str | None:
    """``"12.1"`` for NVIDIA's per-release label channel ``nvidia/label/cuda-12.1.0``."""
    match = _LABEL_CHANNEL_RE.match(channel or "")
    return f"{int(match.group(1))}.{int(match.group(2))}" if match else None


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
        label = _label_cuda(match.channel)
        if label is not None:
            yield _Signal("pin", line, (label,))
        if name in _CPU_PACKAGES:
            yield _Signal("cpu", line)
            continue
        build = (match.build or "").lower()
        build_token = _cuda_token(build)
        if _CPU_TOKEN_RE.search(build):
            yield _Signal("cpu", line)
        elif build_token is not None and build_token[0] == "full" and name in _PYTORCH_FAMILY:
            yield _Signal("pin", line, (build_token[1],), rank=1)
        elif build_token is not None:
            yield _Signal("build" if build_token[0] == "full" else "major", line,
                          (build_token[1],))
        elif "cuda" in build:
            yield _Signal("gpu", line)
        if name in _RUNTIME_PACKAGES or (name.startswith("cuda-") and name not in _NOT_COMPONENTS):
            exact, lower = _constraint_versions(match.version)
            majors = [v for v in exact if "." not in v]
            exact = [v for v in exact if "." in v]
            kind: _Kind = "pin" if name in _RUNTIME_PACKAGES else "component"
            if exact:
                yield _Signal(kind, line, tuple(exact))
            elif lower:
                yield _Signal("min", line, tuple(lower))
            elif majors:
                yield _Signal("major", line, tuple(majors))
            else:
                yield _Signal("gpu", line, gives_runtime=True)
            continue
        name_token = _cuda_token(name)
        release = _framework_version(match.version)
        if name_token is not None:
            yield _Signal("build" if name_token[0] == "full" else "major", line,
                          (name_token[1],))
        elif name == "tensorflow-gpu" and release in _TENSORFLOW_CUDA:
            yield _Signal("pin", line, (_TENSORFLOW_CUDA[release],), rank=1)
        elif name in _CUDA_ONLY_PACKAGES or name.endswith("-gpu"):
            yield _Signal("gpu", line, gives_runtime=True)
        elif name == "tensorflow" and release in _TENSORFLOW_CUDA:
            yield _Signal("hint", line, (_TENSORFLOW_CUDA[release],))
        elif name == "pytorch" and _pytorch_from_pytorch_channel(spec, match.channel):
            yield _Signal("framework", line, _PYTORCH_CHANNEL_CUDA.get(release or "", ()))


def _channel_signals(spec: EnvSpec) -> Iterator[_Signal]:
    for index, channel in enumerate(spec.channels):
        line = _line(spec, spec.channel_lines, index, channel)
        label = _label_cuda(channel)
        if label is not None:
            # NVIDIA's per-release label holds exactly that toolkit's packages.
            yield _Signal("pin", line, (label,))
        elif channel.split("/")[0] == "nvidia":
            # Listing NVIDIA's channel says the env wants CUDA packages, not which version.
            yield _Signal("gpu", line)


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


def _url_signal(url: str, line: str, included: bool) -> _Signal | None:
    """What a wheel URL or index URL says: ``.../cu118``, ``cuda-10.1``, ``rocm5.2``, ``/cpu``."""
    url = url.lower()
    token = _cuda_token(url)
    if _ROCM_RE.search(url):
        return _Signal("rocm", line, from_include=included)
    if token is not None:
        return _Signal("pin" if token[0] == "full" else "major", line, (token[1],),
                       from_include=included)
    if _CPU_INDEX_RE.search(url) or "+cpu" in url:
        return _Signal("cpu", line, from_include=included)
    return None


def _pip_signals(spec: EnvSpec) -> Iterator[_Signal]:
    entries = list(_pip_entries(spec))
    if not entries:
        return
    # pip's rules (optparse, the option table) only for a spec with pip lines (see the
    # spec parser, which imports them the same way).
    from hpcenv.spec.pip_lines import is_url

    index_kinds: set[str] = set()
    for entry, line, included in entries:
        option = split_pip_option(entry)
        if option is None or option[0] not in _INDEX_OPTIONS or option[1] is None:
            continue
        found = _url_signal(option[1], line, included)
        if found is not None:
            index_kinds.add(found.kind)
            yield found

    for entry, line, included in entries:
        if is_pip_option(entry):
            continue
        requirement = entry.split(" -", 1)[0].strip()
        name_part, at, url = requirement.partition("@")
        if is_url(requirement) or (at and "://" in url):
            # A direct wheel URL names the build it installs (.../cu101/torch-...whl).
            found = _url_signal(url if at else requirement, line, included)
            if found is not None:
                yield found
            if not at:
                continue
            requirement = name_part
        match = _PIP_REQ_RE.match(requirement)
        if match is None or "/" in requirement:
            continue
        name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
        extras = (match.group(2) or "").lower()
        constraint, _, local = match.group(3).partition("+")
        local = local.lower()

        def signal(kind: _Kind, versions: tuple[str, ...] = (), *, at: str = line,
                   included: bool = included, rank: int = 0,
                   needs_runtime: bool = False) -> _Signal:
            return _Signal(kind, at, versions, from_include=included, rank=rank,
                           needs_runtime=needs_runtime)

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
        pinned = re.sub(r"\s+", "", constraint).split(";", 1)[0]
        if _PIP_RUNTIME_RE.match(name) and pinned.startswith("=="):
            version = _minor_of(pinned[2:])
            if version is not None and "." in version:
                yield signal("pin", (version,))
                continue
        token = _cuda_token(name) or _cuda_token(extras)
        release = _framework_version(pinned.lstrip("=") if pinned.startswith("==") else None)
        tensorflow_cuda = _TENSORFLOW_CUDA.get(release or "")
        and_cuda = name == "tensorflow" and "and-cuda" in extras
        if token is not None:
            yield signal("build" if token[0] == "full" else "major", (token[1],))
        elif (name == "tensorflow-gpu" or and_cuda) and tensorflow_cuda:
            # [and-cuda] pulls NVIDIA's runtime wheels; tensorflow-gpu uses the env's runtime.
            yield signal("pin", (tensorflow_cuda,), rank=1, needs_runtime=not and_cuda)
        elif name in _CUDA_ONLY_PACKAGES or name.endswith("-gpu") or and_cuda:
            yield signal("gpu")
        elif name == "tensorflow" and tensorflow_cuda:
            yield signal("hint", (tensorflow_cuda,))
        elif name == "torch" and not index_kinds:
            # PyPI's default Linux torch wheels bundle CUDA but also run without a GPU.
            cuda = _PYPI_TORCH_CUDA.get(release or "")
            yield signal("optional", (cuda,) if cuda else ())


def _sorted(versions: set[str]) -> tuple[str, ...]:
    return tuple(sorted(versions, key=version_key))


def _major(version: str) -> str:
    return version.split(".")[0]


def _conflicts(decided: str, versions: tuple[str, ...], newer_too: bool) -> set[str]:
    """Versions that cannot run on the ``decided`` runtime: another major, or (for builds) a
    newer minor of the same major."""
    out: set[str] = set()
    for version in versions:
        if _major(version) != _major(decided):
            out.add(version)
        elif newer_too and "." in version and version_key(version) > version_key(decided):
            out.add(version)
    return out


def infer_cuda(spec: EnvSpec) -> CudaRequirement:
    """The CUDA runtime ``spec`` needs, how sure that is, and which lines said so."""
    try:
        signals = [*_channel_signals(spec), *_conda_signals(spec), *_pip_signals(spec)]
    except InvalidInput as exc:
        raise InvalidInput(f"{spec.source or '<environment.yml>'}: {exc}") from None
    by_kind: dict[str, list[_Signal]] = {}
    for sig in signals:
        by_kind.setdefault(sig.kind, []).append(sig)

    def of(*kinds: str) -> list[_Signal]:
        return [s for k in kinds for s in by_kind.get(k, [])]

    def versions(*kinds: str) -> set[str]:
        return {v for s in of(*kinds) for v in s.versions}

    cpu = bool(by_kind.get("cpu"))
    cuda: str | None = None
    ambiguous = False
    candidates: set[str] = set()
    deciding: list[_Signal] = []
    decided_by = next((k for k in ("pin", "component", "build") if by_kind.get(k)), None)
    if decided_by is not None:
        chosen = versions(decided_by)
        cuda = max(chosen, key=version_key)
        # Weaker tiers support the decision, or conflict with it.
        weaker = ("component", "build", "major")[("pin", "component", "build").index(
            decided_by):]
        conflicts: list[_Signal] = []
        for sig in of(*weaker):
            clash = _conflicts(cuda, sig.versions, newer_too=sig.kind == "build")
            if clash:
                conflicts.append(sig)
                candidates |= clash
        candidates |= chosen
        ambiguous = len(candidates) > 1
        deciding = sorted(of(decided_by), key=lambda s: s.rank)
        deciding += [s for s in of(*weaker) if s not in conflicts and cuda in s.versions]
        deciding += conflicts
        runtimes = [s for s in of("gpu") if s.gives_runtime]
        if decided_by == "pin" and runtimes and all(s.needs_runtime for s in of("pin")):
            # The only pins are pip TensorFlow wheels, and conda installs a runtime of its
            # own choosing: which one the solver picks decides whether TensorFlow loads.
            ambiguous = True
            deciding += runtimes
    elif by_kind.get("major"):
        candidates = versions("major")
        cuda = max(candidates, key=version_key)
        ambiguous = len(candidates) > 1
        deciding = of("major")
    elif by_kind.get("min"):
        candidates = versions("min")
        cuda = max(candidates, key=version_key)
        ambiguous = True
        deciding = of("min")
    elif by_kind.get("framework") and not cpu:
        candidates = versions("framework")
        ambiguous = True
        deciding = of("framework", "gpu")
    elif by_kind.get("gpu"):
        candidates = versions("hint", "optional")
        ambiguous = True
        deciding = of("gpu", "hint", "optional")
        if len(candidates) == 1:
            # A GPU env whose one framework names one CUDA: the best reading, still a guess.
            cuda = next(iter(candidates))
    elif by_kind.get("optional") and not cpu:
        candidates = versions("optional")
        ambiguous = True
        deciding = of("optional")

    cuda_gpu = cuda is not None or bool(by_kind.get("gpu")) or (
        bool(by_kind.get("framework")) and not cpu)
    gpu_required: bool | None
    if cuda_gpu:
        gpu_required = True
    elif by_kind.get("rocm"):
        gpu_required = True
        deciding = of("rocm")
    elif cpu:
        gpu_required = False
        deciding = of("cpu")
    elif by_kind.get("optional"):
        gpu_required = None
    else:
        gpu_required = False

    if any(s.from_include for s in deciding):
        ambiguous = True
    evidence = tuple(dict.fromkeys(s.line for s in deciding))
    return CudaRequirement(cuda=cuda, ambiguous=ambiguous, candidates=_sorted(candidates),
                           gpu_required=gpu_required, evidence=evidence)
