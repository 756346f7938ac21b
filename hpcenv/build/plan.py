"""Planning a build: its name, key, channels and CUDA, computed without touching anything.

**Key.**  sha256 of the env name, the normalised spec (:meth:`EnvSpec.normalized`), the platform,
the resolved channel URLs, the channel priority and the ``__cuda`` value the solve uses.  The
``__cuda`` value is always explicit (inferred from the spec, or ``--cuda X.Y``, or none with
``--no-cuda``), never detected, so the same spec resolves the same way on a GPU login node and a
GPU-less one; ``--cuda 12.4`` on a spec that infers 12.4 is the same build.  A ``--from-lock``
build keys on the lockfile's bytes instead of the spec.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.engine.base import (
    ChannelPriority,
    LockedPackage,
    channel_url,
    current_platform,
)
from hpcenv.errors import InvalidInput
from hpcenv.site.config import check_env_name, resolve_channel
from hpcenv.spec.cuda import infer_cuda
from hpcenv.spec.cuda_target import NO_CUDA, CudaTarget
from hpcenv.spec.drivers import version_key
from hpcenv.spec.environment import EnvSpec
from hpcenv.spec.names import EnvName

if TYPE_CHECKING:
    from hpcenv.site.config import SiteConfig

KEY_SCHEMA = 1
_CUDA_DEP_RE = re.compile(r"^__cuda\s*>=\s*(\d+(?:\.\d+)?)")
_CUDA_DEP_NAME_RE = re.compile(r"^__cuda(?![\w.-])")


@dataclass(frozen=True)
class BuildPlan:
    """What a build would be, computed without touching anything."""

    name: EnvName
    key: str
    platform: str
    channels: tuple[str, ...]
    channel_priority: ChannelPriority
    cuda: CudaTarget                   # the __cuda of the solve: a version or none, never detect
    cuda_override: CudaTarget | None   # as asked: None = inferred
    notes: tuple[str, ...] = ()
    gpu_required: bool | None = None   # see resolve_cuda


def resolve_channels(spec: EnvSpec | None, site: SiteConfig) -> tuple[str, ...]:
    """Channels as conda uses them: the spec's, then the site's (unless the spec says
    ``nodefaults``), each mapped through the site's ``mirrors`` and made a URL; duplicates dropped."""

    listed = list(spec.channels) if spec is not None else []
    if "nodefaults" not in listed:
        listed += list(site.channels)
    out: list[str] = []
    for channel in listed:
        if channel == "nodefaults":
            continue
        url = channel_url(resolve_channel(site, channel))
        if url not in out:
            out.append(url)
    if not out:
        where = spec.source if spec is not None and spec.source else "<environment.yml>"
        raise InvalidInput(f"{where}: no channels to solve from; add 'channels:' to the file or "
                           "to the site config")
    return tuple(out)


def resolve_cuda(spec: EnvSpec | None, cuda_override: CudaTarget | None
                 ) -> tuple[CudaTarget, tuple[str, ...], bool | None]:
    """The ``__cuda`` of the solve (a version, or none), notes explaining the choice, and whether
    the env needs a GPU (``--cuda``: yes, ``--no-cuda``: no, else :func:`infer_cuda`'s
    ``gpu_required``, which is also True for GPU specs naming no CUDA, e.g. ROCm)."""
    if cuda_override == NO_CUDA and spec is not None:
        _refuse_no_cuda_for_a_cuda_pin(spec)
    if cuda_override is not None:
        if cuda_override.kind == "detect":
            raise ValueError("a build's __cuda is explicit: a version or none, never detected")
        return cuda_override, ((f"CUDA {cuda_override} (--cuda)",) if cuda_override
                               else ("no CUDA (--no-cuda)",)), bool(cuda_override)
    if spec is None:
        return NO_CUDA, (), None

    req = infer_cuda(spec)
    evidence = f" from {'; '.join(req.evidence[:2])}" if req.evidence else ""
    if req.cuda:
        note = f"CUDA {req.cuda} inferred{evidence}"
        if req.ambiguous and len(req.candidates) > 1:
            note += f" (candidates {', '.join(req.candidates)}; pass --cuda X.Y to choose)"
        return CudaTarget.of(req.cuda), (note,), req.gpu_required
    if req.gpu_required and req.candidates:
        best = max(req.candidates, key=version_key)
        return CudaTarget.of(best), (f"CUDA {best} chosen among {', '.join(req.candidates)}"
                                     f"{evidence}; pass --cuda X.Y to choose another",), True
    if req.gpu_required:
        return NO_CUDA, (f"the spec needs a GPU{evidence} but names no CUDA version: building "
                         "without __cuda; pass --cuda X.Y for CUDA builds",), True
    return NO_CUDA, (), req.gpu_required


def _refuse_no_cuda_for_a_cuda_pin(spec: EnvSpec) -> None:
    """``--no-cuda`` on a spec that pins its CUDA (``cuda-version=12.4``) would install the pin
    with CPU builds around it: a contradiction worth an error rather than a surprise."""
    req = infer_cuda(spec)
    if not req.cuda or req.ambiguous or not req.evidence:
        return
    pin = req.evidence[0].lstrip("- ").strip()
    line = next((f":{spec.conda_lines[i]}" for i, entry in enumerate(spec.conda)
                 if entry.strip() == pin and i < len(spec.conda_lines)), "")
    raise InvalidInput(f"--no-cuda: {spec.source or '<environment.yml>'}{line} pins CUDA "
                       f"{req.cuda} ('{pin}'), which a build without __cuda contradicts; drop "
                       "--no-cuda, or remove that line for a CPU build")


def build_key(*, name: str, content: dict[str, object], platform: str, channels: Sequence[str],
              channel_priority: str, cuda: CudaTarget) -> str:
    # "" for no __cuda: the spelling keys had before CudaTarget, so existing builds keep theirs.
    blob = json.dumps({"schema": KEY_SCHEMA, "name": name, "content": content,
                       "platform": platform, "channels": list(channels),
                       "channel_priority": channel_priority, "cuda": cuda.version or ""},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def cuda_of_packages(packages: Sequence[LockedPackage]) -> CudaTarget:
    """The CUDA an exact package set is built for; none when no package needs ``__cuda``.

    Only a dependency on ``__cuda`` makes a package a CUDA build (conda-forge's CUDA variants
    have one; their CPU builds do not): a ``cuda-version`` package alone only constrains
    ``__cuda`` where there is one, so a CPU build of a spec pinning ``cuda-version`` needs no
    GPU.  Given a CUDA build, the version is the ``cuda-version`` package's, else the highest
    ``__cuda >=X.Y`` bound, else none (a bare ``__cuda`` names no version).  What a
    ``--from-lock`` build records instead of a solve's ``__cuda``."""

    if not any(_CUDA_DEP_NAME_RE.match(dep.strip()) for package in packages
               for dep in package.depends):
        return NO_CUDA
    for package in packages:
        if package.name == "cuda-version":
            return CudaTarget.of(".".join(package.version.split(".")[:2]))
    bounds = [m.group(1) for package in packages for dep in package.depends
              if (m := _CUDA_DEP_RE.match(dep.strip()))]
    return CudaTarget.of(max(bounds, key=version_key)) if bounds else NO_CUDA


def plan_build(spec: EnvSpec | None, site: SiteConfig, *, name: str | None = None,
               cuda_override: CudaTarget | None = None, from_lock: Path | None = None) -> BuildPlan:
    """Name, key, channels and CUDA of a build; validates the name (InvalidInput)."""
    if name is not None:
        try:
            name = EnvName.of(name)
        except InvalidInput as exc:
            raise InvalidInput(f"--name {name!r}: {exc}") from None
    chosen = name if name is not None else (spec.name if spec is not None else None)
    if not chosen:
        if spec is None:
            raise InvalidInput(f"--from-lock {from_lock}: a lockfile names no env; pass "
                               "--name NAME")
        raise InvalidInput(f"{spec.source or '<environment.yml>'}: no 'name:' in the file; "
                           "pass --name NAME")
    chosen = EnvName.of(chosen)
    check_env_name(site, chosen)
    platform = current_platform()
    if from_lock is not None:
        try:
            lock_digest = hashlib.sha256(Path(from_lock).read_bytes()).hexdigest()
        except OSError as exc:
            raise InvalidInput(f"{from_lock}: cannot read lockfile ({exc.strerror})") from None
        content: dict[str, object] = {"lock": lock_digest,
                                      "pip": spec.normalized()["pip"] if spec else None,
                                      "variables": spec.normalized()["variables"] if spec else None}
        cuda = cuda_override or NO_CUDA
        notes: tuple[str, ...] = ()
        # The locked packages decide (see _packages_for); only --cuda X says more up front.
        gpu_required: bool | None = True if cuda_override else None
        channels: tuple[str, ...] = ()
    else:
        if spec is None:
            raise InvalidInput("nothing to build: give an environment file or --from-lock LOCK")
        content = spec.normalized()
        channels = resolve_channels(spec, site)
        cuda, notes, gpu_required = resolve_cuda(spec, cuda_override)
    key = build_key(name=chosen, content=content, platform=platform, channels=channels,
                    channel_priority=site.channel_priority, cuda=cuda)
    return BuildPlan(name=chosen, key=key, platform=platform, channels=channels,
                     channel_priority=site.channel_priority, cuda=cuda,
                     cuda_override=cuda_override, notes=notes, gpu_required=gpu_required)
