"""The value types that cross layers: CudaTarget and EnvName, parsed once at the edge."""

from __future__ import annotations

import json

import pytest

from hpcenv.errors import InvalidInput
from hpcenv.records import to_json
from hpcenv.spec.cuda_target import (
    CUDA_JSON,
    CUDA_OVERRIDE_JSON,
    DETECT_CUDA,
    NO_CUDA,
    CudaTarget,
)
from hpcenv.spec.drivers import known_cuda_versions
from hpcenv.spec.names import EnvName


def test_cuda_target_parse_accepts_released_versions_and_refuses_others() -> None:
    assert CudaTarget.parse("12.4") == CudaTarget.of("12.4") and CudaTarget.parse("12.4")
    assert CudaTarget.parse("12.4.1").version == "12.4.1"  # a patch release of 12.4
    for text, fragment in (("12.7", "never released"), ("twelve", "not a CUDA version"),
                           ("12", "not a CUDA version"), ("12.7.1", "never released"),
                           ("12.4.1.0", "not a CUDA version")):
        with pytest.raises(InvalidInput, match=fragment) as err:
            CudaTarget.parse(text)
        assert str(err.value).startswith(f"--cuda {text}: ") and "--no-cuda" in str(err.value)


def test_cuda_target_newer_than_the_table_is_accepted_with_a_warning() -> None:
    newest = known_cuda_versions()[-1]
    major = int(newest.split(".")[0])
    future = CudaTarget.parse(f"{major + 1}.0")
    assert future.is_newer_than_table and "newer than hpcenv's driver table" in (
        future.warning() or "")
    assert CudaTarget.parse(newest).warning() is None


def test_cuda_target_kinds_and_truth() -> None:
    assert not NO_CUDA and not DETECT_CUDA and CudaTarget.of("11.8")
    assert NO_CUDA.version is None and DETECT_CUDA.kind == "detect"
    with pytest.raises(ValueError):
        CudaTarget("version")
    with pytest.raises(ValueError):
        CudaTarget("none", "12.4")


def test_cuda_record_spellings_round_trip() -> None:
    for target in (CudaTarget.of("12.4"), NO_CUDA):
        assert CUDA_JSON.decode(json.loads(json.dumps(CUDA_JSON.encode(target)))) == target
    assert CUDA_JSON.encode(NO_CUDA) is None
    for override, spelled in ((None, None), (NO_CUDA, ""), (CudaTarget.of("11.8"), "11.8")):
        assert CUDA_OVERRIDE_JSON.encode(override) == spelled
        assert CUDA_OVERRIDE_JSON.decode(spelled) == override


def test_env_name_is_parsed_once() -> None:
    name = EnvName.parse("llm-finetune")
    assert name == "llm-finetune" and EnvName.of(name) is name
    assert to_json({"name": name}) == {"name": "llm-finetune"}
    for bad in ("../etc", "", "-x", "a/b", "x" * 65):
        assert not EnvName.is_valid(bad)
        with pytest.raises(InvalidInput, match="invalid environment name"):
            EnvName.of(bad)
