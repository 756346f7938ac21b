"""``hpcenv env inspect FILE``: what hpcenv reads from an environment file."""

from __future__ import annotations

import argparse
from typing import Any

from hpcenv.cli.argtypes import local_file
from hpcenv.cli.context import Context

# Full exports pin a dozen lock-step cuda-* packages; the first few make the point.
_MAX_EVIDENCE = 5


def register_inspect(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Parse a conda environment file and show its channels, dependencies, "
                          "content hash and the CUDA runtime it needs (with the lines that "
                          "decided it). Nothing is built.")
    parser.add_argument("file", metavar="FILE", type=local_file,
                        help="a conda environment.yml file")
    parser.set_defaults(handler=_inspect)


def _inspect(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.spec.cuda import infer_cuda
    from hpcenv.spec.environment import load_spec

    spec = load_spec(args.file)
    req = infer_cuda(spec)
    data: dict[str, Any] = {
        "file": str(spec.source),
        "name": spec.name,
        "channels": list(spec.channels),
        "conda": list(spec.conda),
        "pip": list(spec.pip),
        "variables": dict(spec.variables),
        "cuda": req.cuda,
        "cuda_ambiguous": req.ambiguous,
        "cuda_candidates": list(req.candidates),
        "gpu_required": req.gpu_required,
        "cuda_evidence": list(req.evidence),
        "warnings": list(spec.warnings),
        "hash": spec.content_hash(),
    }
    # What conda reads differently from how the file looks: on stderr, also with --json.
    for warning in spec.warnings:
        ctx.warn(warning)
    ctx.emit(data, _human)
    return 0


def _cuda_line(data: dict[str, Any]) -> str:
    candidates = ", ".join(data["cuda_candidates"])
    if data["cuda"] is None and not data["cuda_ambiguous"]:
        text = "none (a non-CUDA GPU such as ROCm)" if data["gpu_required"] else "none"
    elif data["cuda"] is None:
        text = f"not pinned (candidates: {candidates})" if candidates else "not pinned"
    elif data["cuda_ambiguous"]:
        text = f"{data['cuda']}, ambiguous (candidates: {candidates})"
    else:
        text = data["cuda"]
    gpu = {True: "GPU required", False: "no GPU needed", None: "GPU optional"}
    return f"{text}; {gpu[data['gpu_required']]}"


def _human(data: dict[str, Any]) -> str:
    n_options = sum(1 for line in data["pip"] if line.startswith("-"))
    pip = f"{len(data['pip']) - n_options} requirements"
    if n_options:
        pip += f", {n_options} option line{'s' if n_options > 1 else ''}"
    rows = [
        ("name", data["name"] or "(none)"),
        ("channels", ", ".join(data["channels"]) or "(none: defaults)"),
        ("conda", f"{len(data['conda'])} specs"),
        ("pip", pip),
    ]
    if data["variables"]:
        rows.append(("variables", ", ".join(data["variables"])))
    rows += [("cuda", _cuda_line(data)), ("hash", data["hash"])]
    lines = [data["file"]] + [f"  {key:<10}{value}" for key, value in rows]
    evidence = data["cuda_evidence"]
    shown = evidence[:_MAX_EVIDENCE]
    if len(evidence) > len(shown):
        shown = shown + [f"({len(evidence) - len(shown)} more; see --json)"]
    lines += [f"  {'evidence' if i == 0 else '':<10}{line}" for i, line in enumerate(shown)]
    return "\n".join(lines)
