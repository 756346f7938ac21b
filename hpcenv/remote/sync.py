"""One-way file sync from a laptop to a remote login node, for ``hpcenv --remote NAME submit``.

Only changed files travel: a file is sent when the remote copy is missing or differs in size or
modification time (whole seconds, the resolution SFTP's ``utime`` carries).  After each upload the
remote mtime is set to the local one, so the next sync of an unchanged tree sends nothing.  Files
deleted locally are left on the remote: a sync never deletes anything there.

The manifest of the remote side is read with one ``find`` command rather than an SFTP walk, so a
tree of thousands of files costs one round trip.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shlex
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.remote.errors import upload_error

if TYPE_CHECKING:
    from hpcenv.remote.session import RemoteSession


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime: int  # whole seconds


@dataclass(frozen=True)
class SyncResult:
    local_dir: Path
    remote_dir: str
    uploaded: tuple[str, ...]  # relative paths, POSIX separators
    unchanged: int
    bytes_sent: int


def is_excluded(rel: str, patterns: Sequence[str]) -> bool:
    """Whether a relative POSIX path is excluded.

    A pattern without ``/`` matches any single path component (``*.pyc``, ``__pycache__``,
    ``.git``), so excluding a directory name excludes everything under it.  A pattern with a
    ``/`` inside or in front is anchored at the synced directory and matched against the relative
    path or a leading part of it (``data/raw``, ``/outputs``).
    """
    parts = rel.split("/")
    for raw in patterns:
        pattern = raw.strip("/")
        if not pattern:
            continue
        if raw.startswith("/") or "/" in pattern:
            for end in range(1, len(parts) + 1):
                if fnmatch.fnmatchcase("/".join(parts[:end]), pattern):
                    return True
        elif any(fnmatch.fnmatchcase(part, pattern) for part in parts):
            return True
    return False


def local_manifest(root: Path, excludes: Sequence[str] = (),
                   warn: Callable[[str], None] | None = None) -> dict[str, FileStat]:
    """Regular files under ``root``, minus excludes.

    Symlinks are followed (a project may link in its data), broken ones skipped.  A symlinked
    directory that leads back to one of its own ancestors (``loop -> ..``) would repeat the tree
    for ever: it is skipped, and ``warn`` (default: stderr) is told once which links those were.
    Any other error reading the tree is an ``HpcenvError`` naming the path.
    """
    if not root.is_dir():
        raise InvalidInput(f"--sync {root}: not a directory; give a local directory to upload")
    manifest: dict[str, FileStat] = {}
    loops: list[str] = []
    # Each entry: a directory to list, its path relative to root, and the (st_dev, st_ino) of
    # it and its ancestors.  Only ancestors count as a loop: two links to one sibling directory
    # are both synced, as the job may use either path.
    stack: list[tuple[Path, str, frozenset[tuple[int, int]]]] = [
        (root, "", frozenset({_dir_id(root, root)}))]
    while stack:
        directory, rel_dir, ancestors = stack.pop()
        subdirs = []
        for entry in _list_dir(root, directory):
            rel = posixpath.join(rel_dir, entry.name)
            if is_excluded(rel, excludes):
                continue
            st = _stat(root, entry, rel)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                ident = (st.st_dev, st.st_ino)
                if ident in ancestors:
                    loops.append(f"{rel} -> {os.readlink(entry.path)}" if entry.is_symlink()
                                 else rel)
                    continue
                subdirs.append((Path(entry.path), rel, ancestors | {ident}))
            elif stat.S_ISREG(st.st_mode):
                manifest[rel] = FileStat(size=st.st_size, mtime=int(st.st_mtime))
        stack.extend(reversed(subdirs))
    if loops:
        shown = ", ".join(loops[:3]) + (f" and {len(loops) - 3} more" if len(loops) > 3 else "")
        (warn or _to_stderr)(f"hpcenv: --sync {root}: not following {len(loops)} symlink loop(s) "
                             f"that lead back to a directory above them: {shown}")
    return manifest


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _read_error(root: Path, path: str, exc: OSError) -> HpcenvError:
    return HpcenvError(f"--sync {root}: cannot read {path}: {exc.strerror or exc}; fix it or "
                       f"leave it out with --exclude")


def _dir_id(root: Path, directory: Path) -> tuple[int, int]:
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise _read_error(root, str(directory), exc) from None
    return st.st_dev, st.st_ino


def _list_dir(root: Path, directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        raise _read_error(root, str(directory), exc) from None


def _stat(root: Path, entry: os.DirEntry[str], rel: str) -> os.stat_result | None:
    """The entry's stat, following symlinks; None for a dangling symlink or a file that vanished
    while the tree was listed."""
    try:
        return entry.stat(follow_symlinks=True)
    except FileNotFoundError:
        return None
    except OSError as exc:
        # ELOOP from a link to itself, EACCES, EIO, ...: not something to skip silently.
        raise _read_error(root, str(Path(entry.path)), exc) from None


def parse_find_manifest(text: str) -> dict[str, FileStat]:
    """Parse ``find -printf '%P\\t%s\\t%T@\\n'`` output into a manifest."""
    manifest: dict[str, FileStat] = {}
    for line in text.splitlines():
        rel, _, rest = line.partition("\t")
        size, _, mtime = rest.partition("\t")
        if rel and size and mtime:
            manifest[rel] = FileStat(size=int(size), mtime=int(float(mtime)))
    return manifest


def plan_upload(local: Mapping[str, FileStat], remote: Mapping[str, FileStat]) -> list[str]:
    """Relative paths that must be sent: missing remotely, or different size or mtime."""
    return sorted(rel for rel, stat in local.items() if remote.get(rel) != stat)


def remote_manifest(session: RemoteSession, remote_dir: str) -> dict[str, FileStat]:
    quoted = shlex.quote(remote_dir)
    result = session.run(
        f"if [ -d {quoted} ]; then find {quoted} -type f -printf '%P\\t%s\\t%T@\\n'; fi",
        what=f"listing {remote_dir}")
    return parse_find_manifest(result.stdout)


def _parent_dirs(rels: Iterable[str]) -> list[str]:
    return sorted({posixpath.dirname(rel) for rel in rels} - {""})


def sync_dir(session: RemoteSession, local_dir: Path, remote_dir: str,
             excludes: Sequence[str] = ()) -> SyncResult:
    """Upload the changed files of ``local_dir`` into ``remote_dir`` (an absolute remote path)."""
    local = local_manifest(local_dir, excludes, warn=session.info)
    remote = remote_manifest(session, remote_dir)
    todo = plan_upload(local, remote)
    sent = 0
    if todo:
        dirs = [remote_dir] + [posixpath.join(remote_dir, d) for d in _parent_dirs(todo)]
        session.run("mkdir -p " + " ".join(shlex.quote(d) for d in dirs),
                    what=f"creating directories under {remote_dir}")
        sftp = session.sftp()
        for rel in todo:
            src = local_dir / rel
            dest = posixpath.join(remote_dir, rel)
            try:
                sftp.put(str(src), dest)
                sftp.utime(dest, (local[rel].mtime, local[rel].mtime))
            except OSError as exc:
                raise upload_error(src, f"{session.target}:{dest}", exc) from exc
            sent += local[rel].size
    return SyncResult(local_dir=local_dir, remote_dir=remote_dir, uploaded=tuple(todo),
                      unchanged=len(local) - len(todo), bytes_sent=sent)
