"""The 44 real-world environment files of shared/corpus against their hand-made labels.

Set ``HPCENV_CORPUS`` to the ``environment-yml`` directory if it is not at
``<repo>/../shared/corpus/environment-yml``; without the corpus this module is skipped, with
one line saying where it looked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from hpcenv.errors import InvalidInput
from hpcenv.spec.cuda import infer_cuda
from hpcenv.spec.environment import EnvSpec, is_pip_option, load_spec

CORPUS = Path(os.environ.get("HPCENV_CORPUS") or
              REPO.parent / "shared" / "corpus" / "environment-yml")

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


# Files whose pip section pip refuses (the manifest tags them 'invalid-pip-spec': `dm-tree=0.1.8`
# with pip's non-operator '='). hpcenv refuses them as pip would; their labels are checked on
# the file as its author meant it, with '==' (same entries, same CUDA).
_PIP_SINGLE_EQUALS = re.compile(r"^(\s*- [A-Za-z0-9._-]+)=(?=[0-9])", re.MULTILINE)


def _id(entry: dict[str, Any]) -> str:
    return Path(entry["file"]).stem


def _refused_by_pip(entry: dict[str, Any]) -> bool:
    return "invalid-pip-spec" in entry.get("tags", ())


def _load(entry: dict[str, Any], tmp_path: Path) -> EnvSpec:
    path = CORPUS / entry["file"]
    includes = UPSTREAM_INCLUDES.get(entry["file"])
    if includes or _refused_by_pip(entry):
        path = Path(shutil.copy(path, tmp_path / path.name))
        for name, text in includes.items() if includes else ():
            (tmp_path / name).write_text(text)
    if _refused_by_pip(entry):
        text = path.read_text(encoding="utf-8")
        cut = text.index("- pip:")
        path.write_text(text[:cut] + _PIP_SINGLE_EQUALS.sub(r"\1==", text[cut:]),
                        encoding="utf-8")
    return load_spec(path)


def test_files_pip_refuses_are_refused_with_file_and_line() -> None:
    entries = [e for e in MANIFEST if _refused_by_pip(e)]
    assert entries
    for entry in entries:
        path = CORPUS / entry["file"]
        lines = path.read_text(encoding="utf-8").splitlines()
        pip_at = next(i for i, line in enumerate(lines) if "- pip:" in line)
        bad = next(i for i, line in enumerate(lines, 1)
                   if i > pip_at and _PIP_SINGLE_EQUALS.match(line))
        with pytest.raises(InvalidInput) as info:
            load_spec(path)
        assert str(info.value).startswith(f"{path}:{bad}: invalid pip requirement"), info.value
        assert "write '=='" in str(info.value)


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
def test_hash_ignores_order_name_and_spelling(entry: dict[str, Any], tmp_path: Path) -> None:
    spec = _load(entry, tmp_path)
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


def test_corpus_hashes_are_distinct(tmp_path: Path) -> None:
    hashes: dict[str, str] = {}
    for entry in MANIFEST:
        spec = _load(entry, tmp_path)
        hashes.setdefault(spec.content_hash(), entry["file"])
    assert len(hashes) == len(MANIFEST)

