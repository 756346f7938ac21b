"""Lockfiles: rattler's ``LockFile`` format (the conda-lock/pixi lock YAML), whatever engine solved.

Kept out of the :class:`~hpcenv.engine.base.Engine` protocol: a lock written after a conda-CLI solve
is the same file as after a rattler solve, so reading and writing it is one job for every engine.
py-rattler does the work in its child process (:func:`~hpcenv.engine.rattler_engine.call_rattler`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hpcenv.engine.base import LockedPackage, channel_url
from hpcenv.engine.rattler_engine import call_rattler
from hpcenv.errors import InvalidInput


def write_lock(path: Path, env_name: str, packages: Sequence[LockedPackage],
               channels: Sequence[str], platform: str) -> None:
    """Write a lockfile with one environment ``env_name`` holding ``packages`` for ``platform``."""
    call_rattler({"op": "write_lock", "path": str(path), "env_name": env_name,
                  "packages": [p.to_dict() for p in packages],
                  "channels": [channel_url(c) for c in channels], "platform": platform})


def read_lock(path: Path, env_name: str | None = None,
              platform: str | None = None) -> list[LockedPackage]:
    """Packages of ``env_name`` (default: the only/default environment) for ``platform``."""
    if not Path(path).is_file():
        raise InvalidInput(f"{path}: lockfile not found")
    reply = call_rattler({"op": "read_lock", "path": str(path), "env_name": env_name,
                          "platform": platform})
    return [LockedPackage.from_dict(d) for d in reply["packages"]]
