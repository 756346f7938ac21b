"""Conda engines behind one protocol (:class:`~hpcenv.engine.base.Engine`): py-rattler, embedded
and run in a child process (:mod:`.rattler_engine`), and the conda/mamba/micromamba CLI
(:mod:`.conda_cli`).  Lockfiles, the same whatever engine solved, are :mod:`.lockfile`'s job.

Nothing here imports rattler: the rattler engine talks to a child process that does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from hpcenv.engine.base import Engine, LockedPackage, channel_url, current_platform

__all__ = ["Engine", "LockedPackage", "channel_url", "current_platform", "get_engine"]

EngineKind = Literal["rattler", "conda"]


def get_engine(kind: EngineKind, *, conda_exe: str | None = None,
               repodata_cache: Path | None = None) -> Engine:
    """The engine of that kind: ``rattler`` (with its repodata cache dir) or ``conda``
    (``conda_exe``: conda, mamba or micromamba; default ``conda`` on PATH)."""
    # Each engine's module is imported when it is chosen: importing this package, as the
    # build plan does for the package records, must not load both (nor their subprocess,
    # logging and lockfile imports) for a build that is only looked up.
    if kind == "conda":
        from hpcenv.engine.conda_cli import CondaCliEngine

        return CondaCliEngine(exe=conda_exe or "conda")
    from hpcenv.engine.rattler_engine import RattlerEngine

    return RattlerEngine(repodata_cache=repodata_cache)
