"""The 44 real-world environment files of shared/corpus against their hand-made labels.

Set ``HPCENV_CORPUS`` to the ``environment-yml`` directory if it is not at
``<repo>/../shared/corpus/environment-yml``; without the corpus this module is skipped, with
one line saying where it looked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from hpcenv.spec.cuda import infer_cuda
from hpcenv.spec.environment import EnvSpec, is_pip_option, load_spec

CORPUS = Path(os.environ.get("HPCENV_CORPUS") or
              Path(__file__).resolve().parents[2] / "shared" / "corpus" / "environment-yml")

if not (CORPUS / "manifest.json").is_file():
    # One skip line for the module: a clone without shared/ beside it (CI has it).
    pytest.skip(f"environment-yml corpus not found at {CORPUS}: put shared/ beside the "
                "checkout or set HPCENV_CORPUS to the environment-yml directory",
                allow_module_level=True)
MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())


# Files the corpus could not carry: pip `-r` includes next to the original environment file,
# rebuilt from what the manifest notes say they contain (an index of cu128 wheels and torch).
UPSTREAM_INCLUDES: dict[str, dict[str, str]] = {
    "files/33-sdatkinson-neural-amp-modeler.yml": {
        "requirements_gpu.txt": "# choose the CUDA build\n"
                                "-i https://wheels.example.org/whl/cu128\ntorch\n",
    },
}


def _id(entry: dict[str, Any]) -> str:
    return Path(entry["file"]).stem


def _load(entry: dict[str, Any], tmp_path: Path) -> EnvSpec:
    path = CORPUS / entry["file"]
    includes = UPSTREAM_INCLUDES.get(entry["file"])
    if includes:
        path = Path(shutil.copy(path, tmp_path / path.name))
        for name, text in includes.items():
            (tmp_path / name).write_text(text)
    return load_spec(path)


def test_manifest_covers_every_file() -> None:
    listed = {entry["file"] for entry in MANIFEST}
    on_disk = {f"files/{p.name}" for p in (CORPUS / "files").iterdir()}
    assert listed == on_disk
    assert len(listed) == 44


@pytest.mark.parametrize("entry", MANIFEST, ids=_id)
def test_parse_matches_manifest(entry: dict[str, Any], tmp_path: Path) -> None:
    spec = _load(entry, tmp_path)
    assert spec.name == entry["name"]
    assert list(spec.channels) == entry["channels"]
    assert len(spec.conda) == entry["n_conda_deps"]
    assert len(spec.pip) == entry["n_pip_deps"]


@pytest.mark.parametrize("entry", MANIFEST, ids=_id)
def test_cuda_matches_label(entry: dict[str, Any], tmp_path: Path) -> None:
    req = infer_cuda(_load(entry, tmp_path))
    if entry["ambiguous"]:
        assert req.ambiguous, req
        assert set(entry.get("cuda_candidates") or ()) <= set(req.candidates), req
    else:
        assert not req.ambiguous, req
        assert req.cuda == entry["cuda"], req
    if entry["gpu_required"] is not None:
        assert req.gpu_required is entry["gpu_required"], req
    else:
        assert req.gpu_required is None, req


@pytest.mark.parametrize("entry", MANIFEST, ids=_id)
def test_evidence_is_verbatim_and_names_a_labelled_line(entry: dict[str, Any],
                                                        tmp_path: Path) -> None:
    req = infer_cuda(_load(entry, tmp_path))
    lines = {line.strip() for line in (CORPUS / entry["file"]).read_text(
        encoding="utf-8").splitlines()}
    assert set(req.evidence) <= lines
    labelled = {line.strip() for line in entry["cuda_source"]}
    if labelled:
        assert labelled & set(req.evidence), (req.evidence, labelled)
    if req.cuda is not None or req.ambiguous:
        assert req.evidence


def test_include_missing_from_corpus_still_flags_gpu_and_ambiguity() -> None:
    entry = next(e for e in MANIFEST if e["file"] in UPSTREAM_INCLUDES)
    req = infer_cuda(load_spec(CORPUS / entry["file"]))
    assert (req.cuda, req.ambiguous, req.gpu_required) == (None, True, True)


@pytest.mark.parametrize("entry", MANIFEST, ids=_id)
def test_hash_ignores_order_name_and_spelling(entry: dict[str, Any]) -> None:
    spec = load_spec(CORPUS / entry["file"])
    options = [p for p in spec.pip if is_pip_option(p)]
    requirements = [p for p in spec.pip if not is_pip_option(p)]
    shuffled = dataclasses.replace(
        spec, name="renamed",
        conda=tuple(reversed([" ".join(s.split()) for s in spec.conda])),
        pip=tuple(options + list(reversed(requirements))))
    assert shuffled.content_hash() == spec.content_hash()
    if len(spec.channels) > 1:
        swapped = dataclasses.replace(spec, channels=tuple(reversed(spec.channels)))
        assert swapped.content_hash() != spec.content_hash()


def test_corpus_hashes_are_distinct() -> None:
    hashes: dict[str, str] = {}
    for entry in MANIFEST:
        spec = load_spec(CORPUS / entry["file"])
        hashes.setdefault(spec.content_hash(), entry["file"])
    assert len(hashes) == len(MANIFEST)

