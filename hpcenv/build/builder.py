"""The locked builder: each environment is built once, verified, and published atomically.

Where builds live is :mod:`hpcenv.store.layout`; what a build is (its key) :mod:`hpcenv.build.plan`;
publishing, rollback and removal :mod:`hpcenv.store.lifecycle`; crashed builders' leftovers
:mod:`hpcenv.store.debris`.

**Build once.**  A ready build with the key in the registry is returned as ``reused`` without
taking any lock (the fast path: no rattler import, a few file reads).  Otherwise the builder
takes the key's :class:`~hpcenv.store.locking.BuildLock`; late arrivals wait (``on_progress`` gets a
``wait`` :class:`BuildEvent` "waiting for USER@HOST pid N since T") and then find the ready
build.  The lock holder:

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

import json
import os
import re
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

from hpcenv.build.export import (
    explicit_list_omissions,
    is_explicit_list,
    lock_from_explicit,
)
from hpcenv.build.plan import BuildPlan, cuda_of_packages, plan_build
from hpcenv.engine import get_engine
from hpcenv.engine.base import CHANNEL_ERRORS, LockedPackage
from hpcenv.engine.lockfile import (
    LockedPip,
    LockExtras,
    read_lock,
    read_lock_extras,
    write_lock,
)
from hpcenv.engine.rattler_engine import RattlerEngine, call_rattler
from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.fsutil import (
    atomic_write_json,
    chgrp,
    current_user,
    ensure_shared_dir,
    group_id,
    lab_only_mode,
    shared_umask,
    user_at_host,
)
from hpcenv.spec.cuda_target import CUDA_JSON, CUDA_OVERRIDE_JSON, NO_CUDA, CudaTarget
from hpcenv.spec.environment import EnvSpec
from hpcenv.store import store_for
from hpcenv.store.activation import env_state_vars
from hpcenv.store.cache_integrity import VerifiedFiles, check_env, quarantine, record_path
from hpcenv.store.debris import clean_name_debris, force_rmtree
from hpcenv.store.layout import (
    MARKER,
    Store,
    builds_dir,
    cache_lock,
    is_complete,
    key_lock,
)
from hpcenv.store.lifecycle import check_link_is_ours, link_points_to, publish
from hpcenv.store.locking import LockHolder, describe_holder
from hpcenv.store.ownership import Actor, env_owner
from hpcenv.store.registry import EnvRecord, Registry

if TYPE_CHECKING:
    from hpcenv.engine.base import Engine
    from hpcenv.site.config import SiteConfig


@dataclass(frozen=True)
class BuildEvent:
    """One progress report of a build: ``step`` (what it is doing now; a spinner may replace
    it with the next), ``wait`` (blocked on another process) or ``warning`` (the user should
    read it).  ``str()`` is the text, so callers that only print keep working."""

    kind: Literal["step", "wait", "warning"]
    text: str

    def __str__(self) -> str:
        return self.text


Progress = Callable[[BuildEvent], None]
RattlerCall = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class _Reporter:
    """``on_progress`` with one method per event kind; every event, and tool output given to
    :meth:`log`, is kept for the build log."""

    callback: Progress | None
    lines: list[str] = field(default_factory=list)

    def step(self, text: str) -> None:
        self._event("step", text)

    def wait(self, text: str) -> None:
        self._event("wait", text)

    def warn(self, text: str) -> None:
        self._event("warning", text)

    def log(self, text: str) -> None:
        """Only into the build log (e.g. a tool's full output)."""
        self.lines.append(text.rstrip("\n"))

    def _event(self, kind: Literal["step", "wait", "warning"], text: str) -> None:
        stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
        self.lines.append(f"{stamp} {'warning: ' if kind == 'warning' else ''}{text}")
        if self.callback is not None:
            self.callback(BuildEvent(kind, text))


@dataclass(frozen=True)
class BuildResult:
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
    report = _Reporter(on_progress)
    if from_lock is not None:
        from_lock = _lockfile_for(Path(from_lock), spec, site, cuda_override, engine, report,
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

    with key_lock(store, plan.key, on_wait=on_wait,
                  doing=f"building {plan.name}, key {plan.key[:12]}") as lock:
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
        engine = engine or _engine_for(site)
        # One rattler child, started now, serves the solve, both lockfiles and the install.
        rattler = engine if isinstance(engine, RattlerEngine) else RattlerEngine()
        with rattler.serving() as call:
            record, warnings = _build_locked(spec, site, store, plan, registry, engine,
                                             from_lock, report, call)
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
    report = _Reporter(on_progress)
    if from_lock is not None:
        from_lock = _lockfile_for(Path(from_lock), spec, site, cuda_override, engine, report,
                                  name)
    plan = plan_build(spec, site, name=name, cuda_override=cuda_override, from_lock=from_lock)
    registry = store_for(site).registry()
    found = registry.find_ready(plan.key, plan.name)
    packages, channels, cuda, _, extras = _packages_for(
        spec, plan, engine or _engine_for(site), from_lock, report)
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


def _engine_for(site: SiteConfig) -> Engine:
    return get_engine(site.engine, conda_exe=site.conda_exe,
                      repodata_cache=Path(site.state_dir) / "rattler-cache")


def _lockfile_for(path: Path, spec: EnvSpec | None, site: SiteConfig,
                  cuda_override: CudaTarget | None, engine: Engine | None, report: _Reporter,
                  name: str | None) -> Path:
    """``path`` itself when it is a lockfile; the lockfile made from it when it is an
    ``@EXPLICIT`` list (cached by content under the site's ``state_dir``).  A list that says
    it left out pip packages or variables is refused unless the spec brings them."""

    if not path.is_file():
        raise InvalidInput(f"--from-lock {path}: no such file; give a lockfile or an @EXPLICIT "
                           f"list ('hpcenv env export {name or 'NAME'} --lock' or "
                           "'--explicit')")
    if not is_explicit_list(path):
        return path
    omitted = explicit_list_omissions(path)
    if omitted and (spec is None or (any(n.startswith("pip ") for n in omitted) and not spec.pip)
                    or (any(n.startswith("variable ") for n in omitted) and not spec.variables)):
        raise InvalidInput(f"--from-lock {path}: the env it was exported from also had "
                           f"{', '.join(omitted)}, which an @EXPLICIT list cannot reproduce; "
                           f"export it with 'hpcenv env export {name or 'NAME'} --lock', or "
                           "build with 'hpcenv env build environment.yml --from-lock LIST'")
    report.step(f"reading @EXPLICIT list {path}")
    return lock_from_explicit(path, site, cuda_override=cuda_override, engine=engine)


def _build_locked(spec: EnvSpec | None, site: SiteConfig, store: Store, plan: BuildPlan,
                  registry: Registry,
                  engine: Engine, from_lock: Path | None, report: _Reporter,
                  call: RattlerCall) -> tuple[EnvRecord, list[str]]:
    # Solve (or read the lock) before allocating a version: a spec that cannot be built leaves
    # nothing behind, not even a failed record.  A cache we cannot write fails first of all.
    _check_cache_writable(store.pkgs_dir)
    packages, channels, cuda, pinned, extras = _packages_for(spec, plan, engine, from_lock,
                                                             report)
    creator = user_at_host()
    builds = builds_dir(store)
    ensure_shared_dir(builds, mode=store.dir_mode, group=store.group)
    recorded = pinned if pinned is not None else spec
    # From a lock, packages built for a CUDA prove the env needs a GPU; a lock without any
    # proves nothing (ROCm, or CPU): keep what the plan knew.
    gpu_required = True if from_lock is not None and cuda else plan.gpu_required
    record = registry.allocate(plan.name, lambda version: EnvRecord(
        name=plan.name, version=version, key=plan.key,
        spec=recorded.normalized() if recorded is not None else {},
        spec_hash=recorded.content_hash() if recorded is not None else "",
        lock_path=str(registry.lock_file(plan.name, version)),
        prefix=str(builds / f"{plan.name}-{version}-{plan.key[:12]}"),
        cuda=cuda, cuda_override=plan.cuda_override, channels=list(channels),
        platform=plan.platform, status="building", creator=creator,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        channel_priority=plan.channel_priority, engine=engine.name,
        source=str(spec.source) if spec is not None and spec.source else None,
        from_lock=str(Path(from_lock).resolve()) if from_lock is not None else None,
        gpu_required=gpu_required))
    prefix = Path(record.prefix)
    warnings: list[str] = []
    try:
        # The engine writes where it likes; the registry stores it with the lab's mode/group.
        _store_lock(registry, record, packages, channels, plan.platform, call=call)
        report.step(f"installing {len(packages)} packages into {prefix}")
        pkgs_dir = store.pkgs_dir
        # The cache is the lab's alone: the engine's own lock files there must not be open to
        # outsiders' flocks, and whatever it creates must be usable by the next member.
        ensure_shared_dir(pkgs_dir, mode=lab_only_mode(store.dir_mode), group=store.group)
        verified = VerifiedFiles.load(record_path(Path(site.state_dir), pkgs_dir))
        with cache_lock(store, pkgs_dir, on_wait=lambda who: report.wait(
                f"waiting for {who} (package cache {pkgs_dir})")).hold(
                exclusive=False, doing=f"installing {record.name} into {prefix}"), \
                shared_umask(store.dir_mode, store.group):
            _install_checked(engine, prefix, packages, pkgs_dir, verified, report)
        # A lock that records the whole env is followed as it is; otherwise the spec's pip:
        # section and variables are applied on top of the (conda-only) packages.
        if extras.recorded or spec is None:
            variables, pip_lines = dict(extras.variables), ()
        else:
            variables, pip_lines = dict(spec.variables), spec.pip
        if variables:
            _write_state(prefix, variables)
        installed_pip: list[LockedPip] = []
        if extras.pip:
            report.step(f"pip: installing {len(extras.pip)} locked distributions")
            installed_pip = _pip_install_locked(prefix, extras.pip, site, from_lock,
                                                 log=report.log)
        if pip_lines:
            assert spec is not None
            report.step(f"pip: installing {len(pip_lines)} entries with the env's python")
            installed_pip += _pip_install(prefix, spec, site, log=report.log)
        _store_lock(registry, record, packages, channels, plan.platform, pip=installed_pip,
                    variables=variables, call=call)
        warning = _same_fs_warning(prefix, pkgs_dir)
        if warning:
            warnings.append(warning)
            report.warn(warning)
        # The env's python is checked while the prefix is walked (-B: it writes nothing there).
        with _python_probe(prefix) as probe:
            walked = _seal_prefix(prefix, store.group)
            _verify(prefix, packages, walked.paths, probe)
        _write_marker(prefix, record)
        record = registry.update(replace(record, status="ready", size_bytes=walked.size,
                                         unique_bytes=walked.unique, file_count=walked.count,
                                         packages=len(packages)))
    except BaseException as exc:
        try:
            error = _one_line_reason(exc)
            report.log(f"error: {error}")
            if not isinstance(exc, (HpcenvError, KeyboardInterrupt)):
                import traceback

                report.log("".join(traceback.format_exception(exc)))
            log = _store_build_log(registry, record, report)
            registry.set_status(record.name, record.version, "failed", error=error,
                                log_path=str(log) if log else None)
        finally:
            force_rmtree(prefix)
        raise
    log = _store_build_log(registry, record, report)
    if log is not None:
        record = registry.update(replace(record, log_path=str(log)))
    return record, warnings


def _one_line_reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = " ".join(str(exc).split())
    return text if isinstance(exc, HpcenvError) else f"{type(exc).__name__}: {text}"


def _store_build_log(registry: Registry, record: EnvRecord, report: _Reporter) -> Path | None:
    """The build log into the registry; None when even that fails (the error still stands)."""
    try:
        return registry.write_build_log(record.name, record.version,
                                        "".join(f"{line}\n" for line in report.lines))
    except (OSError, HpcenvError):
        return None


def _culprit_line(spec: EnvSpec, message: str) -> str:
    """``:LINE`` of the dependency a solver error names ("" when it names none we can tell)."""
    for index, entry in enumerate(spec.conda):
        name = re.split(r"[\s=<>!~\[]", entry.split("::")[-1], maxsplit=1)[0]
        if (f"'{entry}'" in message or re.search(rf"\bfor {re.escape(name)}\b", message)) \
                and index < len(spec.conda_lines):
            return f":{spec.conda_lines[index]}"
    return ""


def _store_lock(registry: Registry, record: EnvRecord, packages: Sequence[LockedPackage],
                channels: Sequence[str], platform: str, *, pip: Sequence[LockedPip] = (),
                variables: dict[str, str] | None = None,
                call: RattlerCall = call_rattler) -> None:
    """Write the build's lockfile into the registry: first the conda packages (before the
    install, so a failed build still shows what it tried), then again with pip packages and
    variables (``variables`` given), once they are installed: the lock of a ready build
    holds the whole env."""
    # The engine writes where it likes; the registry stores it with the lab's mode/group.
    with tempfile.TemporaryDirectory(prefix="hpcenv-lock-") as scratch:
        written = Path(scratch) / "lock.yml"
        write_lock(written, record.name, packages, channels, platform, pip=pip,
                   variables=variables, call=call)
        registry.write_lockfile(record.name, record.version, written.read_text())


def _packages_for(spec: EnvSpec | None, plan: BuildPlan, engine: Engine, from_lock: Path | None,
                  report: _Reporter) -> tuple[list[LockedPackage], tuple[str, ...], CudaTarget,
                                          EnvSpec | None, LockExtras]:
    """The exact packages of a build, its channels, the CUDA to record, for a ``--from-lock``
    build without a spec the pinned spec that stands for it, and the lock's pip packages and
    variables."""
    pinned = None
    extras = LockExtras()
    if from_lock is not None:
        report.step(f"reading {from_lock}")
        packages = read_lock(Path(from_lock), platform=plan.platform)
        extras = _lock_extras(Path(from_lock), plan, spec, report)
        channels = tuple(sorted({p.channel.rstrip("/") for p in packages if p.channel}))
        locked_cuda = cuda_of_packages(packages)
        if locked_cuda:
            report.step(f"CUDA {locked_cuda} from the locked packages")
            if plan.cuda_override == NO_CUDA:
                report.warn(f"--no-cuda ignored: {from_lock} holds CUDA {locked_cuda} builds")
        # No solve: the packages, not a guess, say what CUDA the env needs (routing reads it).
        cuda = locked_cuda or plan.cuda
        if spec is None:
            pinned = EnvSpec(name=plan.name, channels=channels,
                             conda=tuple(p.spec for p in packages),
                             pip=tuple(f"{p.name}=={p.version}" for p in extras.pip),
                             variables=tuple(sorted(extras.variables.items())), source=None)
    else:
        assert spec is not None  # plan_build refuses a build with neither
        channels, cuda = plan.channels, plan.cuda
        for warning in spec.warnings:   # what conda reads differently from how it looks
            report.warn(warning)
        report.step(f"solving {len(spec.conda)} specs against {', '.join(channels)}")
        try:
            # conda_to_solve: conda's reading of the specs (`pip` added for a pip: section).
            packages = engine.solve(list(spec.conda_to_solve()), channels=channels,
                                    platform=plan.platform, cuda=plan.cuda,
                                    channel_priority=plan.channel_priority)
        except CHANNEL_ERRORS:
            raise  # about a channel, not the spec: the engine's line says what to do
        except HpcenvError as exc:
            cuda_note = f", __cuda={plan.cuda.version}" if plan.cuda else ", no __cuda"
            raise type(exc)(f"{spec.source or '<environment.yml>'}{_culprit_line(spec, str(exc))}"
                            f": {exc} (channels searched: "
                            f"{', '.join(channels)}{cuda_note}); fix the spec or the channels"
                            ) from None
    if spec is not None and spec.pip and not extras.recorded \
            and not any(p.name == "python" for p in packages):
        line = f":{spec.pip_lines[0]}" if spec.pip_lines else ""
        raise InvalidInput(f"{spec.source or '<environment.yml>'}{line}: a pip: section needs "
                           "python in the environment; add 'python' (and 'pip') to "
                           "dependencies")
    if extras.pip and not any(p.name == "python" for p in packages):
        raise InvalidInput(f"{from_lock}: the lock has pip packages but no python package; "
                           "it cannot be installed as it is")
    return packages, channels, cuda, pinned, extras


def _lock_extras(lock: Path, plan: BuildPlan, spec: EnvSpec | None,
                 report: _Reporter) -> LockExtras:
    """The lock's pip packages and variables; refuses a lock that cannot reproduce its pip
    packages, and says so when a lock may have left pip packages or variables out."""
    extras = read_lock_extras(lock, platform=plan.platform)
    unverifiable = [p.name for p in extras.pip if not p.sha256]
    if unverifiable:
        raise InvalidInput(f"{lock}: pip package(s) {', '.join(unverifiable)} have no sha256 "
                           "(installed from a directory or a VCS checkout), so the lock cannot "
                           "reproduce them; build from the environment file instead")
    if not extras.recorded and spec is None:
        report.warn(f"{lock} does not say whether the env had pip packages or variables (not "
                    "written by this hpcenv): only its conda packages are installed; if the "
                    "env had a pip: section or variables, build with "
                    "'hpcenv env build environment.yml --from-lock LOCK'")
    return extras


def _write_state(prefix: Path, env_vars: dict[str, str]) -> None:
    """Spec ``variables`` as conda stores them (``conda env config vars``)."""
    state = prefix / "conda-meta" / "state"
    state.write_text(json.dumps({"env_vars": env_vars}, indent=2) + "\n")
    env_state_vars(prefix)  # read back as activation will: a name no shell accepts fails here


def _pip_command(prefix: Path, site: SiteConfig) -> list[str]:
    """``python -m pip install`` of the env, with the site's index settings."""
    python = prefix / "bin" / "python"
    cmd = [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
           "--no-warn-script-location"]
    if site.pip.no_index:
        cmd.append("--no-index")
    if site.pip.wheel_dir is not None:
        cmd += ["--find-links", str(site.pip.wheel_dir)]
    if site.pip.index_url:
        cmd += ["--index-url", site.pip.index_url]
    for url in site.pip.extra_index_urls:
        cmd += ["--extra-index-url", url]
    return cmd


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_REQUIRE_VIRTUALENV", "PYTHONPATH",
                                                            "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run_pip(cmd: list[str], lines: Sequence[str], cwd: Path | None, where: str,
             log: Callable[[str], None] | None = None) -> list[LockedPip]:
    """Run ``cmd -r REQUIREMENTS`` (``lines``) and return what pip installed, from its
    ``--report`` (pip >= 22.2; an older pip installs the same, and its distributions are
    recorded without a hash, which a later ``--from-lock`` build refuses)."""
    with tempfile.TemporaryDirectory(prefix="hpcenv-pip-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text("".join(f"{line}\n" for line in lines))
        report = Path(scratch) / "report.json"
        argv = [*cmd, "--report", str(report), "-r", str(requirements)]
        proc = subprocess.run(argv, cwd=cwd, env=_pip_env(), capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0 and "no such option: --report" in proc.stderr:
            argv.remove("--report")
            argv.remove(str(report))
            proc = subprocess.run(argv, cwd=cwd, env=_pip_env(), capture_output=True, text=True,
                                  check=False)
        if log is not None:
            log(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
        if proc.returncode != 0:
            output = (proc.stderr + proc.stdout).strip().splitlines()
            errors = [line.strip() for line in output if line.startswith("ERROR")]
            reason = (errors or output or ["no output"])[0]
            if "No module named pip" in proc.stderr:
                reason += "; add 'pip' to the conda dependencies"
            raise HpcenvError(f"{where}: pip install failed: {reason}")
        return _installed_from_report(report)


def _installed_from_report(report: Path) -> list[LockedPip]:
    try:
        items = json.loads(report.read_text()).get("install") or []
    except (OSError, ValueError):
        return []
    installed = []
    for item in items:
        info = item.get("download_info") or {}
        hashes = (info.get("archive_info") or {}).get("hashes") or {}
        metadata = item.get("metadata") or {}
        installed.append(LockedPip(name=str(metadata.get("name", "")),
                                   version=str(metadata.get("version", "")),
                                   url=str(info.get("url", "")), sha256=hashes.get("sha256")))
    return installed


def _pip_install(prefix: Path, spec: EnvSpec, site: SiteConfig,
                 log: Callable[[str], None] | None = None) -> list[LockedPip]:
    """Run the spec's ``pip:`` section; return what pip installed."""
    # conda runs pip on a requirements file next to the env file, so relative -r/-e paths work.
    cwd = spec.source.parent if spec.source is not None else None
    line = f":{spec.pip_lines[0]}" if spec.pip_lines else ""
    return _run_pip(_pip_command(prefix, site), spec.pip, cwd,
                    f"{spec.source or '<environment.yml>'}{line}", log)


def _pip_install_locked(prefix: Path, locked: Sequence[LockedPip], site: SiteConfig,
                        lock: Path | None,
                        log: Callable[[str], None] | None = None) -> list[LockedPip]:
    """Install exactly the locked distributions, each checked against its sha256.

    From the recorded URL, or, when that was a local file that is gone (the lock came from
    another site), ``NAME==VERSION`` through the site's pip index settings: the hash still
    decides whether it is the same archive."""
    lines = []
    for dist in locked:
        parsed = urlparse(dist.url)
        gone = parsed.scheme == "file" and not Path(unquote(parsed.path)).is_file()
        source = f"{dist.name}=={dist.version}" if gone or not dist.url else \
            f"{dist.name} @ {dist.url}"
        lines.append(f"{source} --hash=sha256:{dist.sha256}")
    cmd = [*_pip_command(prefix, site), "--no-deps", "--require-hashes"]
    return _run_pip(cmd, lines, None, str(lock or "the lockfile"), log)


@contextmanager
def _python_probe(prefix: Path) -> Iterator[subprocess.Popen[str] | None]:
    """The env's python asked for its ``sys.prefix``, started now (None without a python)."""
    python = prefix / "bin" / "python"
    if not os.path.lexists(python):
        yield None
        return
    proc = subprocess.Popen([str(python), "-B", "-c", "import sys; print(sys.prefix)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONNOUSERSITE": "1"})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _verify(prefix: Path, packages: Sequence[LockedPackage], present: set[str],
            probe: subprocess.Popen[str] | None) -> None:
    """Every ``conda-meta`` record's files are among ``present`` (the prefix's paths, from
    :func:`_seal_prefix`) and the env's python (``probe``) runs from the prefix."""
    meta = prefix / "conda-meta"
    installed: set[str] = set()
    for path in sorted(meta.glob("*.json")):
        record = json.loads(path.read_text())
        installed.add(record.get("name", ""))
        for rel in record.get("files") or []:
            # lexists too: a file under a symlinked dir, which the walk does not enter
            if os.path.normpath(rel) not in present and not os.path.lexists(prefix / rel):
                raise HpcenvError(f"{prefix}: file {rel} of {record.get('name')} is missing "
                                  "after install; the package cache may be damaged (run "
                                  "'hpcenv env gc' and build again)")
    missing = sorted({p.name for p in packages} - installed)
    if missing:
        raise HpcenvError(f"{prefix}: no conda-meta record for {', '.join(missing)} after install")
    if "python" in installed:
        if probe is None:
            raise HpcenvError(f"{prefix}: python is installed but bin/python is missing")
        try:
            out, err = probe.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            probe.kill()
            out, err = probe.communicate()
        reported = out.strip()
        if probe.returncode != 0 or os.path.realpath(reported) != os.path.realpath(prefix):
            detail = (err.strip().splitlines() or [reported or "no output"])[-1]
            raise HpcenvError(f"{prefix}: the env's python does not run from its prefix: {detail}")


def _install_checked(engine: Engine, prefix: Path, packages: Sequence[LockedPackage],
                     pkgs_dir: Path, verified: VerifiedFiles, report: _Reporter) -> None:
    """Install, then check what was linked from the shared cache against the packages' hashes
    before anything in the env runs (:mod:`hpcenv.store.cache_integrity`); tampered entries
    are moved aside and the env installed again from fresh extractions."""
    before = frozenset(os.listdir(pkgs_dir))
    engine.install(prefix, packages, pkgs_dir=pkgs_dir)
    tampered = check_env(prefix, verified, frozenset(os.listdir(pkgs_dir)) - before)
    if tampered:
        for bad in tampered:
            moved = quarantine(bad)
            report.warn(f"{bad.describe()}: moved the entry aside to {moved} and extracted "
                        "the package again")
        force_rmtree(prefix)
        engine.install(prefix, packages, pkgs_dir=pkgs_dir)
        still = check_env(prefix, verified)
        if still:
            raise HpcenvError(f"{still[0].describe()}, even after extracting it again; ask "
                              f"whoever administers {pkgs_dir} to look at it")
    verified.save()


def _check_cache_writable(pkgs_dir: Path) -> None:
    """Refuse, in one line naming the owner and the fix, a package cache this user cannot
    write: the engine would fail with "failed to acquire global cache lock"."""
    for path in (pkgs_dir, pkgs_dir / ".cache.lock"):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if os.access(path, os.W_OK):
            continue
        owner, group = _owner_names(st)
        what = "package cache" if path == pkgs_dir else "package cache lock file"
        raise HpcenvError(
            f"{what} {path} is owned by {owner}:{group} (mode {stat.S_IMODE(st.st_mode):o}) and "
            f"{current_user()} cannot write it: ask {owner} to make it writable for group "
            f"{group} (chmod g+w; umask 002 for builders) or set pkgs_dirs to a cache you can "
            "write")


def _owner_names(st: os.stat_result) -> tuple[str, str]:
    import grp
    import pwd

    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = f"uid {st.st_uid}"
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = f"gid {st.st_gid}"
    return owner, group


def _same_fs_warning(prefix: Path, pkgs_dir: Path) -> str | None:
    if prefix.stat().st_dev == pkgs_dir.stat().st_dev:
        return None
    return (f"package cache {pkgs_dir} and envs {prefix.parent} are on different filesystems: "
            "files were copied, not hardlinked; put pkgs_dirs and envs_dirs on one filesystem")


@dataclass(frozen=True)
class _Walked:
    """What the one walk over a finished prefix found."""

    paths: set[str]     # every path under the prefix, relative, normalised
    size: int           # apparent bytes, each inode once
    count: int          # non-directory entries
    unique: int         # bytes of files nothing outside the prefix links


def _seal_prefix(prefix: Path, group: str | None) -> _Walked:
    """One walk over the finished prefix: fix modes (readable by all, writable by nobody: an
    edit in a hardlinked env would corrupt the shared cache; ``group`` + setgid if the site
    names one) and gather what the record and :func:`_verify` need."""
    gid = group_id(group)
    setgid = stat.S_ISGID if gid is not None else 0
    paths: set[str] = set()
    seen: dict[int, list[int]] = {}   # inode -> [size, links here, links in total]
    size = count = 0
    root_len = len(str(prefix)) + 1
    stack = [str(prefix)]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                paths.add(entry.path[root_len:])
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                    new = (mode | 0o555 | setgid) & ~0o222
                else:
                    count += 1
                    inode = seen.get(st.st_ino)
                    if inode is None:
                        size += st.st_size
                        inode = seen[st.st_ino] = [st.st_size, 0, st.st_nlink]
                    if stat.S_ISLNK(st.st_mode):
                        inode[1] = -1   # never "unique": only regular files count there
                        continue
                    if inode[1] >= 0:
                        inode[1] += 1
                    new = (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & ~0o222
                if gid is not None and st.st_gid != gid:
                    chgrp(entry.path, gid)
                if new != mode:
                    os.chmod(entry.path, new)
    if gid is not None:
        chgrp(prefix, gid)
    unique = sum(s for s, here, total in seen.values() if here >= total)
    return _Walked(paths, size, count, unique)


def _write_marker(prefix: Path, record: EnvRecord) -> None:
    """The completion marker, then the prefix root made read-only too (the very last step)."""
    data = {"name": record.name, "version": record.version, "key": record.key,
            "completed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(prefix / MARKER, data, mode=0o444)
    mode = stat.S_IMODE(prefix.stat().st_mode)
    os.chmod(prefix, (mode | 0o555) & ~0o222)
