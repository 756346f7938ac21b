"""Job inputs on the remote: the local files a command names (spec, lock, script) are placed
where the remote hpcenv can read them.

A file inside a ``--sync`` tree is already there (``PathMap``); any other file travels to
``WORKDIR/inputs/<hash of names and contents>/``: a queued job still reads its own script when it
starts, however many submits follow, and identical inputs are sent once.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.jobs.submit import find_env_file
from hpcenv.remote.sync import remote_manifest

if TYPE_CHECKING:
    from hpcenv.remote.session import RemoteSession


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


def _env_file_for(script: Path, env_name: str) -> Path | None:
    """The env file a local ``submit --env NAME SCRIPT`` would find (next to the script or in
    the working dir): the remote submit builds a missing env from it the first time, as a local
    one would."""
    return find_env_file(env_name, [script.resolve().parent, Path.cwd()])


def upload_inputs(session: RemoteSession, files: Mapping[str, Path], paths: PathMap = PathMap(),
                  *, script_env: str | None = None) -> dict[str, str]:
    """Put on the remote the local ``files`` a command names (by argument: spec, lock, script);
    return each one's absolute remote path, by the same key.

    A file inside a synced directory is already there; any other file is uploaded into a
    content-named dir under the remote workdir.  With ``script_env`` (a submit's env name, when
    it gives no env file), the env file a local submit would find for that name is placed next
    to the ``script``, where the remote submit looks for it.
    """
    script = files.get("script")
    env_file = _env_file_for(script, script_env) if script and script_env else None
    placed: dict[str, str] = {}
    for key, local in files.items():
        remote_path = paths.remote_path(local)
        if remote_path is None:
            group = [local]
            if key == "script" and env_file is not None and env_file.name != local.name:
                group.append(env_file)
            remote_path = posixpath.join(_place(session, group), local.name)
        elif key == "script" and env_file is not None and paths.remote_path(env_file) is None:
            # The script was synced but its env file lies outside every synced tree.
            target = posixpath.join(posixpath.dirname(remote_path), env_file.name)
            session.info(f"hpcenv: uploading env file {env_file} to {session.target}:{target}")
            session.upload(env_file, target)
        placed[key] = remote_path
    return placed
