"""The locked builder: each environment is built once, verified, and published atomically.

Where builds live is :mod:`hpcenv.store.layout`; what a build is (its key) :mod:`hpcenv.build.plan`;
publishing, rollback and removal :mod:`hpcenv.store.lifecycle`; crashed builders' leftovers
:mod:`hpcenv.store.debris`.

**Build once.**  A ready build with the key in the registry is returned as ``reused`` without
taking any lock (the fast path: a few file reads, and no import of the engines, the lockfile
module or anything else only a new build needs: that is :mod:`hpcenv.build.installer`).  Otherwise the builder
takes the key's :class:`~hpcenv.store.locking.BuildLock`; late arrivals wait (``on_progress`` gets a
``wait`` :class:`BuildEvent` "waiting for USER@HOST pid N since T") and, woken by its release,
reuse the ready build without taking the lock.  The lock holder starts the engine at once
(:mod:`hpcenv.build.engine_start`), then:

1. cleans its env's debris: builds without a completion marker whose key lock nobody holds (a
   crashed builder), marking their records ``failed``; a crashed builder's complete build
   (killed between the marker and the registry update) is marked ``ready`` and reused.  Other
   envs' debris is left to their builders and ``env gc``: a build never reads every record;
2. allocates a version in the registry (record status ``building``);
3. solves (or reads ``--from-lock``, converting an ``@EXPLICIT`` list to a lockfile first: the
   locked packages then say which CUDA the env needs),
   writes the lockfile into the registry, installs from it into the build prefix with the
   site's first ``pkgs_dir`` as package cache (hardlinks), holding the cache's
   :class:`~hpcenv.store.locking.CacheLock` shared so ``env gc`` cannot clean entries mid-install;
4. writes ``conda-meta/state`` (the spec's ``variables``), runs the ``pip:`` section with the
   env's own ``python -m pip`` and the site's pip settings;
5. verifies: every ``conda-meta`` record's files exist and the env's python runs from the prefix;
6. fixes modes: everything readable (rattler writes ``conda-meta/*.json`` 0600), nothing
   writable (an edit in a hardlinked env would corrupt the shared cache), group and setgid dirs
   per site ``permissions``; rattler's ``CACHEDIR.TAG`` is kept on purpose: prefixes are
   rebuilt from their lockfile, and backing up hardlinked prefixes would copy the cache;
7. writes the completion marker, marks the record ``ready``, and publishes: registry ``current``
   first (the source of truth), then the ``envs_dir/NAME`` symlink (a temp symlink renamed over it).

A crash at any step leaves the previous version current and its symlink untouched; the half
build is cleaned by the next builder (or ``env gc``).
"""


from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hpcenv.build.plan import plan_build
from hpcenv.build.progress import BuildEvent, Progress, Reporter
from hpcenv.spec.cuda_target import CUDA_JSON, CUDA_OVERRIDE_JSON, CudaTarget
from hpcenv.store import store_for
from hpcenv.store.debris import clean_name_debris
from hpcenv.store.layout import is_complete, key_lock
from hpcenv.store.lifecycle import check_link_is_ours, link_points_to, publish
from hpcenv.store.locking import LockHolder, describe_holder
from hpcenv.store.ownership import Actor, env_owner
from hpcenv.store.registry import EnvRecord

if TYPE_CHECKING:
    from hpcenv.build.engine_start import EngineSession
    from hpcenv.engine.base import Engine, LockedPackage
    from hpcenv.site.config import SiteConfig
    from hpcenv.spec.environment import EnvSpec

__all__ = ["BuildEvent", "BuildPreview", "BuildResult", "Progress", "build_env", "preview_build"]


@dataclass(frozen=True)
class BuildResult:
    """What one build request ended with: the version's record, built or reused."""

    record: EnvRecord
    status: Literal["built", "reused"]
    waited: bool = False                  # waited for another builder's lock
    seconds: float = 0.0
    warnings: tuple[str, ...] = field(default=())
    # Whether this call moved the name's ``current`` to this version, and what was current
    # before (None: nothing): a reuse of an older spec silently undoing a rollback would be a
    # surprise, so callers report it.
    made_current: bool = False
    previous_current: int | None = None

    @property
    def prefix(self) -> Path:
        return Path(self.record.prefix)

    @property
    def current_note(self) -> str | None:
        """"current version is now V (was P)" when this call moved ``current`` off another
        version; None otherwise."""
        if not self.made_current or self.previous_current in (None, self.record.version):
            return None
        return (f"current version is now {self.record.version} "
                f"(was {self.previous_current})")

    def to_dict(self) -> dict[str, object]:
        """The ``env build --json`` object."""
        r = self.record
        return {"name": r.name, "version": r.version, "key": r.key, "prefix": r.prefix,
                "status": self.status, "cuda": CUDA_JSON.encode(r.cuda),
                "cuda_override": CUDA_OVERRIDE_JSON.encode(r.cuda_override),
                "lock": r.lock_path, "waited": self.waited, "seconds": round(self.seconds, 3),
                "warnings": list(self.warnings), "made_current": self.made_current,
                "previous_current": self.previous_current}


def build_env(spec: EnvSpec | None, site: SiteConfig, *, name: str | None = None,
              cuda_override: CudaTarget | None = None, from_lock: Path | None = None,
              engine: Engine | None = None, on_progress: Progress | None = None,
              make_current: bool = True, publish_build: bool = True) -> BuildResult:
    """Build ``spec`` (or recreate ``from_lock``) once, publish it, and return its record.

    ``from_lock``: a lockfile (hpcenv's, conda-lock/pixi) or an ``@EXPLICIT`` list, which is
    first turned into a lockfile (:func:`hpcenv.build.export.lock_from_explicit`).
    ``cuda_override``: None = infer from the spec, else that ``__cuda`` (a version, or none).
    ``make_current``: make the built or reused version the current version of ``name``
    (building a spec means "I want this"; the result's ``made_current``/``previous_current``
    say whether that moved ``current``, e.g. undid a rollback).  False only ensures the build
    exists and never moves an existing ``current`` (``submit`` of a shared env); a name's first
    ready build still becomes current then, as there is nothing to move.  Someone who may not
    change the env (:mod:`hpcenv.store.ownership`) gets the build without it becoming current,
    and a warning that says why.
    ``publish_build``: False builds (or finds) the version and leaves ``current`` and the
    ``envs_dir/NAME`` link alone, even for a name's first build (``env build --no-publish``:
    an experiment; ``hpcenv env rollback NAME --to V`` publishes it later).
    ``on_progress`` receives :class:`BuildEvent` objects.
    """
    started = time.monotonic()
    report = Reporter(on_progress)
    if from_lock is not None:
        from hpcenv.build.installer import lockfile_for  # converting a list is building

        from_lock = lockfile_for(Path(from_lock), spec, site, cuda_override, engine, report,
                                 name)
    plan = plan_build(spec, site, name=name, cuda_override=cuda_override, from_lock=from_lock)
    store = store_for(site)
    registry = store.registry()
    check_link_is_ours(store, plan.name)
    first = registry.first_entry(plan.name)
    owner = env_owner([first] if first is not None else [])
    if make_current and not Actor.current(store.admins).may_change(owner):
        make_current = False
        report.warn(f"{plan.name} belongs to {owner}: this build will not become its current "
                    f"version (only {owner} or the site's admins may change that); run it with "
                    f"'hpcenv submit --env-file' or 'hpcenv run -p PREFIX'")

    def reuse(record: EnvRecord, waited: bool) -> BuildResult | None:
        if not is_complete(record.prefix):
            return None
        previous = registry.current_version(plan.name)
        moved = False
        if not publish_build:
            return BuildResult(record, "reused", waited, time.monotonic() - started,
                               previous_current=previous)
        # The link check heals a builder killed between the two publish steps.
        if (make_current or previous is None) and (
                previous != record.version or not link_points_to(store, plan.name, record.prefix)):
            previous = publish(store, registry, record, only_if_none=not make_current)
            moved = previous != record.version and (make_current or previous is None)
        return BuildResult(record, "reused", waited, time.monotonic() - started,
                           made_current=moved, previous_current=previous)

    found = registry.find_ready(plan.key, plan.name)
    if found is not None and (result := reuse(found, False)) is not None:
        return result

    waited = False

    def on_wait(holder: LockHolder | None) -> None:
        nonlocal waited
        waited = True
        report.wait(f"waiting for {describe_holder(holder)} before building {plan.name}")

    # Imported only now, as the rest of a new build (installer): a reuse starts no engine.
    from hpcenv.build.engine_start import serving_engine

    with ExitStack() as stack:
        lock = key_lock(store, plan.key, on_wait=on_wait,
                        doing=f"building {plan.name}, key {plan.key[:12]}")
        session: EngineSession | None = None
        if lock.try_acquire():
            stack.callback(lock.release)
            # Nobody else builds this key, so this process almost surely will: start the
            # engine now, so its start-up overlaps the debris check and the installer's
            # imports (engine_start's module doc).  Waiters start none.
            session = stack.enter_context(serving_engine(site, store, engine))
        else:
            found = None

            def ready() -> bool:
                nonlocal found
                found = registry.find_ready(plan.key, plan.name)
                return found is not None and is_complete(found.prefix)

            if not lock.acquire(unless=ready):
                # The build waited for is there: reused without the lock, as a hit is, so
                # the waiters of a stampede go on together instead of one after another.
                assert found is not None
                if (result := reuse(found, waited)) is not None:
                    return result
                lock.acquire()   # gone again meanwhile: build it after all
            stack.callback(lock.release)
        # What a waiter usually finds: the build it waited for, reused without more work.
        found = registry.find_ready(plan.key, plan.name)
        if found is not None and (result := reuse(found, waited)) is not None:
            return result
        # Debris before building: it also adopts a finished build whose builder died before
        # marking it ready, which the lookup below then reuses.
        for path in clean_name_debris(store, plan.name, registry=registry, held_key=plan.key):
            report.warn(f"removed debris of a crashed build: {path}")
        found = registry.find_ready(plan.key, plan.name)
        if found is not None:
            if (result := reuse(found, waited)) is not None:
                return result
            registry.set_status(found.name, found.version, "failed")  # marker gone: rebuild
        for note in plan.notes:
            report.step(note)
        # Imported only now: a reuse needs neither the engines nor the lockfile module.
        from hpcenv.build.installer import build_new

        if session is None:   # waited for a builder that left nothing to reuse
            session = stack.enter_context(serving_engine(site, store, engine))
        record, warnings = build_new(spec, site, store, plan, registry, session, from_lock,
                                     report)
        lock.ensure_held()  # a lease broken while we stalled: another builder took over
        if not publish_build:
            return BuildResult(record, "built", waited, time.monotonic() - started,
                               tuple(warnings),
                               previous_current=registry.current_version(plan.name))
        previous = publish(store, registry, record, only_if_none=not make_current)
    return BuildResult(record, "built", waited, time.monotonic() - started, tuple(warnings),
                       made_current=make_current or previous is None,
                       previous_current=previous)


@dataclass(frozen=True)
class BuildPreview:
    """What :func:`build_env` would do, without doing it (``env build --dry-run``): the solved
    packages, the pip entries and variables, and whether a ready build of the key exists."""

    name: str
    key: str
    cuda: CudaTarget
    notes: tuple[str, ...]
    channels: tuple[str, ...]
    packages: tuple[LockedPackage, ...]
    pip: tuple[str, ...]
    variables: dict[str, str]
    existing: int | None            # the ready version with this key, which a build reuses
    current: int | None             # the name's current version now

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "key": self.key, "cuda": CUDA_JSON.encode(self.cuda),
                "notes": list(self.notes),
                "channels": list(self.channels),
                "packages": [{"name": p.name, "version": p.version, "build": p.build,
                              "channel": p.channel, "url": p.url} for p in self.packages],
                "pip": list(self.pip), "variables": self.variables,
                "existing_version": self.existing, "current_version": self.current}


def preview_build(spec: EnvSpec | None, site: SiteConfig, *, name: str | None = None,
                  cuda_override: CudaTarget | None = None, from_lock: Path | None = None,
                  engine: Engine | None = None,
                  on_progress: Progress | None = None) -> BuildPreview:
    """Plan and solve (or read the lock) as :func:`build_env` would, and stop there: nothing
    is installed, no version allocated, nothing published."""
    from hpcenv.build.engine_start import engine_for
    from hpcenv.build.installer import lockfile_for, packages_for

    report = Reporter(on_progress)
    if from_lock is not None:
        from_lock = lockfile_for(Path(from_lock), spec, site, cuda_override, engine, report,
                                 name)
    plan = plan_build(spec, site, name=name, cuda_override=cuda_override, from_lock=from_lock)
    registry = store_for(site).registry()
    found = registry.find_ready(plan.key, plan.name)
    packages, channels, cuda, _, extras = packages_for(
        spec, plan, engine or engine_for(site), from_lock, report)
    if extras.recorded or spec is None:
        pip = tuple(f"{p.name}=={p.version}" for p in extras.pip)
        variables = dict(extras.variables)
    else:
        pip, variables = spec.pip, dict(spec.variables)
    return BuildPreview(name=plan.name, key=plan.key, cuda=cuda, notes=plan.notes,
                        channels=tuple(channels),
                        packages=tuple(sorted(packages, key=lambda p: p.name)), pip=tuple(pip),
                        variables=variables,
                        existing=found.version if found is not None and is_complete(found.prefix)
                        else None,
                        current=registry.current_version(plan.name))
