"""Export an installed environment as environment.yml, an ``@EXPLICIT`` list, or its lockfile.

Everything is read from the prefix itself (``conda-meta/*.json`` and the ``*.dist-info`` of
site-packages), so the export describes what is installed, whatever spec produced it.

Differences from ``conda env export``, on purpose: no ``prefix:`` line (``conda env create -f``
would install into that path, here a shared read-only build), and the channels are the ones the
env was built with when the caller knows them (the registry does), in priority order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlparse

from hpcenv.engine import get_engine
from hpcenv.engine.base import ARCHIVE_SUFFIXES, current_platform
from hpcenv.engine.lockfile import read_lock_extras, write_lock
from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.spec.cuda_target import NO_CUDA, CudaTarget
from hpcenv.store.activation import env_state_vars

if TYPE_CHECKING:
    from hpcenv.engine.base import Engine
    from hpcenv.site.config import SiteConfig
    from hpcenv.store.registry import EnvRecord


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


def export_explicit(prefix: Path, *, name: str | None = None) -> str:
    """An ``@EXPLICIT`` list (``URL#sha256``) that recreates the conda part without a solve.

    The header says how to build it again; a list has no ``name:``, so the command names
    ``name`` (default: the prefix's directory name).

    pip-installed distributions cannot be expressed in this format; they are listed as comments
    so nothing is dropped silently.
    """
    import shlex

    prefix = Path(prefix)
    packages = installed_packages(prefix)
    subdirs = sorted({p.subdir for p in packages if p.subdir and p.subdir != "noarch"})
    lines = [
        "# This file may be used to create an environment using:",
        f"# $ hpcenv env build --from-lock <this file> --name {shlex.quote(name or prefix.name)}",
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
        lines.append(f"{PIP_NOTE}{dist.name}=={dist.version} (not installable from an explicit list)")
    for variable in env_state_vars(prefix):
        lines.append(f"{VARIABLE_NOTE}{variable} (not settable from an explicit list)")
    return "\n".join(lines) + "\n"


# Comment lines of an exported @EXPLICIT list naming what the list cannot carry.
PIP_NOTE = "# pip: "
VARIABLE_NOTE = "# variable: "


def explicit_list_omissions(path: Path) -> list[str]:
    """What an exported ``@EXPLICIT`` list says it left out: ``pip NAME==V``/``variable NAME``."""
    notes = []
    for raw in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        for prefix, kind in ((PIP_NOTE, "pip"), (VARIABLE_NOTE, "variable")):
            if raw.startswith(prefix):
                notes.append(f"{kind} {raw.removeprefix(prefix).split(' (', 1)[0]}")
    return notes


def export_lock(lock_path: Path) -> str:
    """The lockfile written when the env was built (exact URLs and sha256 of every package)."""
    try:
        return Path(lock_path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(f"lockfile {lock_path} is missing; rebuild the env to write a new one") from exc


ExportFormat = Literal["environment.yml", "lock", "explicit"]


def export_record(record: EnvRecord, form: ExportFormat = "environment.yml", *,
                  no_builds: bool = False) -> str:
    """A registry version as ``form``: environment.yml and ``@EXPLICIT`` lists are read from
    its prefix (which must still exist), the lockfile from the registry."""
    if form == "lock":
        return export_lock(Path(record.lock_path))
    prefix = Path(record.prefix)
    if not prefix.is_dir():
        raise HpcenvError(f"{record.name} version {record.version} is {record.status} and its "
                          "prefix is gone; export its lockfile instead (--lock)")
    if form == "explicit":
        return export_explicit(prefix, name=record.name)
    return export_environment_yml(prefix, name=record.name, channels=record.channels or None,
                                  no_builds=no_builds)


def lock_omissions(record: EnvRecord, form: ExportFormat = "lock") -> str | None:
    """What a lockfile or ``@EXPLICIT`` list of ``record`` leaves out (pip packages, variables)
    and how to rebuild it all; None when it holds everything (a lock written by this hpcenv
    holds the whole env)."""

    prefix = Path(record.prefix)
    if not (prefix / "conda-meta").is_dir():
        return None
    if form == "lock" and Path(record.lock_path).is_file() \
            and read_lock_extras(Path(record.lock_path)).recorded:
        return None
    extras = []
    if dists := pip_installed(prefix):
        extras.append(f"pip packages ({', '.join(d.name for d in dists)})")
    if env_state_vars(prefix):
        extras.append("variables")
    if not extras:
        return None
    what = "an @EXPLICIT list" if form == "explicit" else "this (older) lockfile"
    return (f"{record.name} also has {' and '.join(extras)}, which {what} does not hold; "
            f"rebuild with 'hpcenv env build {record.source or 'FILE'} --from-lock LOCK', or "
            "export environment.yml instead")


# --- @EXPLICIT lists back into lockfiles --------------------------------------------------------

@dataclass(frozen=True)
class ExplicitEntry:
    """One ``URL#checksum`` line of an ``@EXPLICIT`` list."""

    url: str
    checksum: str | None     # md5 (32 hex) or sha256 (64 hex), "sha256:"/"md5:" prefix dropped
    name: str
    version: str
    build: str
    channel: str             # the URL without ``/SUBDIR/FILE``
    subdir: str
    line: int


def is_explicit_list(path: Path) -> bool:
    """Whether ``path`` is an ``@EXPLICIT`` list (rather than a rattler lockfile)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return any(line.strip() == "@EXPLICIT" for line in fh)
    except OSError:
        return False


def read_explicit(path: Path) -> list[ExplicitEntry]:
    """The package lines of an ``@EXPLICIT`` list (InvalidInput naming file:line if malformed)."""
    entries = []
    started = False
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line == "@EXPLICIT":
            started = True
            continue
        if not started:
            raise InvalidInput(f"{path}:{number}: text before the '@EXPLICIT' line; an explicit "
                               "list has only comments before it")
        url, _, raw_checksum = line.partition("#")
        checksum = raw_checksum.split(":", 1)[-1].strip().lower() or None
        parts = url.rsplit("/", 2)
        filename = parts[-1]
        stem = next((filename[: -len(x)] for x in ARCHIVE_SUFFIXES if filename.endswith(x)), None)
        pieces = stem.rsplit("-", 2) if stem else []
        if len(parts) != 3 or len(pieces) != 3 or not all(pieces):
            raise InvalidInput(f"{path}:{number}: {url!r} is not CHANNEL/SUBDIR/NAME-VERSION-BUILD"
                               ".conda (or .tar.bz2); regenerate the list with 'hpcenv env export "
                               "NAME --explicit'")
        if checksum is not None and len(checksum) not in (32, 64):
            raise InvalidInput(f"{path}:{number}: checksum {checksum!r} is neither an md5 nor a "
                               "sha256")
        entries.append(ExplicitEntry(url=url, checksum=checksum, name=pieces[0],
                                     version=pieces[1], build=pieces[2], channel=parts[0],
                                     subdir=parts[1], line=number))
    if not entries:
        raise InvalidInput(f"{path}: no packages after '@EXPLICIT'")
    return entries


def lock_from_explicit(path: Path, site: SiteConfig, *, cuda_override: CudaTarget | None = None,
                       engine: Engine | None = None) -> Path:
    """A lockfile with exactly the packages of the ``@EXPLICIT`` list ``path``.

    An explicit list carries only URLs, but a lockfile (and an install) needs each package's
    metadata, which lives in the channel's repodata: so the packages are solved pinned to
    ``name ==version build`` against the list's channels, and the result must be exactly the
    listed URLs with the listed checksums, or this fails naming the line.  ``__cuda`` is the
    listed ``cuda-version`` unless ``cuda_override`` says otherwise.  The lockfile is kept under
    the site's ``state_dir`` by content, so building the same list again needs no solve.
    """
    path = Path(path)
    entries = read_explicit(path)
    listed = next((e.version for e in entries if e.name == "cuda-version"), None)
    cuda = cuda_override if cuda_override is not None else (
        CudaTarget.of(listed) if listed else NO_CUDA)
    digest = hashlib.sha256(path.read_bytes() + f"\0cuda={cuda.version or ''}".encode()
                            ).hexdigest()
    out = Path(site.state_dir) / "explicit-locks" / f"{digest[:24]}.lock.yml"
    if out.is_file():
        return out
    for entry in entries:
        if entry.url.startswith("file://") and not Path(unquote(urlparse(entry.url).path)).is_file():
            raise HpcenvError(f"{path}:{entry.line}: {entry.url} does not exist; the channel "
                              "changed since the list was made (rebuild from the env file)")
    subdirs = sorted({e.subdir for e in entries if e.subdir != "noarch"})
    platform = subdirs[0] if subdirs else current_platform()
    channels = list(dict.fromkeys(e.channel for e in entries))
    engine = engine or get_engine(site.engine, conda_exe=site.conda_exe,
                                  repodata_cache=Path(site.state_dir) / "rattler-cache")
    # Pinned specs: channel priority cannot change the choice, and strict priority would
    # refuse a package pinned from a lower-priority channel.
    packages = engine.solve([f"{e.name} =={e.version} {e.build}" for e in entries],
                            channels=channels, platform=platform, cuda=cuda,
                            channel_priority="flexible")
    by_name = {p.name: p for p in packages}
    for entry in entries:
        got = by_name.pop(entry.name, None)
        if got is None or got.url != entry.url:
            raise HpcenvError(f"{path}:{entry.line}: {entry.url} is not in its channel's index "
                              f"(found {got.url if got else 'nothing'}); is the channel reachable?")
        expected = got.sha256 if entry.checksum and len(entry.checksum) == 64 else got.md5
        if entry.checksum and expected and entry.checksum != expected.lower():
            raise HpcenvError(f"{path}:{entry.line}: checksum mismatch for {entry.url} (list "
                              f"{entry.checksum}, channel {expected}); the package changed "
                              "since the list was made")
    if by_name:
        raise HpcenvError(f"{path}: incomplete explicit list: the packages need "
                          f"{', '.join(sorted(by_name))} too; export the list again")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_lock(out, "default", packages, channels, platform)
    return out
