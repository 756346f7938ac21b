"""Is what a build linked from the shared package cache what the packages hold?

With the layout the README prescribes for lab members who build (umask 002, a 2775 group
``pkgs_dirs``), any member can unlink a file inside an extracted cache entry and put their own
in its place; the engine links cache entries into new envs without looking at their contents.
So after every install the builder checks the new env against the packages' recorded hashes
(:func:`check_env`), before anything in it runs:

* each file the engine hardlinked or copied from the cache: its sha256 and size against the
  package's ``info/paths.json`` (the engine copies those into ``conda-meta/*.json``);
* each file with a prefix placeholder (rewritten for the env, so its own hash differs): the
  cache's original, by the same rule;
* each entry's ``info/paths.json`` itself: its sha256 against the one this user saw the first
  time (``paths.json`` lives in the same writable tree, so a planted file with a matching
  forged ``paths.json`` is caught only when this user has seen the entry before: see the
  README's design note on what is and is not protected).

Hashing a whole env costs about as much as reading it once.  A per-user record of files already
verified makes a repeat build cost one ``lstat`` per file for the files this user owns: they are
keyed by device, inode, size, mtime_ns, owner and the hash they were checked against, and only
their owner (this user) can write them or set their times; a replacement is a new file, owned
by whoever made it.  The ctime cannot be part of the key: every hardlink the engine makes into
a new env changes it.  Files another user owns (an entry they extracted) are hashed again on
every build, because their owner could rewrite them in place and put the mtime back.  The
record lives in the user's own ``state_dir``, never in the shared cache.  Entries the build's
own install just extracted are recorded without hashing (see :func:`check_env`).

A tampered entry is moved aside inside the cache (``.hpcenv-quarantine.ENTRY.STAMP``, which
``env gc`` leaves alone, for an admin to look at) so the engine extracts it again.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcenv.errors import HpcenvError
from hpcenv.fsutil import atomic_write_json, current_user, user_name

QUARANTINE_PREFIX = ".hpcenv-quarantine."
_NOARCH_SITE = re.compile(r"^lib/python[0-9.]+/site-packages/")
_RECORD_VERSION = 1


@dataclass(frozen=True)
class Tampered:
    """A cache file that is not what its package holds."""

    package: str          # the cache entry's name (name-version-build)
    entry: Path           # the cache entry dir
    path: str             # the file, relative to the entry
    owner: str            # who owns the file found there
    reason: str

    def describe(self) -> str:
        return (f"package cache entry {self.package}: {self.path} {self.reason} (the file there "
                f"is owned by {self.owner})")


@dataclass
class VerifiedFiles:
    """This user's record of cache files already checked (see module doc), one per cache."""

    path: Path
    files: dict[str, list[str]]    # entry name -> identities of its files checked last time
    paths_json: dict[str, str]     # entry name -> sha256 of its info/paths.json, first seen
    changed: bool = False

    @classmethod
    def load(cls, path: Path) -> VerifiedFiles:
        try:
            data = json.loads(path.read_text())
            if data.get("version") != _RECORD_VERSION:
                raise ValueError("old record")
            return cls(path, dict(data["files"]), dict(data["paths_json"]))
        except (OSError, ValueError, KeyError, TypeError):
            return cls(path, {}, {})   # no record (or a damaged one): verify everything

    def save(self) -> None:
        """Write the record; one that cannot be written (a read-only ``state_dir``) only
        means the next build hashes again."""
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_json(self.path, {"version": _RECORD_VERSION, "files": self.files,
                                          "paths_json": self.paths_json}, mode=0o600,
                              fsync=False)
        except OSError:
            return
        self.changed = False


def record_path(state_dir: Path, pkgs_dir: Path) -> Path:
    """Where this user's record for ``pkgs_dir`` lives under their ``state_dir``."""
    digest = hashlib.sha256(str(Path(pkgs_dir).resolve()).encode()).hexdigest()[:16]
    return Path(state_dir) / "verified-cache" / f"{digest}.json"


def _identity(st: os.stat_result, sha256: str) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_uid}:{sha256}"


def _sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _source_path(rel: str, noarch_python: bool) -> str:
    """Where a file of the env came from inside its cache entry (noarch python packages are
    laid out as ``site-packages/`` and ``python-scripts/`` in the package)."""
    if noarch_python:
        if _NOARCH_SITE.match(rel):
            return _NOARCH_SITE.sub("site-packages/", rel, count=1)
        if rel.startswith("bin/"):
            return "python-scripts/" + rel[len("bin/"):]
    return rel


def check_env(prefix: Path, verified: VerifiedFiles,
              extracted: frozenset[str] = frozenset()) -> list[Tampered]:
    """Every cache-linked file of the freshly installed ``prefix`` checked (see module doc);
    the files found tampered with, at most one per cache entry.  Updates ``verified``.

    ``extracted``: cache entries this user's own install just created.  Their files that this
    user owns came from the package archive as in any install, so they are recorded without
    hashing; a file someone swapped in meanwhile is theirs, not this user's, and is hashed."""
    found: list[Tampered] = []
    for meta in sorted((Path(prefix) / "conda-meta").glob("*.json")):
        try:
            record = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        entry_dir = record.get("extracted_package_dir")
        if not entry_dir:
            continue
        bad = _check_package(Path(prefix), Path(entry_dir), record, verified,
                             Path(entry_dir).name in extracted)
        if bad is not None:
            found.append(bad)
    return found


def _check_package(prefix: Path, entry: Path, record: dict[str, Any],
                   verified: VerifiedFiles, extracted_now: bool) -> Tampered | None:
    name = entry.name
    paths_json = entry / "info" / "paths.json"
    try:
        st = os.lstat(paths_json)
        seen = _sha256(paths_json) if stat.S_ISREG(st.st_mode) else "not a file"
    except OSError:
        return None   # the engine did not leave the entry (nothing shared to protect)
    first = verified.paths_json.get(name)
    if first is None:
        verified.paths_json[name] = seen
        verified.changed = True
    elif first != seen:
        return Tampered(name, entry, "info/paths.json", owner=user_name(st.st_uid),
                        reason="differs from the one this user's earlier builds used")
    known = set(verified.files.get(name, ()))
    checked: list[str] = []
    me = os.getuid()
    # Plain strings in the loop below: a Path per file cost as much as its lstat.
    entry_root, prefix_root = f"{entry}/", f"{prefix}/"
    noarch_python = record.get("noarch") == "python" or (
        isinstance(record.get("noarch"), dict) and record["noarch"].get("type") == "python")
    for item in (record.get("paths_data") or {}).get("paths") or []:
        if item.get("path_type") != "hardlink" or not item.get("sha256"):
            continue   # softlinks, directories, entry points the engine wrote itself
        rel = item["_path"]
        placeholder = bool(item.get("prefix_placeholder"))
        source_rel = _source_path(rel, noarch_python)
        # A rewritten file's own hash is not the package's: check the cache original.
        path = entry_root + source_rel if placeholder else prefix_root + rel
        expected = item["sha256"]
        try:
            st = os.lstat(path)
        except OSError:
            continue   # not there is not tampering (a missing file fails the build's own check)
        if not stat.S_ISREG(st.st_mode):
            return Tampered(name, entry, source_rel, owner=user_name(st.st_uid),
                            reason="is not a regular file")
        key = _identity(st, expected)
        if st.st_uid == me and (key in known or extracted_now):
            checked.append(key)
            continue
        # (A rewritten file's recorded size is the env copy's, so only the hash is compared.)
        size = None if placeholder else item.get("size_in_bytes")
        if size is not None and st.st_size != size:
            return Tampered(name, entry, source_rel, owner=user_name(st.st_uid),
                            reason=f"has {st.st_size} bytes where the package has {size}")
        if _sha256(path) != expected:
            return Tampered(name, entry, source_rel, owner=user_name(st.st_uid),
                            reason="does not match the package's sha256")
        if st.st_uid == me:
            checked.append(key)
    if set(checked) != known:
        verified.files[name] = sorted(checked)
        verified.changed = True
    return None


def quarantine(bad: Tampered) -> Path:
    """Move a tampered cache entry aside in its cache (never deleted: an admin looks at it);
    the engine extracts the package again on the next install."""
    try:
        return _move_aside(bad.entry)
    except OSError as exc:
        raise HpcenvError(f"{bad.describe()}; cannot move {bad.entry} aside ({exc.strerror}): "
                          f"ask whoever administers {bad.entry.parent} to remove it") from None


def _move_aside(entry: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = entry.with_name(f"{QUARANTINE_PREFIX}{entry.name}.{stamp}.{current_user()}")
    n = 0
    while True:
        try:
            os.rename(entry, target)
            return target
        except FileExistsError:
            n += 1
            target = entry.with_name(f"{QUARANTINE_PREFIX}{entry.name}.{stamp}.{n}")
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:  # a non-empty dir of that name is there
                raise
            n += 1
            target = entry.with_name(f"{QUARANTINE_PREFIX}{entry.name}.{stamp}.{n}")
