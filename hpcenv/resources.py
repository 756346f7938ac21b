"""Locate files shipped with hpcenv (Slurm templates, site configs, examples).

In a source checkout or editable install they sit at the repository root; a wheel carries a
copy under ``hpcenv/_data``.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the directory of shipped data ``name`` (``slurm_templates``, ``site_configs`` or
    ``examples``)."""
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hpcenv data directory {name!r} is missing from this installation")
