"""The engine protocol: what the builder needs from a conda solver/installer.

An engine solves match specs into exact packages (:class:`LockedPackage`), installs exact packages
into a prefix with a shared package cache.  Lockfiles are :mod:`hpcenv.engine.lockfile`'s job.

CUDA semantics of :meth:`Engine.solve` (the ``__cuda`` virtual package), by
:class:`~hpcenv.spec.cuda_target.CudaTarget`:

* a version ``12.4`` -> ``__cuda=12.4`` whatever the machine has (``CONDA_OVERRIDE_CUDA=12.4``), so GPU
  builds are chosen on a GPU-less login node;
* none -> no ``__cuda`` at all (CPU builds);
* detect -> whatever the machine detects.

Nothing here imports rattler; see :mod:`hpcenv.engine.rattler_engine`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.records import JsonRecord
from hpcenv.spec.cuda_target import CudaTarget

ChannelPriority = Literal["strict", "flexible"]
# File name endings of conda package archives (in channels and package caches).
ARCHIVE_SUFFIXES = (".conda", ".tar.bz2")


class ChannelUnreachable(HpcenvError):
    """A channel (or a package URL) could not be fetched: network down, host unknown,
    connection refused.  Not the spec's fault, so callers do not blame the spec."""


class ChannelMissing(InvalidInput):
    """A local (``file://``) channel or one of its subdirs does not exist or is not indexed."""


CHANNEL_ERRORS = (ChannelUnreachable, ChannelMissing)


class EngineErrorChain(Exception):
    """The engine's full error text ("Caused by: ..." chain), kept as the ``__cause__`` of a
    classified one-line error so it shows only in a traceback (``-v``)."""


@dataclass(frozen=True)
class LockedPackage(JsonRecord):
    """One exact conda package: everything needed to install it without a solve."""

    name: str
    version: str
    build: str
    build_number: int
    subdir: str
    url: str
    channel: str
    file_name: str
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None
    depends: tuple[str, ...] = ()
    constrains: tuple[str, ...] = ()
    noarch: str | None = None          # "python" | "generic" | None
    timestamp: int | None = None       # milliseconds since the epoch, as in repodata
    license: str | None = None

    @property
    def explicit_line(self) -> str:
        """The ``@EXPLICIT`` line conda understands: ``URL#md5`` (``URL#sha256:HEX`` without md5)."""
        if self.md5:
            return f"{self.url}#{self.md5}"
        if self.sha256:
            return f"{self.url}#sha256:{self.sha256}"
        return self.url

    @property
    def spec(self) -> str:
        """An exact match spec for this package (``name ==version build``)."""
        return f"{self.name} =={self.version} {self.build}"


class Engine(Protocol):
    """A conda engine.  Implementations: rattler (embedded), conda/mamba/micromamba CLI."""

    name: str

    def solve(self, specs: Sequence[str], *, channels: Sequence[str], platform: str,
              cuda: CudaTarget, channel_priority: ChannelPriority = "strict") -> list[LockedPackage]:
        """Solve ``specs`` against ``channels`` for ``platform`` (+ noarch); see module doc for ``cuda``."""
        ...

    def install(self, prefix: Path, packages: Sequence[LockedPackage], *, pkgs_dir: Path) -> None:
        """Create ``prefix`` with exactly ``packages``, linking from the package cache ``pkgs_dir``."""
        ...



def current_platform() -> str:
    """The conda subdir of this machine (``linux-64``, ``linux-aarch64``, ``osx-arm64``...)."""
    # os.uname, not platform.machine (the same value): the platform module costs every
    # command that plans a build ~1 ms to import.
    machine = os.uname().machine.lower()
    arch = {"x86_64": "64", "amd64": "64", "aarch64": "aarch64", "arm64": "arm64",
            "ppc64le": "ppc64le", "s390x": "s390x", "i686": "32", "i386": "32"}.get(machine, machine)
    system = {"linux": "linux", "darwin": "osx", "win32": "win"}.get(sys.platform, sys.platform)
    if system == "osx" and arch == "aarch64":
        arch = "arm64"
    return f"{system}-{arch}"


def channel_url(channel: str) -> str:
    """Normalise a channel as written in a site or spec: absolute paths become ``file://`` URLs.

    Names (``conda-forge``) and URLs are passed through; the engine resolves names itself.
    """
    channel = channel.strip().rstrip("/")
    if channel.startswith("~"):
        channel = os.path.expanduser(channel)
    if channel.startswith("/"):
        return Path(channel).resolve().as_uri()
    return channel
