"""Job inputs on the remote: the local files a command names (spec, lock, script) are placed
where the remote hpcenv can read them.

A file inside a ``--sync`` tree is already there (``PathMap``); any other file travels to
``WORKDIR/inputs/<hash of names and contents>/``: a queued job still reads its own script when it
starts, however many submits follow, and identical inputs are sent once.
"""

from __future__ import annotations

import argparse
import hashlib
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.jobs.submit import find_env_file
from hpcenv.remote.sync import remote_manifest

if TYPE_CHECKING:
    from hpcenv.remote.session import RemoteSession


# Parsed argument names (argparse dests) that may name a local file the remote side needs.
_FILE_DESTS = ("file", "from_lock", "env_file", "script")


@dataclass(frozen=True)
class PathMap:
    """Where local directories live on the remote after ``--sync`` (local root -> remote root)."""

    roots: tuple[tuple[Path, str], ...] = ()

    def remote_path(self, local: Path) -> str | None:
        local = local.resolve()
        for root, remote_root in self.roots:
            if local == root:
                return remote_root
            if root in local.parents:
                return posixpath.join(remote_root, local.relative_to(root).as_posix())
        return None


@dataclass(frozen=True)
class PlacedInput:
    """A local file a parsed argument names (``dest``, given as ``value``) and its remote path."""

    dest: str
    value: str
    remote_path: str


def _inputs_dir(session: RemoteSession, files: Sequence[Path]) -> str:
    """The remote directory for uploaded ``files``, named after their names and contents.

    A queued job reads its script when it starts, so a later command must never overwrite it:
    other contents get another directory, while the same contents map to the same one and are
    not sent again.
    """
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return posixpath.join(session.workdir(), "inputs", digest.hexdigest()[:16])


def _place(session: RemoteSession, files: Sequence[Path]) -> str:
    """Upload ``files`` (distinct names) together into their inputs dir; return the dir."""
    remote_dir = _inputs_dir(session, files)
    present = remote_manifest(session, remote_dir)
    for local in files:
        # Uploads are atomic, so a file of the right size in a content-named dir is complete.
        stat = present.get(local.name)
        if stat is not None and stat.size == local.stat().st_size:
            session.debug(f"hpcenv: {local} is already on {session.target} ({remote_dir})")
            continue
        remote_path = posixpath.join(remote_dir, local.name)
        session.info(f"hpcenv: uploading {local} to {session.target}:{remote_path}")
        session.upload(local, remote_path)
    return remote_dir


def _env_file_for(args: argparse.Namespace) -> Path | None:
    """The env file a local ``submit --env NAME`` would find (next to the script or in the
    working dir), when no ``--env-file`` is given: the remote submit builds a missing env from
    it the first time, as a local one would."""

    if not getattr(args, "env", None) or getattr(args, "env_file", None) \
            or not isinstance(getattr(args, "script", None), (str, Path)):
        return None
    script = Path(args.script).expanduser()
    if not script.is_file():
        return None
    return find_env_file(args.env, [script.resolve().parent, Path.cwd()])


def upload_inputs(session: RemoteSession, args: argparse.Namespace,
                  paths: PathMap = PathMap()) -> list[PlacedInput]:
    """Put on the remote the local files the command names (spec, lock, script); return where.

    A file inside a synced directory is already there; any other file is uploaded into a
    content-named dir under the remote workdir (with the env file a local submit would find
    placed next to the script, where the remote submit looks for it).  Remote paths are absolute.
    """
    env_file = _env_file_for(args)
    placed: list[PlacedInput] = []
    for dest in _FILE_DESTS:
        value = getattr(args, dest, None)
        if value is None or not isinstance(value, (str, Path)):
            continue
        local = Path(value).expanduser()
        if not local.is_file():
            continue
        remote_path = paths.remote_path(local)
        if remote_path is None:
            group = [local]
            if dest == "script" and env_file is not None and env_file.name != local.name:
                group.append(env_file)
            remote_path = posixpath.join(_place(session, group), local.name)
        elif dest == "script" and env_file is not None and paths.remote_path(env_file) is None:
            # The script was synced but its env file lies outside every synced tree.
            target = posixpath.join(posixpath.dirname(remote_path), env_file.name)
            session.info(f"hpcenv: uploading env file {env_file} to {session.target}:{target}")
            session.upload(env_file, target)
        placed.append(PlacedInput(dest, str(value), remote_path))
    return placed
