"""Env packs: one file per env version, for node-local staging (``submit --stage``).

Why a pack: a process started from a shared (parallel) filesystem does an ``open``/``stat`` for
every module it imports, each a round trip to the metadata server; a job on hundreds of nodes
multiplies that.  A pack is read once per node as one large sequential file, unpacked on
node-local storage, and the job runs from there.

Format: a tar archive compressed with zstd (``.tar.zst``) or, where ``zstd`` is missing,
gzip (``.tar.gz``); see the README's design notes for why not squashfs.  The archive holds the
build prefix as it is, with two extra members first::

    .hpcenv-pack/manifest.json   what the pack is, and the files that embed the build prefix
    .hpcenv-pack/relocate.py     :mod:`hpcenv.store.relocate`, run on the node after unpacking

The manifest lists, as conda-pack does, the files that carry the build prefix and whether they
are text or binary: what each package's ``conda-meta/*.json`` ``paths_data`` says (files with a
``prefix_placeholder``, and the entry points conda writes with the prefix in their ``#!``
line), plus any file no package owns (``pip:`` installs, conda's history) that contains the
prefix, found by reading it (NUL bytes make it binary).  Compiled ``.pyc`` files are left
alone: their embedded source paths only show in tracebacks, and rewriting marshalled strings
would corrupt them.

Unpacking (:func:`unpack`, and the same steps in the job script, ``slurm_templates/stage.sh.j2``)
needs only ``tar``, the decompressor and a python: the env's own (``bin/python -I -S``), or the
node's ``python3`` for an env without one.

Packs live in the site's ``packs_dir``, by default ``envs_dirs[0]/.hpcenv/packs``, named after
the build (``NAME-V-KEY12.tar.zst``), so a pack always belongs to exactly one immutable build.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from hpcenv import __version__
from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.fsutil import ensure_shared_dir, shared_file_mode
from hpcenv.records import JsonRecord
from hpcenv.store import relocate as relocate_module
from hpcenv.store.layout import is_complete
from hpcenv.store.registry import EnvRecord

if TYPE_CHECKING:
    from hpcenv.store.layout import Store

Compression = Literal["zstd", "gzip"]
FileMode = Literal["text", "binary"]

PACK_FORMAT = 1
PACK_DIR = ".hpcenv-pack"
MANIFEST = f"{PACK_DIR}/manifest.json"
RELOCATE = f"{PACK_DIR}/relocate.py"
SUFFIXES: dict[Compression, str] = {"zstd": ".tar.zst", "gzip": ".tar.gz"}
# Entry points conda and rattler write themselves, with the prefix in their "#!" line.
_ENTRY_POINT_TYPES = ("unix_python_entry_point", "windows_python_entry_point_script")
_SCAN_CHUNK = 1 << 20


@dataclass(frozen=True)
class PrefixFile(JsonRecord):
    """A file (path relative to the prefix) that embeds the build prefix."""

    path: str
    mode: FileMode


@dataclass(frozen=True)
class PackManifest(JsonRecord):
    """``.hpcenv-pack/manifest.json``: what the pack holds and what relocation rewrites."""

    name: str
    version: int
    prefix: str                       # the build prefix the files were packed from
    compression: Compression
    unpacked_bytes: int               # files' apparent sizes plus one block per directory
    file_count: int
    files: tuple[PrefixFile, ...] = ()
    links: tuple[str, ...] = ()       # symlinks pointing into the prefix by absolute path
    python: str | None = None         # the env's python, relative to the prefix, if it has one
    created: str = ""
    hpcenv_version: str = ""
    format: int = PACK_FORMAT


@dataclass(frozen=True)
class PackResult:
    path: Path
    manifest: PackManifest
    packed_bytes: int
    seconds: float
    created: bool                     # False: an existing pack of this build was kept

    def to_dict(self) -> dict[str, object]:
        return {"pack": str(self.path), "name": self.manifest.name,
                "version": self.manifest.version, "prefix": self.manifest.prefix,
                "compression": self.manifest.compression, "packed_bytes": self.packed_bytes,
                "unpacked_bytes": self.manifest.unpacked_bytes,
                "file_count": self.manifest.file_count,
                "relocated_files": len(self.manifest.files), "seconds": round(self.seconds, 3),
                "created": self.created}


# --- where packs live -------------------------------------------------------------------------

def packs_dir(store: Store) -> Path:
    """The site's ``packs_dir``, else ``envs_dirs[0]/.hpcenv/packs``."""
    return store.packs_dir if store.packs_dir is not None else store.envs_dir / ".hpcenv" / "packs"


def pack_path(store: Store, record: EnvRecord, compression: Compression) -> Path:
    return packs_dir(store) / f"{Path(record.prefix).name}{SUFFIXES[compression]}"


def find_pack(store: Store, record: EnvRecord) -> Path | None:
    """The pack of ``record``'s build, if one was made (zstd preferred)."""
    for compression in SUFFIXES:
        path = pack_path(store, record, compression)  # type: ignore[arg-type]
        if path.is_file():
            return path
    return None


def compression_of(pack: Path) -> Compression:
    for compression, suffix in SUFFIXES.items():
        if pack.name.endswith(suffix):
            return compression
    raise InvalidInput(f"{pack}: not an env pack (expected a name ending in "
                       f"{' or '.join(SUFFIXES.values())})")


def default_compression() -> Compression:
    """zstd when this machine has it (decompresses several times faster than gzip)."""
    return "zstd" if shutil.which("zstd") else "gzip"


# --- what embeds the prefix -------------------------------------------------------------------

def _walk(prefix: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``prefix`` (relative path, lstat), directories before their contents,
    in a stable order."""
    for root, dirs, files in os.walk(prefix):
        dirs.sort()
        here = Path(root)
        for name in sorted(dirs + files):
            full = here / name
            yield full.relative_to(prefix).as_posix(), os.lstat(full)


def _managed_files(prefix: Path) -> tuple[set[str], dict[str, FileMode]]:
    """Files the packages own, and of those the ones ``paths_data`` says embed the prefix."""
    owned: set[str] = set()
    embedding: dict[str, FileMode] = {}
    for meta in sorted((prefix / "conda-meta").glob("*.json")):
        try:
            record = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise HpcenvError(f"{meta}: unreadable package record ({exc}); the env is damaged, "
                              "rebuild it") from None
        owned.update(record.get("files", []))
        for entry in (record.get("paths_data") or {}).get("paths", []):
            path = entry.get("_path")
            if not path:
                continue
            owned.add(path)
            if entry.get("prefix_placeholder"):
                embedding[path] = "binary" if entry.get("file_mode") == "binary" else "text"
            elif entry.get("path_type") in _ENTRY_POINT_TYPES:
                embedding[path] = "text"
    return owned, embedding


def _scan(path: Path, needle: bytes) -> FileMode | None:
    """Whether the file holds ``needle``, and then whether it is text or binary."""
    found = binary = False
    tail = b""
    with open(path, "rb") as handle:
        while chunk := handle.read(_SCAN_CHUNK):
            window = tail + chunk
            found = found or needle in window
            binary = binary or b"\0" in chunk
            if found and binary:
                break
            tail = window[-(len(needle) - 1):] if len(needle) > 1 else b""
    if not found:
        return None
    return "binary" if binary else "text"


def prefix_manifest(prefix: Path, *, name: str, version: int,
                    compression: Compression) -> PackManifest:
    """The manifest of ``prefix`` as it is now (see the module doc for what is listed)."""
    prefix = Path(prefix)
    needle = str(prefix).encode()
    owned, embedding = _managed_files(prefix)
    files: list[PrefixFile] = []
    links: list[str] = []
    size = count = 0
    for rel, st in _walk(prefix):
        if stat.S_ISDIR(st.st_mode):
            size += 4096
            continue
        count += 1
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(prefix / rel)
            if target == str(prefix) or target.startswith(f"{prefix}/"):
                links.append(rel)
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        size += st.st_size
        if rel.endswith(".pyc"):
            continue
        mode = embedding.get(rel) if rel in owned else _scan(prefix / rel, needle)
        if mode is not None:
            files.append(PrefixFile(rel, mode))
    python = next((f"bin/{n}" for n in ("python3", "python")
                   if os.access(prefix / "bin" / n, os.X_OK)), None)
    return PackManifest(name=name, version=version, prefix=str(prefix), compression=compression,
                        unpacked_bytes=size, file_count=count, files=tuple(files),
                        links=tuple(links), python=python,
                        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), hpcenv_version=__version__)


# --- packing ----------------------------------------------------------------------------------

def _member_filter(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Published builds are read-only; the unpacked copy is the user's, who must be able to
    # relocate files in it (a new file renamed over each) and delete it again.
    if info.isdir():
        info.mode |= 0o700
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _add_bytes(archive: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    archive.addfile(info, io.BytesIO(data))


def _write_archive(out: IO[bytes], prefix: Path, manifest: PackManifest) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        dir_info = tarfile.TarInfo(PACK_DIR)
        dir_info.type, dir_info.mode, dir_info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        archive.addfile(dir_info)
        _add_bytes(archive, MANIFEST,
                   (json.dumps(manifest.to_dict(), indent=1) + "\n").encode(), 0o644)
        _add_bytes(archive, RELOCATE, Path(relocate_module.__file__).read_bytes(), 0o755)
        for rel, _st in _walk(prefix):
            archive.add(prefix / rel, arcname=rel, recursive=False, filter=_member_filter)


def create_pack(store: Store, record: EnvRecord, *, compression: Compression | None = None,
                force: bool = False, progress: Callable[[str], None] | None = None) -> PackResult:
    """Pack ``record``'s build into the site's packs dir (kept if it exists, unless ``force``).

    The pack is written under a temporary name and renamed into place, so a job never sees a
    half-written one."""
    say = progress or (lambda _m: None)
    prefix = Path(record.prefix)
    if record.status != "ready" or not is_complete(prefix):
        raise HpcenvError(f"{record.name} version {record.version} is {record.status}, not a "
                          f"ready build; pick another with 'hpcenv env history {record.name}'")
    compression = compression or default_compression()
    if compression == "zstd" and not shutil.which("zstd"):
        raise InvalidInput("--compression zstd: no zstd command on this machine; install zstd "
                           "or use --compression gzip")
    start = time.monotonic()
    existing = find_pack(store, record)
    if existing is not None and not force:
        return PackResult(existing, read_manifest(existing), existing.stat().st_size,
                          time.monotonic() - start, created=False)
    target = pack_path(store, record, compression)
    group = store.group
    ensure_shared_dir(target.parent, mode=store.dir_mode, group=group)
    say(f"hpcenv: packing {record.name} v{record.version} ({prefix})")
    manifest = prefix_manifest(prefix, name=record.name, version=record.version,
                               compression=compression)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if compression == "zstd":
            with open(tmp, "wb") as sink:
                proc = subprocess.Popen(["zstd", "-q", "-T0", "-3", "-c"], stdin=subprocess.PIPE,
                                        stdout=sink)
                assert proc.stdin is not None
                try:
                    _write_archive(proc.stdin, prefix, manifest)
                finally:
                    proc.stdin.close()
                    rc = proc.wait()
                if rc != 0:
                    raise HpcenvError(f"zstd failed (exit {rc}) writing {tmp}")
        else:
            import gzip

            with gzip.open(tmp, "wb", compresslevel=6) as sink:
                _write_archive(sink, prefix, manifest)  # type: ignore[arg-type]
        os.chmod(tmp, shared_file_mode(group))
        if group is not None:
            shutil.chown(tmp, group=group)
        for other in SUFFIXES.values():  # one pack per build: a re-pack replaces the other kind
            stale = target.with_name(f"{prefix.name}{other}")
            if stale != target:
                stale.unlink(missing_ok=True)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return PackResult(target, manifest, target.stat().st_size, time.monotonic() - start,
                      created=True)


def orphan_packs(store: Store, live_prefixes: Iterable[Path]) -> list[Path]:
    """Packs in the site's packs dir whose build is not among ``live_prefixes`` (for gc)."""
    directory = packs_dir(store)
    if not directory.is_dir():
        return []
    live = {Path(p).name for p in live_prefixes}
    out = []
    for path in sorted(directory.iterdir()):
        build = next((path.name[: -len(s)] for s in SUFFIXES.values()
                      if path.name.endswith(s)), None)
        if build is not None and not path.name.startswith(".") and build not in live:
            out.append(path)
    return out


# --- reading and unpacking --------------------------------------------------------------------

def _decompress_command(pack: Path) -> list[str]:
    if compression_of(pack) == "zstd":
        if not shutil.which("zstd"):
            raise HpcenvError(f"{pack}: zstd is needed to unpack it and is not installed here")
        return ["zstd", "-dc", "--", str(pack)]
    return ["gzip", "-dc", "--", str(pack)]


def read_manifest(pack: Path) -> PackManifest:
    """The manifest of ``pack`` (its first members: read without unpacking the rest)."""
    pack = Path(pack)
    if not pack.is_file():
        raise NotFound(f"{pack}: no such pack; make one with 'hpcenv env pack NAME'")
    proc = subprocess.Popen(_decompress_command(pack), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                if member.name == MANIFEST:
                    handle = archive.extractfile(member)
                    assert handle is not None
                    return PackManifest.from_dict(json.loads(handle.read()))
                if member.name not in (PACK_DIR, RELOCATE):
                    break
    except (tarfile.TarError, ValueError, KeyError) as exc:
        raise HpcenvError(f"{pack}: not a readable env pack ({exc}); make it again with "
                          "'hpcenv env pack NAME --force'") from None
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()
    raise HpcenvError(f"{pack}: no {MANIFEST} at its start; not an env pack made by hpcenv")


def unpack(pack: Path, dest: Path, *, python: str | None = None) -> Path:
    """Unpack ``pack`` into the new directory ``dest`` and relocate it there, as the job script
    does on a compute node: decompress into tar, then the pack's own ``relocate.py`` run by
    the env's python (or ``python``, e.g. for an env without one)."""
    pack, dest = Path(pack).resolve(), Path(dest).absolute()
    if dest.exists():
        raise InvalidInput(f"{dest} exists; unpack into a new directory")
    manifest = read_manifest(pack)
    dest.mkdir(parents=True)
    try:
        decompress = subprocess.Popen(_decompress_command(pack), stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "--no-same-owner", "-f", "-", "-C", str(dest)],
                               stdin=decompress.stdout, capture_output=True, text=True)
        assert decompress.stdout is not None
        decompress.stdout.close()
        if decompress.wait() != 0 or untar.returncode != 0:
            raise HpcenvError(f"{pack}: unpacking into {dest} failed: "
                              f"{untar.stderr.strip() or 'decompression failed'}")
        interpreter = python or (str(dest / manifest.python) if manifest.python else None)
        if interpreter is None:
            raise HpcenvError(f"{pack}: the env has no python; pass the python to relocate "
                              "it with")
        proc = subprocess.run([interpreter, "-I", "-S", str(dest / RELOCATE), str(dest),
                               str(dest)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise HpcenvError(f"{pack}: relocating to {dest} failed: {proc.stderr.strip()}")
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest
