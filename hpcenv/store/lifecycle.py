"""An env's lifecycle after its build: publish, rollback, removal.

Publishing makes a ready build current: registry ``current`` first (the source of truth), then
the ``envs_dir/NAME`` symlink (a temp symlink renamed over it).  A crash between the two steps
leaves ``current`` ahead of the symlink, both pointing at complete builds; the next build of
either spec (``reused`` checks the symlink too), a rollback or :func:`sync_link` repairs it,
and ``hpcenv run -n`` follows the registry meanwhile.  :func:`rollback`, :func:`remove_version`
and :func:`remove_env` change ``current`` the same way (:func:`_switch_current`), under the
registry's per-name lock.  Each change also brings the env's Lmod modules in step
(:func:`hpcenv.store.modules.sync_env_modules`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.errors import HpcenvError, NotFound
from hpcenv.fsutil import user_name
from hpcenv.scheduler.build_use import BuildJob, BuildUse, BuildUseLookup, describe
from hpcenv.store.debris import builder_alive, force_rmtree
from hpcenv.store.layout import env_link, is_complete, key_lock
from hpcenv.store.locking import LockHolder, describe_holder
from hpcenv.store.modules import sync_env_modules
from hpcenv.store.ownership import Actor, env_owner, user_of
from hpcenv.store.registry import EnvRecord, Registry

if TYPE_CHECKING:
    from hpcenv.store.layout import Store


def publish(store: Store, registry: Registry, record: EnvRecord, *,
            only_if_none: bool = False) -> int | None:
    """Make ``record`` the current version: registry first, then the ``envs_dir/NAME`` symlink.
    Returns the version current before (None: none).  ``only_if_none``: change nothing when
    another version is current (decided under the name lock, so two publishers cannot race)."""
    with registry.name_lock(record.name,
                            doing=f"publishing {record.name} version {record.version}"):
        previous = registry.current_version(record.name)
        if only_if_none and previous is not None:
            return previous
        _switch_current(store, registry, record.name, record)
    return previous


def _switch_current(store: Store, registry: Registry, name: str,
                    record: EnvRecord | None) -> None:
    """Make ``record`` (None: nothing) current: the registry's ``current`` first (the source of
    truth), then the ``envs_dir/NAME`` symlink.  The caller holds the registry's name lock.
    An ``envs_dir/NAME`` hpcenv did not make is refused before anything moves."""
    if record is not None:
        check_link_is_ours(store, name)
    registry.set_current(name, record.version if record is not None else None)
    _point_link(store, name, Path(record.prefix) if record is not None else None)
    sync_env_modules(store, registry, name)  # the Lmod tree is another view of "current"


def link_points_to(store: Store, name: str, prefix: Path | str) -> bool:
    """Whether ``envs_dir/NAME`` is a symlink resolving to ``prefix``."""
    link = env_link(store, name)
    return link.is_symlink() and os.path.realpath(link) == os.path.realpath(prefix)


def _point_link(store: Store, name: str, prefix: Path | None) -> None:
    """Switch ``envs_dir/NAME``; the caller holds the registry's name lock."""
    link = env_link(store, name)
    # Under the name lock a temp link is always a killed publisher's leftover.
    for stale in link.parent.glob(f".{name}.link-*"):
        stale.unlink(missing_ok=True)
    if prefix is None:
        if link.is_symlink():
            link.unlink()
        return
    check_link_is_ours(store, name)
    target = os.path.relpath(prefix, link.parent)
    tmp = link.with_name(f".{name}.link-{os.getpid()}-{os.urandom(4).hex()}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sync_link(store: Store, name: str) -> Path | None:
    """Rewrite ``envs_dir/NAME`` from the registry's current version (repairs a crash between the
    two publish steps); returns the prefix it points at."""
    registry = store.registry()
    with registry.name_lock(name, doing=f"repairing the {name} link"):
        current = registry.current(name)
        prefix = Path(current.prefix) if current is not None else None
        _point_link(store, name, prefix)
    return prefix


def rollback(store: Store, name: str, to_version: int | None = None, *,
             on_wait: Callable[[str], None] | None = None) -> EnvRecord:
    """Make an earlier ready version current (default: the newest ready one before current).
    Only the env's owner or an admin may (see :mod:`hpcenv.store.ownership`).  ``on_wait``
    hears who holds the name while we wait for it."""
    registry = store.registry()
    versions = _require_env(registry, name)
    Actor.current(store.admins).check(env_owner(versions), name,
                                                 "change its current version")
    with registry.name_lock(name, doing=f"rolling back {name}", on_wait=on_wait):
        current = registry.current_version(name)
        if to_version is None:
            if current is None:
                raise NotFound(f"environment {name!r} has no current version to roll back from; "
                               f"pick one with --to VERSION (see 'hpcenv env history {name}')")
            older = [r for r in registry.versions(name) if r.version < current
                     and r.status == "ready" and is_complete(r.prefix)]
            if not older:
                raise HpcenvError(f"{name}: no ready version older than {current} to roll back "
                                  f"to; see 'hpcenv env history {name}'")
            record = older[-1]
        else:
            record = registry.get(name, to_version)
            if record.status != "ready" or not is_complete(record.prefix):
                what = (f"is {record.status}, not a ready build" if record.status != "ready"
                        else f"has no complete build at {record.prefix}")
                raise HpcenvError(f"{name} version {to_version} {what}; pick another with "
                                  f"'hpcenv env history {name}' or rebuild it with --from-lock "
                                  f"{record.lock_path}")
        _switch_current(store, registry, name, record)
    return record


def _require_env(registry: Registry, name: str) -> list[EnvRecord]:
    """Every record of ``name``; NotFound naming the registry when it has none."""
    versions = registry.versions(name)
    if not versions:
        raise NotFound(f"no environment {name!r} in the registry {registry.root}; "
                       "see 'hpcenv env list'")
    return versions


def _usable(record: EnvRecord) -> bool:
    return record.status == "ready" and is_complete(record.prefix)


def ask_build_use(jobs_using: BuildUseLookup | None, *, force: bool, what: str,
                  on_warning: Callable[[str], None] | None) -> BuildUse | None:
    """Which jobs run in which build, before deleting ``what``; None when nobody can say
    (no lookup given).  A scheduler that cannot be asked refuses the removal, unless
    ``force``: then deleting goes ahead blind, and ``on_warning`` hears what that risks."""
    if jobs_using is None:
        return None
    try:
        return jobs_using()
    except HpcenvError as exc:
        reason = str(exc).rstrip(".")
        if not force:
            raise HpcenvError(f"cannot ask the scheduler whether a pending or running job runs "
                              f"in {what} ({reason}); nothing removed: try again once it answers, "
                              "or pass --force to delete regardless (such a job would fail)"
                              ) from None
        if on_warning is not None:
            on_warning(f"the scheduler does not answer ({reason}); deleting {what} anyway "
                       "(--force): a pending or running job in it fails")
        return None


def _jobs_in(use: BuildUse | None, prefix: str) -> tuple[BuildJob, ...]:
    return use.of(prefix) if use is not None else ()


def remove_version(store: Store, name: str, version: int, *, force: bool = False,
                   on_warning: Callable[[str], None] | None = None,
                   jobs_using: BuildUseLookup | None = None,
                   on_wait: Callable[[str], None] | None = None) -> EnvRecord:
    """Retire ``version`` of ``name`` and delete its prefix; refuses the current one unless
    ``force`` (then the newest other ready version becomes current, or none), and a version
    whose builder is still at work.  A ``failed`` version, or a ``building`` one whose builder
    died (Ctrl-C, a killed job), is retired like any other.

    Each version has its own prefix, so deleting one never removes a file another version uses:
    files shared through the package cache are hardlinks and only lose one link; a prefix that
    another live record also names is kept.  The record and its lockfile stay as history
    (status ``retired``).  Files this user may not delete (an admin removing a member's build)
    stay, whole, until their owner's or root's ``env gc``; ``on_warning`` hears so.

    ``jobs_using`` (see :mod:`hpcenv.scheduler.build_use`) says which pending or running jobs,
    of anyone, run in which build: a version some job runs in is retired at once (no longer
    current or resolvable) but its files stay until a later ``env gc`` finds no job in it;
    ``on_warning`` names the jobs.  When the scheduler cannot be asked nothing is removed,
    unless ``force`` (see :func:`ask_build_use`).  ``on_wait`` hears who holds a lock we wait
    for.
    """
    registry = store.registry()
    record = registry.get(name, version)
    actor = Actor.current(store.admins)
    owner = env_owner(registry.versions(name))
    if user_of(record.creator) != actor.user or version == registry.current_version(name):
        # Anyone may clear away a version of their own that nobody runs as current.
        actor.check(owner, name, f"remove version {version}" + (
            " (its current version)" if version == registry.current_version(name) else ""))
    # Asked before anything changes: a refusal leaves the version as it was.  Only a
    # complete build can have been submitted to, so a failed one needs no answer.
    use = ask_build_use(jobs_using if is_complete(record.prefix) else None, force=force,
                        what=f"{name} version {version}", on_warning=on_warning)
    doing = f"removing {name} version {version}"
    lock = key_lock(store, record.key, timeout=0, doing=doing)
    if not lock.try_acquire():
        if registry.get(name, version).status == "building":
            raise HpcenvError(f"{name} version {version} is still being built by "
                              f"{describe_holder(lock.holder())}; wait for it ('hpcenv env "
                              f"history {name}' shows when it is ready)")

        def waiting(holder: LockHolder | None) -> None:
            if on_wait is not None:
                on_wait(f"waiting for {describe_holder(holder)}")

        # A builder of another version of this key: wait.
        lock = key_lock(store, record.key, doing=doing, on_wait=waiting)
        lock.acquire()
    try:
        with registry.name_lock(name, doing=doing, on_wait=on_wait):
            record, shared = _retire_locked(store, registry, name, version, force)
    finally:
        lock.release()
    if jobs := _jobs_in(use, record.prefix):
        if on_warning is not None:
            on_warning(f"retired {name} version {version}; its files at {record.prefix} stay "
                       f"while {describe(jobs)} run{'s' if len(jobs) == 1 else ''} in them: "
                       "'hpcenv env gc' removes them once no job does")
    elif not shared:
        try:
            force_rmtree(Path(record.prefix))
        except PermissionError:
            # force_rmtree unlocks every directory before deleting anything, so a refusal
            # leaves the prefix whole; the record is retired, so gc finds it.
            owner = _file_owner(Path(record.prefix))
            if on_warning is not None:
                on_warning(f"retired {name} version {version}; its files at {record.prefix} "
                           f"belong to {owner} and stay until {owner} (or root) runs "
                           "'hpcenv env gc'")
    return record


def _file_owner(path: Path) -> str:
    try:
        return user_name(path.stat().st_uid)
    except OSError:
        return "another user"


def _retire_locked(store: Store, registry: Registry, name: str, version: int,
                   force: bool) -> tuple[EnvRecord, bool]:
    """The part of :func:`remove_version` under the key and name locks: the retired record
    and whether another live record names its prefix (which then stays)."""
    record = registry.get(name, version)
    current = registry.current_version(name)
    if version == current and not force:
        ready = [r.version for r in registry.versions(name)
                 if r.version != version and _usable(r)]
        if ready:
            older = [v for v in ready if v < version]
            to = older[-1] if older else ready[-1]
            raise HpcenvError(f"{name} version {version} is the current version; make another "
                              f"current first ('hpcenv env rollback {name} --to {to}') or pass "
                              "--force")
        raise HpcenvError(f"{name} version {version} is the current version and no other "
                          f"version is ready; pass --force to remove it ({name} then has no "
                          "current version)")
    if version == current:
        # current moves before the record is retired: a crash in between leaves a ready
        # version that is not current, never a current one that is retired.
        others = [r for r in registry.versions(name) if r.version != version and _usable(r)]
        _switch_current(store, registry, name, others[-1] if others else None)
    elif link_points_to(store, name, record.prefix):
        # A publisher died before switching the symlink: repair it before the prefix goes.
        current_record = registry.current(name)
        _point_link(store, name, Path(current_record.prefix) if current_record else None)
    record = registry.set_status(name, version, "retired")
    # Versions never share a prefix when hpcenv made them, but a registry edited by hand
    # (or restored from backup) might: a prefix another live record names stays.
    target = os.path.realpath(record.prefix)
    shared = any(r.status in ("ready", "building") and os.path.realpath(r.prefix) == target
                 for r in registry.records())
    sync_env_modules(store, registry, name)  # the retired version's modulefile goes
    return record, shared


def remove_env(store: Store, name: str, *, force: bool = False,
               on_warning: Callable[[str], None] | None = None,
               jobs_using: BuildUseLookup | None = None,
               on_wait: Callable[[str], None] | None = None) -> list[EnvRecord]:
    """Retire every version of ``name`` that is not retired yet with :func:`remove_version`,
    the current one last so the env stays usable until the very end.  Ready versions are only
    removed with ``force``; failed ones and those a dead builder left ``building`` need none.
    Refused while a builder of ``name`` is at work.  Builds a job runs in are kept, as by
    :func:`remove_version` (the scheduler is asked once).  Returns the retired records."""
    registry = store.registry()
    versions = _require_env(registry, name)
    Actor.current(store.admins).check(env_owner(versions), name, "remove it")
    left = [r for r in versions if r.status != "retired"]
    if not left:
        raise NotFound(f"environment {name!r} has no version left to remove (all are retired; "
                       f"see 'hpcenv env history {name}')")
    busy = [r.version for r in left if r.status == "building" and builder_alive(store, r, None)]
    if busy:
        raise HpcenvError(f"{name} version {busy[0]} is still being built; wait for it, then "
                          f"run 'hpcenv env rm {name}' again")
    ready = [r.version for r in left if r.status == "ready"]
    current = registry.current_version(name)
    if ready and not force:
        which = ", ".join(map(str, ready))
        also = f", the current version {current} included" if current in ready else ""
        raise HpcenvError(f"removing {name} removes its ready version(s) {which}{also}; pass "
                          "--force, or --version V for one")
    runnable = any(is_complete(r.prefix) for r in left)
    use = ask_build_use(jobs_using if runnable else None, force=force, what=f"the builds of {name}",
                        on_warning=on_warning)
    asked: BuildUseLookup | None = (lambda: use) if use is not None else None
    return [remove_version(store, name, r.version, force=True, on_warning=on_warning,
                           jobs_using=asked, on_wait=on_wait)
            for r in sorted(left, key=lambda r: r.version == current)]


def check_link_is_ours(store: Store, name: str) -> None:
    """Refuse an ``envs_dir/NAME`` that hpcenv did not make: publishing would replace it."""
    link = env_link(store, name)
    if link.exists() and not link.is_symlink():
        raise HpcenvError(f"{link} exists and is not an hpcenv-managed symlink (a conda env made "
                          f"some other way?); move it away or build under another --name")
