"""Where builds live on disk, and the locks that guard them.

Layout under the first ``envs_dir`` (``E``)::

    E/NAME -> .hpcenv/builds/NAME-V-KEY12        symlink: the current version (conda-activatable)
    E/.hpcenv/builds/NAME-V-KEY12/               one prefix per build (prefixes are not
                                                 relocatable, so each is installed in place)
    E/.hpcenv/builds/NAME-V-KEY12/.hpcenv-complete   completion marker, written last
    E/.hpcenv/locks/KEY.lock                     one build lock per key (the flock/clock
    E/.hpcenv/locks/KEY.lock.lease/              file, and the lease dir while it is held;
                                                 see hpcenv.store.locking)

``E/.hpcenv/locks`` is the lab's alone (``dir_mode`` without access for others, lock files
0660): whoever can open a lock file can flock it, and a flock held by someone outside the lab
would stall every builder on that node.

The package cache (the site's first ``pkgs_dir``) has ``.hpcenv-cache.lock``, which orders
installs against ``env gc`` (with ``.hpcenv-cache.lock.lease/`` and ``.hpcenv-cache.lock.readers/``
next to it while held).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hpcenv.fsutil import ensure_shared_dir, lab_only_mode
from hpcenv.store.locking import BuildLock, CacheLock, LockHolder, LockMethod
from hpcenv.store.registry import Registry

MARKER = ".hpcenv-complete"
CACHE_LOCK = ".hpcenv-cache.lock"


@dataclass(frozen=True)
class LockPolicy:
    """How every lock of the store is taken (the site's ``locks:``)."""

    method: LockMethod
    timeout: float                 # seconds a waiter waits
    stale_after: float | None      # seconds without a heartbeat before a holder counts as dead
    heartbeat: float               # seconds between a holder's lease renewals


@dataclass(frozen=True)
class Store:
    """The shared store as the store and build layers see it: where things live, who owns
    them, how locks are taken.  Built once from the site config at the edge
    (:func:`hpcenv.store.store_for`), so the layers below never read the whole site config."""

    envs_dirs: tuple[Path, ...]    # the first is where hpcenv builds and links names
    pkgs_dir: Path                 # the package cache hpcenv writes (hardlinked into envs)
    registry_root: Path
    locks: LockPolicy
    group: str | None = None       # given to everything hpcenv creates in shared dirs
    dir_mode: int | None = None
    admins: tuple[str, ...] = ()   # who may change any env (see hpcenv.store.ownership)
    modules_dir: Path | None = None
    modules_on_publish: bool = False
    packs_dir: Path | None = None  # env packs; None: envs_dir/.hpcenv/packs
    source: str = "the site config"   # where these settings come from, for messages

    @property
    def envs_dir(self) -> Path:
        return self.envs_dirs[0]

    def registry(self) -> Registry:
        """The lab registry, with the store's lock policy (the per-name lock is only held for a
        few file writes, but a waiter behind a slow shared filesystem gets the same patience
        as a build lock) and permissions.  Refused when the registry records builds of
        another ``envs_dirs[0]`` (see :meth:`Registry.check_store`)."""
        registry = Registry(self.registry_root, lock_method=self.locks.method,
                            lock_timeout=self.locks.timeout,
                            lock_stale_after=self.locks.stale_after,
                            lock_heartbeat=self.locks.heartbeat, group=self.group,
                            dir_mode=self.dir_mode, envs_dir=self.envs_dir)
        registry.check_store(self.source)
        return registry


def builds_dir(store: Store) -> Path:
    return store.envs_dir / ".hpcenv" / "builds"


def locks_dir(store: Store) -> Path:
    return store.envs_dir / ".hpcenv" / "locks"


def env_link(store: Store, name: str) -> Path:
    return store.envs_dir / name


def key_lock(store: Store, key: str, *, doing: str = "",
             on_wait: Callable[[LockHolder | None], None] | None = None,
             timeout: float | None = None) -> BuildLock:
    """The build lock of ``key`` with the store's lock policy; ``doing`` tells waiters what
    the holder does ("building NAME")."""
    # .hpcenv is as public as the store (builds are read by everyone the site lets in); only
    # its locks dir is the lab's alone.
    ensure_shared_dir(locks_dir(store).parent, mode=store.dir_mode, group=store.group)
    return BuildLock(locks_dir(store) / f"{key}.lock", method=store.locks.method,
                     timeout=store.locks.timeout if timeout is None else timeout,
                     stale_after=store.locks.stale_after, heartbeat=store.locks.heartbeat,
                     on_wait=on_wait, dir_mode=lab_only_mode(store.dir_mode), group=store.group,
                     doing=doing)


def cache_lock(store: Store, pkgs_dir: Path, *,
               on_wait: Callable[[str], None] | None = None) -> CacheLock:
    """The lock that keeps ``env gc`` out of ``pkgs_dir`` while installs link from it."""
    return CacheLock(Path(pkgs_dir) / CACHE_LOCK, method=store.locks.method,
                     timeout=store.locks.timeout, stale_after=store.locks.stale_after,
                     heartbeat=store.locks.heartbeat, on_wait=on_wait,
                     dir_mode=store.dir_mode, group=store.group)


def is_complete(prefix: Path | str) -> bool:
    """Whether ``prefix`` is a finished build (its completion marker exists)."""
    return (Path(prefix) / MARKER).is_file()


def prefix_usage(prefix: Path) -> tuple[int, int]:
    """Apparent bytes (each inode once) and number of non-directory entries under ``prefix``."""
    seen: set[int] = set()
    size = count = 0
    for root, dirs, files in os.walk(prefix):
        for entry in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            st = os.lstat(os.path.join(root, entry))
            count += 1
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                size += st.st_size
    return size, count
