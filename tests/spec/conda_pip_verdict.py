"""Verdicts of the real conda and pip on environment files (a test helper, run by the Python
that has conda installed): ``python conda_pip_verdict.py OUT.json FILE...``.

For each file, conda's own loader for environment.yml files (the CEP-24 spec that
``conda env create -f`` uses) parses it; when it accepts, the ``pip:`` entries conda keeps are
written to a requirements file next to the environment file (where conda's pip installer puts
it) and parsed by pip's own requirements-file parser, requirement by requirement.  The result is
``{file: "accept" | "refuse: <who>: <reason>"}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile


def conda_verdict(path: str) -> tuple[str | None, list[str]]:
    from conda.env.specs.cep_24 import Cep24YamlFileSpec

    spec = Cep24YamlFileSpec(filename=path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # conda prints its warnings
            spec.can_handle()
            env = spec.env
    except Exception as exc:  # conda raises several unrelated exception types here
        return f"conda: {type(exc).__name__}: {exc}".replace("\n", " "), []
    return None, list(env.external_packages.get("pip") or [])


def pip_verdict(path: str, lines: list[str]) -> str | None:
    from pip._internal.network.session import PipSession
    from pip._internal.req.constructors import install_req_from_parsed_requirement
    from pip._internal.req.req_file import parse_requirements

    folder = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", suffix=".requirements.txt", dir=folder,
                                     delete=False) as handle:
        handle.write("\n".join(lines) + "\n")
    try:
        for parsed in parse_requirements(handle.name, session=PipSession()):
            install_req_from_parsed_requirement(parsed)
    except Exception as exc:  # pip's parse errors have no common base class
        return f"pip: {type(exc).__name__}: {exc}".replace("\n", " ")
    finally:
        os.unlink(handle.name)
    return None


def main() -> None:
    out, files = sys.argv[1], sys.argv[2:]
    verdicts: dict[str, str] = {}
    for path in files:
        refused, pip_lines = conda_verdict(path)
        if refused is None and pip_lines:
            refused = pip_verdict(path, pip_lines)
        verdicts[path] = "accept" if refused is None else f"refuse: {refused}"
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(verdicts, handle, indent=1)


if __name__ == "__main__":
    main()
