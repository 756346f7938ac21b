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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.errors import HpcenvError, InvalidInput

if TYPE_CHECKING:
    from hpcenv.remote import RemoteSession


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


def local_manifest(root: Path, excludes: Sequence[str] = ()) -> dict[str, FileStat]:
    """Regular files under ``root`` (symlinks followed, broken ones skipped), minus excludes."""
    if not root.is_dir():
        raise InvalidInput(f"--sync {root}: not a directory; give a local directory to upload")
    manifest: dict[str, FileStat] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        # Prune excluded directories so their contents are never even listed.
        dirnames[:] = sorted(d for d in dirnames
                             if not is_excluded(posixpath.join(rel_dir, d), excludes))
        for name in sorted(filenames):
            rel = posixpath.join(rel_dir, name)
            if is_excluded(rel, excludes):
                continue
            try:
                st = os.stat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if os.path.isfile(os.path.join(dirpath, name)):
                manifest[rel] = FileStat(size=st.st_size, mtime=int(st.st_mtime))
    return manifest


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
    local = local_manifest(local_dir, excludes)
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
                raise HpcenvError(f"uploading {src} to {session.target}:{dest} failed: {exc}; "
                                  f"check free space and permissions there") from exc
            sent += local[rel].size
    return SyncResult(local_dir=local_dir, remote_dir=remote_dir, uploaded=tuple(todo),
                      unchanged=len(local) - len(todo), bytes_sent=sent)
