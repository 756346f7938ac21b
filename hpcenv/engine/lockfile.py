"""Lockfiles: rattler's ``LockFile`` format (the conda-lock/pixi lock YAML), whatever engine solved.

Kept out of the :class:`~hpcenv.engine.base.Engine` protocol: a lock written after a conda-CLI solve
is the same file as after a rattler solve, so reading and writing it is one job for every engine.
py-rattler does the work in its child process (:func:`~hpcenv.engine.rattler_engine.call_rattler`).

A lock of an hpcenv build holds the whole env: the conda packages, the pip-installed
distributions as the format's ``pypi:`` entries (their URL carries ``#sha256=HASH``, as package
indexes write it, since py-rattler 0.28 cannot set a pypi package's hash), and a top-level
``hpcenv:`` mapping with the env's ``variables:``, which rattler, pixi and conda-lock ignore.
Its presence says the lock records pip packages and variables (a lock without it may have
left them out).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag

import yaml

from hpcenv.engine.base import LockedPackage, channel_url
from hpcenv.engine.rattler_engine import call_rattler
from hpcenv.errors import InvalidInput

EXTENSION_KEY = "hpcenv"


@dataclass(frozen=True)
class LockedPip:
    """One pip-installed distribution: where it came from and the sha256 of that archive
    (None when pip installed it from a directory or VCS checkout: nothing to verify)."""

    name: str
    version: str
    url: str
    sha256: str | None

    @property
    def location(self) -> str:
        """The URL as the lockfile stores it."""
        return f"{self.url}#sha256={self.sha256}" if self.sha256 else self.url


@dataclass(frozen=True)
class LockExtras:
    """What a lockfile holds besides conda packages."""

    pip: tuple[LockedPip, ...] = ()
    variables: Mapping[str, str] = field(default_factory=dict)
    recorded: bool = False   # an ``hpcenv:`` section says pip packages and variables are all here


def write_lock(path: Path, env_name: str, packages: Sequence[LockedPackage],
               channels: Sequence[str], platform: str, *, pip: Sequence[LockedPip] = (),
               variables: Mapping[str, str] | None = None,
               call: Callable[[dict[str, Any]], dict[str, Any]] = call_rattler) -> None:
    """Write a lockfile with one environment ``env_name`` holding ``packages`` for ``platform``,
    and, unless ``variables`` is None, the env's pip packages and variables (the whole env).
    ``call``: the rattler child to use (a build's serving child; default a fresh one)."""
    extension = None if variables is None else {"variables": dict(variables)}
    call({"op": "write_lock", "path": str(path), "env_name": env_name,
                  "packages": [p.to_dict() for p in packages],
                  "channels": [channel_url(c) for c in channels], "platform": platform,
                  "pypi": [{"name": p.name, "version": p.version, "location": p.location}
                           for p in pip],
                  "extension": {EXTENSION_KEY: extension} if extension is not None else None})


def read_lock(path: Path, env_name: str | None = None,
              platform: str | None = None) -> list[LockedPackage]:
    """Packages of ``env_name`` (default: the only/default environment) for ``platform``."""
    if not Path(path).is_file():
        raise InvalidInput(f"{path}: lockfile not found")
    reply = call_rattler({"op": "read_lock", "path": str(path), "env_name": env_name,
                          "platform": platform})
    return [LockedPackage.from_dict(d) for d in reply["packages"]]


def read_lock_extras(path: Path, env_name: str | None = None,
                     platform: str | None = None) -> LockExtras:
    """The pip packages and variables of a lockfile (read as YAML: py-rattler drops the hash
    of a pypi package's URL).  Call after :func:`read_lock`, which validates the file."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InvalidInput(f"{path}: cannot read lockfile ({exc})") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{path}: not a lockfile (no mapping at the top)")
    envs: dict[str, Any] = doc.get("environments") or {}
    env = envs.get(env_name) if env_name else envs.get("default") or (
        next(iter(envs.values())) if len(envs) == 1 else None)
    locations: list[str] = []
    for plat, entries in ((env or {}).get("packages") or {}).items():
        if platform is None or plat == platform:
            locations += [e["pypi"] for e in entries or () if isinstance(e, dict) and "pypi" in e]
    described = {p["pypi"]: p for p in doc.get("packages") or ()
                 if isinstance(p, dict) and "pypi" in p}
    pip = []
    for location in locations:
        entry = described.get(location, {})
        url, fragment = urldefrag(location)
        sha256 = entry.get("sha256") or (fragment.removeprefix("sha256=")
                                         if fragment.startswith("sha256=") else None)
        pip.append(LockedPip(name=str(entry.get("name") or Path(url).name),
                             version=str(entry.get("version") or ""), url=url, sha256=sha256))
    extension = doc.get(EXTENSION_KEY)
    if extension is not None and not isinstance(extension, dict):
        raise InvalidInput(f"{path}: '{EXTENSION_KEY}:' must be a mapping")
    variables = (extension or {}).get("variables") or {}
    if not isinstance(variables, dict):
        raise InvalidInput(f"{path}: '{EXTENSION_KEY}: variables:' must be a mapping")
    return LockExtras(pip=tuple(pip), variables={str(k): str(v) for k, v in variables.items()},
                      recorded=extension is not None)
