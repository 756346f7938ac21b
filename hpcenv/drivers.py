"""NVIDIA driver rules: which Linux driver runs which CUDA runtime.

Source: NVIDIA CUDA Toolkit release notes ("CUDA Toolkit and Corresponding Driver Versions",
Linux x86_64) and the CUDA compatibility guide, as recorded in shared/notes/cuda-drivers.md.

Two policies a site can choose (``cuda_compat`` in the site config):

- ``strict``: the driver must be at least the GA minimum of the exact toolkit (safe default);
- ``minor``: minor-version compatibility, an app built for a newer 11.x/12.x/13.x runtime runs
  on any driver of the same major family above that family's floor (not for new PTX JIT
  features).  There is no cross-major compatibility: 13.0 never runs on a 12.x driver.

CUDA versions are ``"X.Y"``; a major alone (``"12"``) means "any 12.x" and uses 12.0's
minimum.  ``"X.Y.Z"`` is read as ``X.Y`` (the GA minimum is per minor release).
"""

from __future__ import annotations

import re
from typing import Literal

from hpcenv.errors import InvalidInput

CudaCompat = Literal["strict", "minor"]

# GA minimum Linux driver per toolkit.  12.7 was never released.
_GA_MIN_DRIVER: dict[str, str] = {
    "10.0": "410.48",
    "10.1": "418.39",
    "10.2": "440.33",
    "11.0": "450.51.05",
    "11.1": "455.23",
    "11.2": "460.27.03",
    "11.3": "465.19.01",
    "11.4": "470.42.01",
    "11.5": "495.29.05",
    "11.6": "510.39.01",
    "11.7": "515.43.04",
    "11.8": "520.61.05",
    "12.0": "525.60.13",
    "12.1": "530.30.02",
    "12.2": "535.54.03",
    "12.3": "545.23.06",
    "12.4": "550.54.14",
    "12.5": "555.42.02",
    "12.6": "560.28.03",
    "12.8": "570.26",
    "12.9": "575.51.03",
    "13.0": "580.65.06",
}

# Minor-version compatibility floor per major family; CUDA 10 had none.
_MINOR_COMPAT_FLOOR: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580"}

_DRIVER_RE = re.compile(r"^\d+(\.\d+)*$")
_CUDA_RE = re.compile(r"^(\d+)(?:\.(\d+))?(?:\.\d+)?$")


def version_key(version: str) -> tuple[int, ...]:
    """Numeric sort key of a dotted version: ``"570.124.06"`` -> ``(570, 124, 6)``."""
    return tuple(int(part) for part in version.split("."))


def _driver_key(driver: str) -> tuple[int, ...]:
    driver = driver.strip()
    if not _DRIVER_RE.match(driver):
        raise InvalidInput(f"invalid NVIDIA driver version {driver!r}; expected digits and dots "
                           "such as '550.54.14' (see nvidia-smi)")
    key = version_key(driver)
    # Pad so "580" compares as 580.0.0 against "580.65.06".
    return key + (0,) * (3 - len(key)) if len(key) < 3 else key


def known_cuda_versions() -> tuple[str, ...]:
    """Every toolkit version in the table, oldest first."""
    return tuple(sorted(_GA_MIN_DRIVER, key=version_key))


def normalize_cuda(cuda: str) -> str:
    """Table key for a CUDA version: ``"12.4.1"`` -> ``"12.4"``, ``"12"`` -> ``"12.0"``.

    Raises InvalidInput for versions NVIDIA never released (``"12.7"``) or that the table does
    not know (``"99.1"``), listing the known ones.
    """
    match = _CUDA_RE.match(str(cuda).strip())
    if match is None:
        raise InvalidInput(f"invalid CUDA version {cuda!r}; expected 'X.Y' or a major such as "
                           "'12'")
    major, minor = match.group(1), match.group(2)
    if minor is None:
        # A major alone means "any X.y": its lowest minor decides the minimum driver.
        candidates = [v for v in _GA_MIN_DRIVER if v.split(".")[0] == major]
        if candidates:
            return min(candidates, key=version_key)
    else:
        key = f"{int(major)}.{int(minor)}"
        if key in _GA_MIN_DRIVER:
            return key
    raise InvalidInput(f"unknown CUDA version {cuda!r}; known versions: "
                       f"{', '.join(known_cuda_versions())}")


def min_driver(cuda: str, compat: CudaCompat = "strict") -> str:
    """Minimum Linux driver that runs a ``cuda`` runtime under the given compat policy."""
    key = normalize_cuda(cuda)
    ga = _GA_MIN_DRIVER[key]
    if compat == "strict":
        return ga
    if compat != "minor":
        raise InvalidInput(f"unknown CUDA compat policy {compat!r}; use 'strict' or 'minor'")
    floor = _MINOR_COMPAT_FLOOR.get(int(key.split(".")[0]))
    if floor is None:
        return ga
    # 11.0's GA driver predates the 11.x compat floor, so the lower of the two applies.
    return min(ga, floor, key=_driver_key)


def max_cuda_for_driver(driver: str) -> str:
    """Newest toolkit whose GA minimum driver is <= ``driver`` (``"550.54.14"`` -> ``"12.4"``)."""
    have = _driver_key(driver)
    supported = [v for v, need in _GA_MIN_DRIVER.items() if _driver_key(need) <= have]
    if not supported:
        oldest = known_cuda_versions()[0]
        raise InvalidInput(f"NVIDIA driver {driver} is older than every CUDA toolkit hpcenv knows "
                           f"(CUDA {oldest} needs {_GA_MIN_DRIVER[oldest]}); upgrade the driver")
    return max(supported, key=version_key)


def driver_supports(driver: str, cuda: str, compat: CudaCompat = "strict") -> bool:
    """True when a node with ``driver`` can run a ``cuda`` runtime under ``compat``."""
    return _driver_key(driver) >= _driver_key(min_driver(cuda, compat))


def cuda_satisfies(available_max_cuda: str, needed: str, compat: CudaCompat = "strict") -> bool:
    """True when nodes whose driver supports up to ``available_max_cuda`` can run ``needed``.

    Such nodes have at least that toolkit's GA minimum driver, so this is ``driver_supports``
    evaluated at that driver.
    """
    return driver_supports(min_driver(available_max_cuda, "strict"), needed, compat)
