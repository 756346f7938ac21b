"""Crash debris: what a killed builder leaves behind, and how it is found and cleaned.

A build prefix without a completion marker whose builder is provably gone is debris (a crashed
builder); its record is marked ``failed`` and the prefix removed.  "Provably gone" is what the
key's lease lock says (:mod:`hpcenv.store.locking`): nobody holds it, or its holder ran on this
host and its pid is dead, or its holder's heartbeat stopped ``locks.stale_after`` seconds ago.
A build in progress on another login node is never debris: its builder keeps renewing its lease.
A crashed builder's complete build (killed between the marker and the registry update) is
adopted: marked ``ready``.  The builder cleans its own key's debris under that key's lock
before building (:func:`clean_name_debris`: its env's debris, through the name's index and one
listing of the builds dir, never every record); ``env gc`` cleans everything (:func:`clean_debris`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.store.layout import (
    builds_dir,
    is_complete,
    key_lock,
    locks_dir,
    prefix_usage,
)
from hpcenv.store.locking import clean_lock_debris
from hpcenv.store.registry import EnvRecord, Registry

if TYPE_CHECKING:
    from hpcenv.store.layout import Store


def force_rmtree(path: Path) -> None:
    """Remove a (possibly read-only) build prefix; missing is fine."""
    path = Path(path)
    if path.is_symlink():
        path.unlink()
        return
    if not path.exists():
        return

    def make_writable_and_retry(func: Callable[[str], object], failed: str, _info: object) -> None:
        parent = os.path.dirname(failed)
        os.chmod(parent, stat.S_IMODE(os.lstat(parent).st_mode) | 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, stat.S_IMODE(os.lstat(failed).st_mode) | 0o700)
        func(failed)

    # Unlock directories first: rmtree cannot even list a dir we made read-only for ourselves.
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                os.chmod(full, stat.S_IMODE(os.lstat(full).st_mode) | 0o700)
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) | 0o700)
    shutil.rmtree(path, onerror=make_writable_and_retry)


def find_debris(store: Store, *, registry: Registry | None = None,
                held_key: str | None = None) -> list[tuple[Path, EnvRecord | None]]:
    """Build prefixes that are not finished builds and that no live builder is working on.

    A prefix without completion marker is debris when its registry record is ``failed`` or
    ``retired``, when it has no record, or when its record is ``building`` but the key lock is
    free (or is ``held_key``, the lock the caller holds).
    """
    registry = registry or store.registry()
    builds = builds_dir(store)
    if not builds.is_dir():
        return []
    # List the prefixes before reading the records: a builder writes its record before it
    # creates its prefix, so every prefix listed here has its record in what we read next.
    paths = sorted(builds.iterdir())
    by_prefix = {os.path.realpath(r.prefix): r for r in registry.records()}
    found = []
    for path in paths:
        if path.name.startswith(".") or is_complete(path):
            continue
        record = by_prefix.get(os.path.realpath(path))
        if record is not None and record.status == "building" and builder_alive(store, record,
                                                                                  held_key):
            continue
        found.append((path, record))
    return found


def builder_alive(store: Store, record: EnvRecord, held_key: str | None = None) -> bool:
    """Whether a builder may still be working on ``record``: someone holds its key lock and is
    not provably gone (taking the lock breaks an abandoned lease, so False means proven dead).
    ``held_key`` is the caller's own lock: whoever wrote a ``building`` record under it is gone."""
    if record.key == held_key:
        return False  # the caller holds this key's lock: whoever wrote the record is gone
    lock = key_lock(store, record.key, timeout=0,
                    doing=f"checking whether the builder of {record.name} version "
                          f"{record.version} is alive")
    if not lock.try_acquire():
        return True
    lock.release()
    return False


def clean_lock_places(store: Store) -> list[Path]:
    """Remove what killed lock takers left (staging dirs older than ``locks.stale_after``) in
    every place hpcenv keeps locks: build locks, the package cache, the registry's names."""
    places = [locks_dir(store), store.pkgs_dir, store.registry_root]
    if store.registry_root.is_dir():
        places += [p for p in store.registry_root.iterdir() if p.is_dir()]
    return [path for place in places
            for path in clean_lock_debris(place, stale_after=store.locks.stale_after)]


def _adopt(registry: Registry, record: EnvRecord) -> EnvRecord:
    prefix = Path(record.prefix)
    size, count = prefix_usage(prefix)
    packages = len(list((prefix / "conda-meta").glob("*.json")))
    return registry.update(replace(record, status="ready", size_bytes=size, file_count=count,
                                   packages=packages))


def clean_name_debris(store: Store, name: str, *, registry: Registry | None = None,
                      held_key: str | None = None) -> list[Path]:
    """:func:`clean_debris` for the builds of one env ``name`` (what its builder does under a
    key lock, ``held_key``): found through the name's index and one listing of the builds
    dir, never by reading every record of the registry, so a build costs the same in a
    registry of 10 or 10,000 envs.  Other names' leftovers are their builders' and
    ``env gc``'s."""
    registry = registry or store.registry()
    for place in (locks_dir(store), store.registry_root / name):
        clean_lock_debris(place, stale_after=store.locks.stale_after)
    # Only a "building" version's prefix or record may be debris (or a build to adopt).
    building = {os.path.basename(e.prefix): e for e in registry.entries(name, "building")}

    def dead_builder(version: int) -> EnvRecord | None:
        """The record of ``version`` if it is ``building`` and its builder is gone."""
        record = registry.get(name, version)
        if record.status != "building" or builder_alive(store, record, held_key):
            return None
        return record

    # A builder killed between its completion marker and marking the record ready left a
    # verified build: adopt it rather than leave a "building" ghost that gc must keep forever.
    for entry in building.values():
        if is_complete(entry.prefix):
            if (record := dead_builder(entry.version)) is not None:
                _adopt(registry, record)
    # The builder names prefixes NAME-V-KEY12.
    named = re.compile(rf"{re.escape(name)}-\d+-[0-9a-f]{{12}}")
    builds = builds_dir(store)
    removed = []
    for path in sorted(builds.iterdir()) if builds.is_dir() else ():
        if not named.fullmatch(path.name) or is_complete(path):
            continue
        entry = building.get(path.name)
        if entry is not None:
            if dead_builder(entry.version) is None:
                continue   # a live builder's prefix
            registry.set_status(name, entry.version, "failed")
        force_rmtree(path)
        removed.append(path)
    # A builder killed between allocating its version and creating its prefix left only a record.
    for entry in building.values():
        if not os.path.lexists(entry.prefix):
            if dead_builder(entry.version) is not None:
                registry.set_status(name, entry.version, "failed")
    return removed


def clean_debris(store: Store, *, registry: Registry | None = None,
                 held_key: str | None = None) -> list[Path]:
    """Remove :func:`find_debris` prefixes and mark dead builders' ``building`` records
    ``failed`` (also those that never got as far as creating a prefix); a dead builder's
    ``building`` record whose prefix is complete is marked ``ready`` instead."""
    registry = registry or store.registry()
    clean_lock_places(store)
    removed = []
    # A builder killed between its completion marker and marking the record ready left a
    # verified build: adopt it rather than leave a "building" ghost that gc must keep forever.
    for record in registry.records():
        if (record.status == "building" and is_complete(record.prefix)
                and not builder_alive(store, record, held_key)):
            _adopt(registry, record)
    for path, owner in find_debris(store, registry=registry, held_key=held_key):
        if owner is not None and owner.status == "building":
            registry.set_status(owner.name, owner.version, "failed")
        force_rmtree(path)
        removed.append(path)
    # A builder killed between allocating its version and creating its prefix left only a record.
    for record in registry.records():
        if (record.status == "building" and not os.path.lexists(record.prefix)
                and not builder_alive(store, record, held_key)):
            registry.set_status(record.name, record.version, "failed")
    return removed
