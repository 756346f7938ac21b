"""Export an installed environment as environment.yml, an ``@EXPLICIT`` list, or its lockfile.

Everything is read from the prefix itself (``conda-meta/*.json`` and the ``*.dist-info`` of
site-packages), so the export describes what is installed, whatever spec produced it.

Differences from ``conda env export``, on purpose: no ``prefix:`` line (``conda env create -f``
would install into that path, here a shared read-only build), and the channels are the ones the
env was built with when the caller knows them (the registry does), in priority order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from hpcenv.errors import HpcenvError, NotFound


@dataclass(frozen=True)
class InstalledPackage:
    """One conda package as recorded in ``conda-meta/``."""

    name: str
    version: str
    build: str
    channel: str
    subdir: str
    url: str
    sha256: str | None
    md5: str | None
    files: tuple[str, ...]


@dataclass(frozen=True)
class PipDist:
    """A Python distribution in site-packages that no conda package owns (pip installed it)."""

    name: str
    version: str


def installed_packages(prefix: Path) -> list[InstalledPackage]:
    """The conda packages installed in ``prefix``, sorted by name."""
    meta = Path(prefix) / "conda-meta"
    if not meta.is_dir():
        raise NotFound(f"{prefix} is not a conda environment (no conda-meta/ directory)")
    packages = []
    for path in sorted(meta.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            packages.append(InstalledPackage(
                name=data["name"], version=data["version"], build=data["build"],
                channel=data.get("channel") or "", subdir=data.get("subdir") or "",
                url=data.get("url") or "", sha256=data.get("sha256"), md5=data.get("md5"),
                files=tuple(data.get("files") or ()),
            ))
        except (OSError, ValueError, KeyError) as exc:
            raise HpcenvError(f"{path}: unreadable package record ({exc!r}); "
                              "the env is damaged, rebuild it") from exc
    return sorted(packages, key=lambda p: p.name)


def pip_installed(prefix: Path, packages: list[InstalledPackage] | None = None) -> list[PipDist]:
    """Distributions in the env's site-packages whose metadata no conda record lists."""
    prefix = Path(prefix)
    packages = installed_packages(prefix) if packages is None else packages
    owned = {Path(f).parts[:4] for p in packages for f in p.files
             if f.startswith("lib/") and "site-packages/" in f}
    dists = []
    for site_packages in sorted(prefix.glob("lib/python*/site-packages")):
        for meta_dir in sorted(site_packages.glob("*.dist-info")) + sorted(site_packages.glob("*.egg-info")):
            if meta_dir.relative_to(prefix).parts in owned:
                continue
            metadata = meta_dir / ("METADATA" if meta_dir.suffix == ".dist-info" else "PKG-INFO")
            if meta_dir.is_file():  # old-style single-file egg-info
                metadata = meta_dir
            try:
                headers = HeaderParser().parsestr(metadata.read_text(encoding="utf-8", errors="replace"))
            except OSError:
                continue
            if headers.get("Name") and headers.get("Version"):
                dists.append(PipDist(headers["Name"], headers["Version"]))
    return sorted(dists, key=lambda d: d.name.lower())


def _channels(packages: list[InstalledPackage], channels: list[str] | tuple[str, ...] | None) -> list[str]:
    if channels:
        return list(channels)
    seen: dict[str, None] = {}
    for package in packages:
        if package.channel:
            seen.setdefault(package.channel.rstrip("/"), None)
    return list(seen)


def export_environment_yml(prefix: Path, *, name: str | None = None,
                           channels: list[str] | tuple[str, ...] | None = None,
                           no_builds: bool = False) -> str:
    """environment.yml text for the env at ``prefix``, as ``conda env export`` writes it.

    Every installed package is pinned (``name=version=build``, or ``name=version`` with
    ``no_builds``); pip-installed distributions go to a ``pip:`` section as ``name==version``;
    variables from ``conda-meta/state`` to ``variables:``.
    """
    import yaml

    from hpcenv.activation import env_state_vars

    prefix = Path(prefix)
    packages = installed_packages(prefix)
    deps: list[object] = [
        f"{p.name}={p.version}" if no_builds else f"{p.name}={p.version}={p.build}"
        for p in packages
    ]
    pip = pip_installed(prefix, packages)
    if pip:
        deps.append({"pip": [f"{d.name}=={d.version}" for d in pip]})
    doc: dict[str, object] = {"name": name or prefix.name, "channels": _channels(packages, channels),
                              "dependencies": deps}
    variables = env_state_vars(prefix)
    if variables:
        doc["variables"] = variables
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def export_explicit(prefix: Path) -> str:
    """An ``@EXPLICIT`` list (``URL#sha256``) that recreates the conda part without a solve.

    pip-installed distributions cannot be expressed in this format; they are listed as comments
    so nothing is dropped silently.
    """
    prefix = Path(prefix)
    packages = installed_packages(prefix)
    subdirs = sorted({p.subdir for p in packages if p.subdir and p.subdir != "noarch"})
    lines = [
        "# This file may be used to create an environment using:",
        "# $ hpcenv env build --from-lock <this file>",
        f"# platform: {subdirs[0] if subdirs else 'noarch'}",
        "@EXPLICIT",
    ]
    for package in packages:
        if not package.url:
            raise HpcenvError(f"{prefix}/conda-meta: {package.name} has no url; cannot export it "
                              "as an explicit list (use --lock)")
        checksum = package.sha256 or package.md5
        lines.append(f"{package.url}#{checksum}" if checksum else package.url)
    for dist in pip_installed(prefix, packages):
        lines.append(f"# pip: {dist.name}=={dist.version} (not installable from an explicit list)")
    return "\n".join(lines) + "\n"


def export_lock(lock_path: Path) -> str:
    """The lockfile written when the env was built (exact URLs and sha256 of every package)."""
    try:
        return Path(lock_path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(f"lockfile {lock_path} is missing; rebuild the env to write a new one") from exc
