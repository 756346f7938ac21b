"""NVIDIA driver rules: which Linux driver runs which CUDA runtime.

Source: NVIDIA's CUDA Toolkit release notes (the "CUDA Toolkit and Corresponding Driver Versions"
table for Linux x86_64, up to the 13.x releases) and the CUDA compatibility guide.

Two policies a site can choose (``cuda_compat`` in the site config):

- ``strict``: the driver must be at least the GA minimum of the exact toolkit (safe default);
- ``minor``: minor-version compatibility, an app built for a newer 11.x/12.x/13.x runtime runs
  on any driver of the same major family above that family's floor (not for new PTX JIT
  features).  There is no cross-major compatibility: 13.0 never runs on a 12.x driver.

CUDA versions are ``"X.Y"``; a major alone (``"12"``) means "any 12.x" and uses 12.0's
minimum.  ``"X.Y.Z"`` is read as ``X.Y`` (the GA minimum is per minor release).

Versions the table does not know are read by which side they are on:

- *available* CUDA (a partition's ``max_cuda``, a node feature ``cuda13.1``) is a capability:
  any well-formed version means "runs everything up to X.Y", compared by number, so a driver
  newer than this table (or a never-released label such as 12.7 on a node) routes sensibly
  instead of failing every job;
- *needed* CUDA (what an env requires) must be a real release: one of the table, or newer than
  its newest entry.  A version inside the table's range that NVIDIA never shipped (12.7) is an
  error.  A release whose own minimum driver is not in the table (13.4 onwards: NVIDIA no
  longer ships the driver with the toolkit, and newer releases than hpcenv knows) degrades
  to its major family's minor-compatibility floor, under either policy, and
  :func:`driver_table_note` says so; only a release of an unknown major family (14.x) has no
  minimum at all.
"""

from __future__ import annotations

import re
from typing import Literal

from hpcenv.errors import InvalidInput

CudaCompat = Literal["strict", "minor"]

# GA minimum Linux driver per toolkit release; None where the release notes give none (from
# 13.4 the toolkit no longer bundles a driver).  12.7 was never released.
_GA_MIN_DRIVER: dict[str, str | None] = {
    "7.0": "346.46",
    "7.5": "352.31",
    "8.0": "367.48",
    "9.0": "384.81",
    "9.1": "390.46",
    "9.2": "396.26",
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
    "13.1": "590.44.01",
    "13.2": "595.45.04",
    "13.3": "610.43.02",
    "13.4": None,
    "13.5": None,
}

# Minor-version compatibility floor per major family; CUDA 10 and older had none.
_MINOR_COMPAT_FLOOR: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580"}

_DRIVER_RE = re.compile(r"\d+(\.\d+)*")
_CUDA_RE = re.compile(r"(\d+)(?:\.(\d+))?(?:\.\d+)?")
# How admins write versions in site configs: nvidia-smi's "550.54.14" / "570.26" and "12.8".
_WRITTEN_DRIVER_RE = re.compile(r"\d{2,4}\.\d{1,3}(\.\d{1,3})?")
_WRITTEN_CUDA_RE = re.compile(r"\d{1,2}\.\d{1,2}")


def version_key(version: str) -> tuple[int, ...]:
    """Numeric sort key of a dotted version: ``"570.124.06"`` -> ``(570, 124, 6)``."""
    return tuple(int(part) for part in version.split("."))


def _driver_key(driver: str) -> tuple[int, ...]:
    driver = driver.strip()
    if not _DRIVER_RE.fullmatch(driver):
        raise InvalidInput(f"invalid NVIDIA driver version {driver!r}; expected digits and dots "
                           "such as '550.54.14' (see nvidia-smi)")
    key = version_key(driver)
    # Pad so "580" compares as 580.0.0 against "580.65.06".
    return key + (0,) * (3 - len(key)) if len(key) < 3 else key


def known_cuda_versions() -> tuple[str, ...]:
    """Every toolkit release in the table, oldest first."""
    return tuple(sorted(_GA_MIN_DRIVER, key=version_key))


def parse_cuda(cuda: str) -> tuple[int, int]:
    """``(major, minor)`` of a well-formed CUDA version, known or not: ``"12.4.1"`` -> (12, 4),
    ``"12"`` -> (12, 0).  InvalidInput for anything that is not digits and dots."""
    match = _CUDA_RE.fullmatch(str(cuda).strip())
    if match is None:
        raise InvalidInput(f"invalid CUDA version {cuda!r}; expected 'X.Y' or a major such as "
                           "'12'")
    return int(match.group(1)), int(match.group(2) or 0)


def _newest_known() -> tuple[int, int]:
    return parse_cuda(known_cuda_versions()[-1])


def newer_than_table(cuda: str) -> bool:
    """True for a well-formed version above the newest release this table knows."""
    return parse_cuda(cuda) > _newest_known()


def normalize_cuda(cuda: str) -> str:
    """Table key for a CUDA version: ``"12.4.1"`` -> ``"12.4"``, ``"12"`` -> ``"12.0"``.

    Raises InvalidInput for versions NVIDIA never released (``"12.7"``) or that the table does
    not know (``"99.1"``), listing the known ones.
    """
    major, minor = parse_cuda(cuda)
    if "." not in str(cuda):
        # A major alone means "any X.y": its lowest minor decides the minimum driver.
        candidates = [v for v in _GA_MIN_DRIVER if v.split(".")[0] == str(major)]
        if candidates:
            return min(candidates, key=version_key)
    elif f"{major}.{minor}" in _GA_MIN_DRIVER:
        return f"{major}.{minor}"
    known = ", ".join(known_cuda_versions())
    if newer_than_table(cuda):
        raise InvalidInput(f"CUDA {cuda!r} is newer than hpcenv's driver table (known versions: "
                           f"{known}) and of a CUDA family it has no driver floor for, so the "
                           "driver it needs is unknown; upgrade hpcenv, or describe GPU "
                           "partitions by max_cuda or node_feature instead of driver")
    raise InvalidInput(f"unknown CUDA version {cuda!r}; known versions: {known}")


def _needed_key(needed: str) -> tuple[int, int]:
    """Numeric key of a needed CUDA: a table release, or a version newer than the table."""
    if newer_than_table(needed):
        return parse_cuda(needed)
    return parse_cuda(normalize_cuda(needed))


def _check_compat(compat: str) -> None:
    if compat not in ("strict", "minor"):
        raise InvalidInput(f"unknown CUDA compat policy {compat!r}; use 'strict' or 'minor'")


def _family_floor(cuda: str) -> str | None:
    """The minor-compatibility floor standing in for a release whose own minimum is unknown
    (past the table, or listed without one); None when it is known or has no family floor."""
    if newer_than_table(cuda):
        return _MINOR_COMPAT_FLOOR.get(parse_cuda(cuda)[0])
    key = normalize_cuda(cuda)
    return _MINOR_COMPAT_FLOOR.get(parse_cuda(key)[0]) if _GA_MIN_DRIVER[key] is None else None


def driver_table_note(cuda: str) -> str | None:
    """Why the driver minimum of ``cuda`` is an estimate ("CUDA 13.6 is newer than ..."), or
    None when the table gives it.  Callers show it as a warning next to their verdict."""
    floor = _family_floor(cuda)
    if floor is None:
        return None
    major = parse_cuda(cuda)[0]
    where = ("is newer than hpcenv's driver table" if newer_than_table(cuda)
             else "has no minimum driver in NVIDIA's release notes")
    return (f"CUDA {cuda} {where}: assuming the {major}.x minor-version-compatibility floor, "
            f"driver {floor}; features new in {cuda} may need a newer driver")


def min_driver(cuda: str, compat: CudaCompat = "strict") -> str:
    """Minimum Linux driver that runs a ``cuda`` runtime under the given compat policy.

    A release whose own minimum the table lacks (newer than the table, or 13.4+) gets its
    family's floor under either policy (13.x: 580; see :func:`driver_table_note`); only a
    release of an unknown family (14.x) raises InvalidInput.
    """
    _check_compat(compat)
    floor = _family_floor(cuda)
    if floor is not None:
        return floor
    key = normalize_cuda(cuda)
    ga = _GA_MIN_DRIVER[key]
    assert ga is not None  # _family_floor covers releases without a minimum
    if compat == "strict":
        return ga
    family = _MINOR_COMPAT_FLOOR.get(int(key.split(".")[0]))
    if family is None:
        return ga
    # 11.0's GA driver predates the 11.x compat floor, so the lower of the two applies.
    return min(ga, family, key=_driver_key)


def max_cuda_for_driver(driver: str) -> str:
    """Newest toolkit whose GA minimum driver is <= ``driver`` (``"550.54.14"`` -> ``"12.4"``)."""
    have = _driver_key(driver)
    supported = [v for v, need in _GA_MIN_DRIVER.items()
                 if need is not None and _driver_key(need) <= have]
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

    ``available_max_cuda`` may be any well-formed version (see the module notes): everything up
    to it runs.  Beyond that, ``minor`` lets a newer minor of the same major run when the nodes'
    driver (at least the GA minimum of the newest known release <= available) reaches the
    family's floor.  Raises InvalidInput only for malformed versions and for a ``needed`` that
    is not a release (see :func:`normalize_cuda`).
    """
    _check_compat(compat)
    have = parse_cuda(available_max_cuda)
    need = _needed_key(needed)
    if need <= have:
        return True
    # Without its own minimum driver, a release is judged by its family's floor (as in
    # min_driver), whatever the policy.
    if compat == "strict" and _family_floor(needed) is None:
        return False
    floor = _MINOR_COMPAT_FLOOR.get(need[0])
    known = [v for v in known_cuda_versions() if parse_cuda(v) <= have]
    if floor is None or not known:
        return False
    # A release listed without a minimum is run by a driver of its own family, at its floor.
    nodes_driver = _GA_MIN_DRIVER[known[-1]] or _MINOR_COMPAT_FLOOR.get(parse_cuda(known[-1])[0])
    return nodes_driver is not None and _driver_key(nodes_driver) >= _driver_key(floor)


# --------------------------------------------------------------------------- site config values

def max_cuda_problem(cuda: str) -> str | None:
    """Why ``cuda`` cannot be a partition's ``max_cuda`` ("problem; fix"), or None if it can.

    Accepted: ``"X.Y"`` of a release in the table or newer than its newest (a driver newer than
    hpcenv); refused: other spellings, releases NVIDIA never shipped (12.7) and versions older
    than the table.
    """
    if not _WRITTEN_CUDA_RE.fullmatch(cuda):
        return f"{cuda!r} is not a CUDA version; write MAJOR.MINOR in quotes, e.g. \"12.8\""
    known = known_cuda_versions()
    if cuda in known or newer_than_table(cuda):
        return None
    if parse_cuda(cuda) < parse_cuda(known[0]):
        return (f"CUDA {cuda} is older than every toolkit hpcenv knows ({known[0]}); treat the "
                "partition as a CPU partition or upgrade its driver")
    return (f"CUDA {cuda} was never released (known versions: {', '.join(known)}); write the "
            "newest CUDA release the nodes' driver supports (nvidia-smi shows it)")


def driver_problem(driver: str) -> str | None:
    """Why ``driver`` cannot be a partition's ``driver`` ("problem; fix"), or None if it can."""
    if not _WRITTEN_DRIVER_RE.fullmatch(driver):
        return (f"{driver!r} is not a driver version; quote the version nvidia-smi shows, "
                "e.g. \"550.54.14\"")
    try:
        max_cuda_for_driver(driver)
    except InvalidInput as exc:
        return str(exc)
    return None
