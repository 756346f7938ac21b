"""Where builds live on disk, and the locks that guard them.

Layout under the first ``envs_dir`` (``E``)::

    E/NAME -> .hpcenv/builds/NAME-V-KEY12        symlink: the current version (conda-activatable)
    E/.hpcenv/builds/NAME-V-KEY12/               one prefix per build (prefixes are not
                                                 relocatable, so each is installed in place)
    E/.hpcenv/builds/NAME-V-KEY12/.hpcenv-complete   completion marker, written last
    E/.hpcenv/locks/KEY.lock                     one build lock per key (the flock/clock
    E/.hpcenv/locks/KEY.lock.lease/              file, and the lease dir while it is held;
                                                 see hpcenv.store.locking)

The package cache (the site's first ``pkgs_dir``) has ``.hpcenv-cache.lock``, which orders
installs against ``env gc`` (with ``.hpcenv-cache.lock.lease/`` and ``.hpcenv-cache.lock.readers/``
next to it while held).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.store.locking import BuildLock, CacheLock, LockHolder

if TYPE_CHECKING:
    from hpcenv.site.config import SiteConfig

MARKER = ".hpcenv-complete"
CACHE_LOCK = ".hpcenv-cache.lock"


def envs_dir(site: SiteConfig) -> Path:
    return Path(site.envs_dirs[0])


def builds_dir(site: SiteConfig) -> Path:
    return envs_dir(site) / ".hpcenv" / "builds"


def locks_dir(site: SiteConfig) -> Path:
    return envs_dir(site) / ".hpcenv" / "locks"


def env_link(site: SiteConfig, name: str) -> Path:
    return envs_dir(site) / name


def key_lock(site: SiteConfig, key: str, *, on_wait: Callable[[LockHolder | None], None] | None = None,
             timeout: float | None = None) -> BuildLock:
    """The build lock of ``key`` with the site's lock settings."""
    return BuildLock(locks_dir(site) / f"{key}.lock", method=site.locks.method,
                     timeout=site.locks.timeout if timeout is None else timeout,
                     stale_after=site.locks.stale_after, heartbeat=site.locks.heartbeat,
                     on_wait=on_wait, dir_mode=site.permissions.dir_mode,
                     group=site.permissions.group)


def cache_lock(site: SiteConfig, pkgs_dir: Path, *,
               on_wait: Callable[[], None] | None = None) -> CacheLock:
    """The lock that keeps ``env gc`` out of ``pkgs_dir`` while installs link from it."""
    return CacheLock(Path(pkgs_dir) / CACHE_LOCK, method=site.locks.method,
                     timeout=site.locks.timeout, stale_after=site.locks.stale_after,
                     heartbeat=site.locks.heartbeat, on_wait=on_wait,
                     dir_mode=site.permissions.dir_mode, group=site.permissions.group)


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


def prefix_unique_bytes(prefix: Path) -> int:
    """Bytes of the files under ``prefix`` that nothing outside it links (what removing it
    frees); the rest are hardlinks shared with the package cache and other envs."""
    inodes: dict[int, list[int]] = {}  # inode -> [size, links seen here, links in total]
    for root, _dirs, files in os.walk(prefix):
        for entry in files:
            st = os.lstat(os.path.join(root, entry))
            if not stat.S_ISREG(st.st_mode):
                continue
            seen = inodes.setdefault(st.st_ino, [st.st_size, 0, st.st_nlink])
            seen[1] += 1
    return sum(size for size, here, total in inodes.values() if here >= total)
