"""The ``__cuda`` a solve uses, as one value carried from the spec to the engine, the registry
record and routing: a CUDA version, none (CPU builds), or the machine's own (detect).

Parsed once, where it enters (``--cuda X.Y``, ``--no-cuda``, CUDA inference, a record's JSON), and
never re-encoded on the way: the layers below read :attr:`CudaTarget.version`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from hpcenv.errors import InvalidInput
from hpcenv.records import Codec
from hpcenv.spec.drivers import known_cuda_versions, max_cuda_problem, newer_than_table

CudaKind = Literal["version", "none", "detect"]
_PATCHED = re.compile(r"\d{1,2}\.\d{1,2}\.\d{1,3}")


@dataclass(frozen=True)
class CudaTarget:
    """``version``: ``__cuda=X.Y`` whatever the machine has (GPU builds on a GPU-less login
    node); ``none``: no ``__cuda`` (CPU builds); ``detect``: whatever the machine detects."""

    kind: CudaKind
    version: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == "version") != (self.version is not None):
            raise ValueError(f"CudaTarget({self.kind!r}, {self.version!r}): a version goes with "
                             "kind 'version' only")

    @classmethod
    def of(cls, version: str) -> CudaTarget:
        """A version already known to be well-formed (inferred, recorded, solved)."""
        return cls("version", version)

    @classmethod
    def parse(cls, text: str, *, option: str = "--cuda") -> CudaTarget:
        """A CUDA version a user asked for: a released CUDA (MAJOR.MINOR[.PATCH]), or one newer than
        hpcenv's driver table (see :meth:`is_newer_than_table`); InvalidInput otherwise."""
        text = text.strip()
        # MAJOR.MINOR.PATCH is a CUDA version too (__cuda=12.4.1); its release is MAJOR.MINOR.
        release = text.rsplit(".", 1)[0] if _PATCHED.fullmatch(text) else text
        problem = max_cuda_problem(release)
        if problem is not None:
            raise InvalidInput(f"{option} {text}: {problem}; or --no-cuda for CPU builds")
        return cls.of(text)

    @property
    def is_newer_than_table(self) -> bool:
        """True for a version after every release hpcenv's driver table knows: accepted (NVIDIA
        ships new releases), with a warning, since hpcenv cannot check it was released."""
        return self.version is not None and newer_than_table(self.version)

    def warning(self) -> str | None:
        if not self.is_newer_than_table:
            return None
        return (f"CUDA {self.version} is newer than hpcenv's driver table (newest "
                f"{known_cuda_versions()[-1]}); building for it as asked")

    def __bool__(self) -> bool:
        """True when the solve sets ``__cuda`` to a version."""
        return self.kind == "version"

    def __str__(self) -> str:
        return self.version if self.version is not None else f"({self.kind})"


NO_CUDA = CudaTarget("none")
DETECT_CUDA = CudaTarget("detect")

# How records store a build's CUDA: "12.4", or null for none.
CUDA_JSON = Codec(encode=lambda target: target.version,
                  decode=lambda value: CudaTarget.of(value) if value else NO_CUDA)
# How records store what was asked: null (inferred), "" (--no-cuda) or "12.4" (--cuda 12.4).
CUDA_OVERRIDE_JSON = Codec(
    encode=lambda target: None if target is None else target.version or "",
    decode=lambda value: None if value is None else CudaTarget.of(value) if value else NO_CUDA)
