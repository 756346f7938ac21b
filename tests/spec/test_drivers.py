"""The NVIDIA driver table at its boundaries (shared/notes/cuda-drivers.md)."""

from __future__ import annotations

import pytest

from hpcenv.errors import InvalidInput
from hpcenv.spec.drivers import (
    cuda_satisfies,
    driver_problem,
    driver_supports,
    driver_table_note,
    known_cuda_versions,
    max_cuda_for_driver,
    max_cuda_problem,
    min_driver,
    newer_than_table,
    normalize_cuda,
)


@pytest.mark.parametrize(("cuda", "driver"), [
    ("11.8", "520.61.05"), ("12.0", "525.60.13"), ("12.1", "530.30.02"), ("12.2", "535.54.03"),
    ("12.3", "545.23.06"), ("12.4", "550.54.14"), ("12.5", "555.42.02"), ("12.6", "560.28.03"),
    ("12.8", "570.26"), ("12.9", "575.51.03"), ("13.0", "580.65.06"), ("11.0", "450.51.05"),
    ("10.2", "440.33"),
])
def test_min_driver_strict_is_the_ga_minimum(cuda: str, driver: str) -> None:
    assert min_driver(cuda) == driver
    assert min_driver(cuda, "strict") == driver


def test_strict_boundary_is_exact_and_numeric_per_component() -> None:
    assert not driver_supports("550.54.13", "12.4")
    assert driver_supports("550.54.14", "12.4")
    assert driver_supports("550.54.15", "12.4")
    # 570.26 is 570.26.0: numerically above 570.9, below 570.124.06.
    assert driver_supports("570.26", "12.8")
    assert not driver_supports("570.9", "12.8")
    assert driver_supports("570.124.06", "12.8")
    assert not driver_supports("569.99.99", "12.8")


@pytest.mark.parametrize(("driver", "cuda"), [
    ("550.54.13", "12.3"), ("550.54.14", "12.4"), ("570.25.99", "12.6"), ("570.26", "12.8"),
    ("575.51.03", "12.9"), ("580.65.05", "12.9"), ("580.65.06", "13.0"), ("590.44.01", "13.1"),
    ("595.45.04", "13.2"), ("610.43.02", "13.3"), ("999.1", "13.3"), ("396.26", "9.2"),
    ("520.61.05", "11.8"), ("525.60.12", "11.8"), ("525.60.13", "12.0"), ("410.48", "10.0"),
    ("450.51.05", "11.0"), ("560.35.05", "12.6"),
])
def test_max_cuda_for_driver_is_newest_ga_at_or_below(driver: str, cuda: str) -> None:
    assert max_cuda_for_driver(driver) == cuda


def test_max_cuda_for_ancient_driver_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="older than every CUDA toolkit"):
        max_cuda_for_driver("340.1")


def test_minor_compat_floors() -> None:
    assert min_driver("12.8", "minor") == "525.60.13"
    assert min_driver("11.8", "minor") == "450.80.02"
    assert min_driver("13.0", "minor") == "580"
    # 11.0 shipped before the 11.x floor: its own GA driver stays the minimum.
    assert min_driver("11.0", "minor") == "450.51.05"
    # CUDA 10 has no minor-version compatibility.
    assert min_driver("10.2", "minor") == "440.33"


def test_minor_compat_runs_newer_minor_on_older_driver_of_same_major() -> None:
    assert driver_supports("525.60.13", "12.8", "minor")
    assert not driver_supports("525.60.13", "12.8", "strict")
    assert not driver_supports("525.60.12", "12.8", "minor")
    assert driver_supports("450.80.02", "11.8", "minor")
    assert not driver_supports("450.80.01", "11.8", "minor")


def test_no_cross_major_compat() -> None:
    for driver in ("525.60.13", "575.51.03", "579.99"):
        assert not driver_supports(driver, "13.0", "minor")
        assert not driver_supports(driver, "13.0", "strict")
    assert driver_supports("580.0.1", "13.0", "minor")
    assert not driver_supports("520.61.05", "12.0", "minor")


def test_major_only_requirement_means_any_minor_of_it() -> None:
    assert normalize_cuda("12") == "12.0"
    assert min_driver("12") == "525.60.13"
    assert driver_supports("525.60.13", "12")
    assert not driver_supports("520.61.05", "12")
    assert min_driver("11") == "450.51.05"


def test_patch_versions_read_as_their_minor() -> None:
    assert normalize_cuda("12.4.1") == "12.4"
    assert min_driver("11.8.0") == "520.61.05"


@pytest.mark.parametrize("cuda", ["12.7", "99.1", "14", "9.3", "6.5", "abc", "12.x", ""])
def test_unknown_cuda_versions_are_invalid_input_listing_known_ones(cuda: str) -> None:
    with pytest.raises(InvalidInput) as info:
        min_driver(cuda)
    assert repr(cuda) in str(info.value)
    if cuda in ("12.7", "99.1", "14", "9.3"):
        assert "12.6, 12.8" in str(info.value)


@pytest.mark.parametrize("driver", ["", "550.x", "v550.54", "550..1", "-1"])
def test_bad_driver_strings_are_invalid_input(driver: str) -> None:
    with pytest.raises(InvalidInput, match="invalid NVIDIA driver version"):
        driver_supports(driver, "12.4")


def test_unknown_compat_policy_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="strict"):
        min_driver("12.4", "loose")  # type: ignore[arg-type]


def test_cuda_satisfies_strict_and_minor() -> None:
    assert cuda_satisfies("12.8", "12.4")
    assert cuda_satisfies("12.4", "12.4")
    assert not cuda_satisfies("12.4", "12.8")
    assert cuda_satisfies("12.4", "12.8", "minor")
    assert cuda_satisfies("12.0", "12.9", "minor")
    assert not cuda_satisfies("12.9", "13.0", "minor")
    assert cuda_satisfies("12.9", "11.8")
    assert cuda_satisfies("12.4", "12")
    assert not cuda_satisfies("11.8", "12")
    # An 11.0 node (GA driver below the 11.x compat floor) cannot run 11.8 even under minor.
    assert not cuda_satisfies("11.0", "11.8", "minor")
    assert cuda_satisfies("11.1", "11.8", "minor")


def test_table_is_ordered_and_has_no_12_7() -> None:
    known = known_cuda_versions()
    assert "12.7" not in known
    assert known[0] == "7.0" and known[-1] == "13.5"
    # Every 13.x minor released so far (13.4 and 13.5 without a driver in the release notes).
    assert [v for v in known if v.startswith("13.")] == [f"13.{i}" for i in range(6)]
    with_minimum = [v for v in known if driver_table_note(v) is None]
    assert with_minimum[-1] == "13.3"
    # A newer toolkit never needs an older driver.
    assert all(max_cuda_for_driver(min_driver(v)) == v for v in with_minimum)


@pytest.mark.parametrize(("cuda", "driver"), [
    ("13.1", "590.44.01"), ("13.2", "595.45.04"), ("13.3", "610.43.02"), ("9.2", "396.26"),
    ("8.0", "367.48"),
])
def test_new_and_old_rows_of_the_table(cuda: str, driver: str) -> None:
    assert min_driver(cuda) == driver
    assert driver_supports(driver, cuda)
    assert driver_table_note(cuda) is None
    # The case: a 13.1 env routes to a partition described by its driver.
    assert driver_supports("590.44.01", "13.1")
    assert not driver_supports("580.95.05", "13.1")
    assert driver_supports("580.95.05", "13.1", "minor")


# --- versions the table does not know -------------------------------------------------------

@pytest.mark.parametrize(("available", "needed", "compat", "ok"), [
    # Newer than the table on the available side: "everything up to X.Y", by number.
    ("13.1", "13.0", "strict", True),
    ("13.1", "12.4", "strict", True),
    ("14.0", "13.0", "strict", True),
    ("13.1", "13.1", "strict", True),       # a needed release newer than the table, same number
    ("13.1", "13.2", "strict", False),
    ("13.1", "13.2", "minor", True),        # same family above the 13.x floor (580)
    ("14.0", "14.1", "minor", False),       # family floor unknown: no minor compat assumed
    ("13.0", "13.5", "minor", True),
    ("12.9", "13.1", "minor", False),       # never across majors
    # A never-released label on the available side is a capability too.
    ("12.7", "12.6", "strict", True),
    ("12.7", "12.8", "strict", False),
    ("12.7", "12.8", "minor", True),
    ("12.10", "12.9", "strict", True),
    ("12", "12", "strict", True),           # a major alone (node feature cuda12) reads as X.0
    ("9.2", "10.0", "minor", False),        # older than the table: runs nothing it knows
    ("9.2", "11.8", "strict", False),
])
def test_cuda_satisfies_reads_unknown_available_versions_by_number(
        available: str, needed: str, compat: str, ok: bool) -> None:
    assert cuda_satisfies(available, needed, compat) is ok  # type: ignore[arg-type]


@pytest.mark.parametrize("needed", ["12.7", "11.9", "9.3", "10.3"])
def test_needed_cuda_that_was_never_released_is_an_error_even_against_newer_nodes(
        needed: str) -> None:
    with pytest.raises(InvalidInput, match=rf"unknown CUDA version '{needed}'; known versions: "):
        cuda_satisfies("13.1", needed)


@pytest.mark.parametrize("bad", ["", "abc", "12.x", "v12.4", "12.4-beta", "12..4"])
def test_malformed_versions_are_errors_on_either_side(bad: str) -> None:
    with pytest.raises(InvalidInput, match="invalid CUDA version"):
        cuda_satisfies(bad, "12.4")
    with pytest.raises(InvalidInput, match="invalid CUDA version"):
        cuda_satisfies("12.4", bad)


def test_releases_without_a_known_minimum_degrade_to_the_family_floor_with_a_note() -> None:
    assert newer_than_table("13.6") and newer_than_table("14") and not newer_than_table("13.5")
    assert not newer_than_table("12.10")
    # Past the table, or listed without a driver (13.4, 13.5): the 13.x floor, either policy.
    for cuda in ("13.4", "13.5", "13.6", "13.12"):
        assert min_driver(cuda) == min_driver(cuda, "minor") == "580"
        note = driver_table_note(cuda)
        assert note is not None and "assuming the 13.x minor-version-compatibility floor, " \
            "driver 580" in note
        assert driver_supports("580.65.06", cuda)
        assert not driver_supports("575.51.03", cuda)
    assert "newer than hpcenv's driver table" in (driver_table_note("13.6") or "")
    assert "no minimum driver in NVIDIA's release notes" in (driver_table_note("13.4") or "")
    assert driver_table_note("13.3") is None and driver_table_note("12") is None
    # An unknown family has no floor: its minimum driver cannot be guessed.
    with pytest.raises(InvalidInput, match=r"CUDA '14.0' is newer than hpcenv's driver table"):
        min_driver("14.0", "minor")
    assert driver_table_note("14.0") is None


@pytest.mark.parametrize(("value", "problem"), [
    ("12.8", None),
    ("13.0", None),
    ("10.0", None),
    ("13.1", None),
    ("13.6", None),                 # newer than the table: accepted
    ("14.0", None),
    ("12.7", "CUDA 12.7 was never released"),
    ("12.10", "CUDA 12.10 was never released"),
    ("9.2", None),
    ("6.5", "CUDA 6.5 is older than every toolkit hpcenv knows (7.0)"),
    ("12", "'12' is not a CUDA version"),
    ("12.4.1", "'12.4.1' is not a CUDA version"),
    ("twelve", "'twelve' is not a CUDA version"),
])
def test_max_cuda_problem(value: str, problem: str | None) -> None:
    found = max_cuda_problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


@pytest.mark.parametrize(("value", "problem"), [
    ("550.54.14", None),
    ("570.26", None),
    ("999.1", None),                # newer than every GA minimum: supports the newest known
    ("410.48", None),
    ("410.47", None),               # runs CUDA 9.2
    ("340.1", "NVIDIA driver 340.1 is older than every CUDA toolkit"),
    ("latest", "'latest' is not a driver version"),
    ("550", "'550' is not a driver version"),
    ("550.54.14.1", "'550.54.14.1' is not a driver version"),
])
def test_driver_problem(value: str, problem: str | None) -> None:
    found = driver_problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found


def test_cuda_satisfies_agrees_with_the_driver_table_for_every_known_pair() -> None:
    # Reading the available side by number must not change any verdict the table can give.
    needed = [*known_cuda_versions(), "10", "11", "12", "13"]
    for available in (v for v in known_cuda_versions() if driver_table_note(v) is None):
        driver = min_driver(available, "strict")
        for cuda in needed:
            for compat in ("strict", "minor"):
                assert cuda_satisfies(available, cuda, compat) == driver_supports(
                    driver, cuda, compat), (available, cuda, compat)
