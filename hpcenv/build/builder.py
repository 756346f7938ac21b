"""The locked builder: each environment is built once, verified, and published atomically.

Where builds live is :mod:`hpcenv.store.layout`; what a build is (its key) :mod:`hpcenv.build.plan`;
publishing, rollback and removal :mod:`hpcenv.store.lifecycle`; crashed builders' leftovers
:mod:`hpcenv.store.debris`.

**Build once.**  A ready build with the key in the registry is returned as ``reused`` without
taking any lock (the fast path: no rattler import, a few file reads).  Otherwise the builder
takes the key's :class:`~hpcenv.store.locking.BuildLock`; late arrivals wait (``on_progress`` gets a
``wait`` :class:`BuildEvent` "waiting for USER@HOST pid N since T") and then find the ready
build.  The lock holder:

1. cleans debris: builds without a completion marker whose key lock nobody holds (a crashed
   builder), marking their records ``failed``; a crashed builder's complete build (killed
   between the marker and the registry update) is marked ``ready`` and reused;
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hpcenv.build.plan import BuildPlan, cuda_of_packages, plan_build
from hpcenv.store.debris import clean_debris, force_rmtree
from hpcenv.engine import get_engine
from hpcenv.engine.base import CHANNEL_ERRORS, LockedPackage
from hpcenv.engine.lockfile import read_lock, write_lock
from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.fsutil import atomic_write_json, chgrp, ensure_shared_dir, group_id, user_at_host
from hpcenv.store.layout import MARKER, builds_dir, cache_lock, is_complete, key_lock, prefix_usage
from hpcenv.store.lifecycle import check_link_is_ours, link_points_to, publish
from hpcenv.store.locking import LockHolder
from hpcenv.store.registry import EnvRecord, Registry
from hpcenv.spec.environment import EnvSpec
from hpcenv.build.export import is_explicit_list, lock_from_explicit
from hpcenv.store.activation import env_state_vars

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


@dataclass(frozen=True)
class _Reporter:
    """``on_progress`` with one method per event kind."""

    callback: Progress | None

    def step(self, text: str) -> None:
        if self.callback is not None:
            self.callback(BuildEvent("step", text))

    def wait(self, text: str) -> None:
        if self.callback is not None:
            self.callback(BuildEvent("wait", text))

    def warn(self, text: str) -> None:
        if self.callback is not None:
            self.callback(BuildEvent("warning", text))


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
                "status": self.status, "cuda": r.cuda, "cuda_override": r.cuda_override,
                "lock": r.lock_path, "waited": self.waited, "seconds": round(self.seconds, 3),
                "warnings": list(self.warnings), "made_current": self.made_current,
                "previous_current": self.previous_current}


def build_env(spec: EnvSpec | None, site: SiteConfig, *, name: str | None = None,
              cuda_override: str | None = None, from_lock: Path | None = None,
              engine: Engine | None = None, on_progress: Progress | None = None,
              make_current: bool = True) -> BuildResult:
    """Build ``spec`` (or recreate ``from_lock``) once, publish it, and return its record.

    ``from_lock``: a lockfile (hpcenv's, conda-lock/pixi) or an ``@EXPLICIT`` list, which is
    first turned into a lockfile (:func:`hpcenv.build.export.lock_from_explicit`).
    ``cuda_override``: None = infer from the spec, "" = no ``__cuda``, "12.4" = ``__cuda=12.4``.
    ``make_current``: make the built or reused version the current version of ``name``
    (building a spec means "I want this"; the result's ``made_current``/``previous_current``
    say whether that moved ``current``, e.g. undid a rollback).  False only ensures the build
    exists and never moves an existing ``current`` (``submit`` of a shared env); a name's first
    ready build still becomes current then, as there is nothing to move.
    ``on_progress`` receives :class:`BuildEvent` objects.
    """
    started = time.monotonic()
    report = _Reporter(on_progress)
    if from_lock is not None:
        from_lock = _lockfile_for(Path(from_lock), site, cuda_override, engine, report, name)
    plan = plan_build(spec, site, name=name, cuda_override=cuda_override, from_lock=from_lock)
    registry = Registry.for_site(site)
    check_link_is_ours(site, plan.name)

    def reuse(record: EnvRecord, waited: bool) -> BuildResult | None:
        if not is_complete(record.prefix):
            return None
        previous = registry.current_version(plan.name)
        moved = False
        # The link check heals a builder killed between the two publish steps.
        if (make_current or previous is None) and (
                previous != record.version or not link_points_to(site, plan.name, record.prefix)):
            previous = publish(site, registry, record, only_if_none=not make_current)
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
        who = holder.describe() if holder else "another builder"
        report.wait(f"waiting for {who} (building {plan.name}, key {plan.key[:12]})")

    with key_lock(site, plan.key, on_wait=on_wait) as lock:
        # Debris first: it also adopts a finished build whose builder died before marking it
        # ready, which the lookup below then reuses.
        for path in clean_debris(site, registry=registry, held_key=plan.key):
            report.warn(f"removed debris of a crashed build: {path}")
        found = registry.find_ready(plan.key, plan.name)
        if found is not None:
            if (result := reuse(found, waited)) is not None:
                return result
            registry.set_status(found.name, found.version, "failed")  # marker gone: rebuild
        for note in plan.notes:
            report.step(note)
        engine = engine or _engine_for(site)
        record, warnings = _build_locked(spec, site, plan, registry, engine, from_lock, report)
        lock.ensure_held()  # a lease broken while we stalled: another builder took over
        previous = publish(site, registry, record, only_if_none=not make_current)
    return BuildResult(record, "built", waited, time.monotonic() - started, tuple(warnings),
                       made_current=make_current or previous is None,
                       previous_current=previous)


def _engine_for(site: SiteConfig) -> Engine:
    return get_engine(site.engine, conda_exe=site.conda_exe,
                      repodata_cache=Path(site.state_dir) / "rattler-cache")


def _lockfile_for(path: Path, site: SiteConfig, cuda_override: str | None,
                  engine: Engine | None, report: _Reporter, name: str | None) -> Path:
    """``path`` itself when it is a lockfile; the lockfile made from it when it is an
    ``@EXPLICIT`` list (cached by content under the site's ``state_dir``)."""

    if not path.is_file():
        raise InvalidInput(f"--from-lock {path}: no such file; give a lockfile or an @EXPLICIT "
                           f"list ('hpcenv env export {name or 'NAME'} --lock' or "
                           "'--explicit')")
    if not is_explicit_list(path):
        return path
    report.step(f"reading @EXPLICIT list {path}")
    return lock_from_explicit(path, site, cuda_override=cuda_override, engine=engine)


def _build_locked(spec: EnvSpec | None, site: SiteConfig, plan: BuildPlan, registry: Registry,
                  engine: Engine, from_lock: Path | None,
                  report: _Reporter) -> tuple[EnvRecord, list[str]]:
    # Solve (or read the lock) before allocating a version: a spec that cannot be built leaves
    # nothing behind, not even a failed record.
    packages, channels, cuda, pinned = _packages_for(spec, plan, engine, from_lock, report)
    creator = user_at_host()
    builds = builds_dir(site)
    ensure_shared_dir(builds, mode=site.permissions.dir_mode, group=site.permissions.group)
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
        with tempfile.TemporaryDirectory(prefix="hpcenv-lock-") as scratch:
            written = Path(scratch) / "lock.yml"
            write_lock(written, plan.name, packages, channels, plan.platform)
            registry.write_lockfile(record.name, record.version, written.read_text())
        report.step(f"installing {len(packages)} packages into {prefix}")
        pkgs_dir = Path(site.pkgs_dirs[0])
        ensure_shared_dir(pkgs_dir, mode=site.permissions.dir_mode, group=site.permissions.group)
        with cache_lock(site, pkgs_dir, on_wait=lambda: report.wait(
                "waiting for 'hpcenv env gc' to finish with the package cache")).hold(
                exclusive=False):
            engine.install(prefix, packages, pkgs_dir=pkgs_dir)
        if spec is not None and spec.variables:
            _write_state(prefix, dict(spec.variables))
        if spec is not None and spec.pip:
            report.step(f"pip: installing {len(spec.pip)} entries with the env's python")
            _pip_install(prefix, spec, site)
        _verify(prefix, packages)
        warning = _same_fs_warning(prefix, pkgs_dir)
        if warning:
            warnings.append(warning)
            report.warn(warning)
        size, count = prefix_usage(prefix)
        _fix_modes(prefix, site)
        _write_marker(prefix, record)
        record = registry.update(replace(record, status="ready", size_bytes=size,
                                         file_count=count, packages=len(packages)))
    except BaseException:
        try:
            registry.set_status(record.name, record.version, "failed")
        finally:
            force_rmtree(prefix)
        raise
    return record, warnings


def _culprit_line(spec: EnvSpec, message: str) -> str:
    """``:LINE`` of the dependency a solver error names ("" when it names none we can tell)."""
    for index, entry in enumerate(spec.conda):
        name = re.split(r"[\s=<>!~\[]", entry.split("::")[-1], maxsplit=1)[0]
        if (f"'{entry}'" in message or re.search(rf"\bfor {re.escape(name)}\b", message)) \
                and index < len(spec.conda_lines):
            return f":{spec.conda_lines[index]}"
    return ""


def _packages_for(spec: EnvSpec | None, plan: BuildPlan, engine: Engine, from_lock: Path | None,
                  report: _Reporter) -> tuple[list[LockedPackage], tuple[str, ...], str | None,
                                          EnvSpec | None]:
    """The exact packages of a build, its channels, the CUDA to record and, for a
    ``--from-lock`` build without a spec, the pinned spec that stands for it."""
    pinned = None
    if from_lock is not None:
        report.step(f"reading {from_lock}")
        packages = read_lock(Path(from_lock), platform=plan.platform)
        channels = tuple(sorted({p.channel.rstrip("/") for p in packages if p.channel}))
        locked_cuda = cuda_of_packages(packages)
        if locked_cuda is not None:
            report.step(f"CUDA {locked_cuda} from the locked packages")
            if plan.cuda_override == "":
                report.warn(f"--no-cuda ignored: {from_lock} holds CUDA {locked_cuda} builds")
        # No solve: the packages, not a guess, say what CUDA the env needs (routing reads it).
        cuda = locked_cuda or plan.cuda or None
        if spec is None:
            pinned = EnvSpec(name=plan.name, channels=channels,
                             conda=tuple(p.spec for p in packages), pip=(), variables=(),
                             source=None)
    else:
        assert spec is not None  # plan_build refuses a build with neither
        channels, cuda = plan.channels, plan.cuda or None
        report.step(f"solving {len(spec.conda)} specs against {', '.join(channels)}")
        try:
            packages = engine.solve(list(spec.conda), channels=channels, platform=plan.platform,
                                    cuda=plan.cuda, channel_priority=plan.channel_priority)
        except CHANNEL_ERRORS:
            raise  # about a channel, not the spec: the engine's line says what to do
        except HpcenvError as exc:
            cuda_note = f", __cuda={plan.cuda}" if plan.cuda else ", no __cuda"
            raise type(exc)(f"{spec.source or '<environment.yml>'}{_culprit_line(spec, str(exc))}"
                            f": {exc} (channels searched: "
                            f"{', '.join(channels)}{cuda_note}); fix the spec or the channels"
                            ) from None
    if spec is not None and spec.pip and not any(p.name == "python" for p in packages):
        line = f":{spec.pip_lines[0]}" if spec.pip_lines else ""
        raise InvalidInput(f"{spec.source or '<environment.yml>'}{line}: a pip: section needs "
                           "python in the environment; add 'python' (and 'pip') to "
                           "dependencies")
    return packages, channels, cuda, pinned


def _write_state(prefix: Path, env_vars: dict[str, str]) -> None:
    """Spec ``variables`` as conda stores them (``conda env config vars``)."""
    state = prefix / "conda-meta" / "state"
    state.write_text(json.dumps({"env_vars": env_vars}, indent=2) + "\n")
    env_state_vars(prefix)  # read back as activation will: a name no shell accepts fails here


def _pip_install(prefix: Path, spec: EnvSpec, site: SiteConfig) -> None:
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
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_REQUIRE_VIRTUALENV", "PYTHONPATH",
                                                            "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    # conda runs pip on a requirements file next to the env file, so relative -r/-e paths work.
    cwd = spec.source.parent if spec.source is not None else None
    with tempfile.TemporaryDirectory(prefix="hpcenv-pip-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text("".join(f"{line}\n" for line in spec.pip))
        proc = subprocess.run([*cmd, "-r", str(requirements)], cwd=cwd, env=env,
                              capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).strip().splitlines()
        errors = [line.strip() for line in output if line.startswith("ERROR")]
        reason = (errors or output or ["no output"])[0]
        if "No module named pip" in proc.stderr:
            reason += "; add 'pip' to the conda dependencies"
        line = f":{spec.pip_lines[0]}" if spec.pip_lines else ""
        raise HpcenvError(f"{spec.source or '<environment.yml>'}{line}: pip install failed: "
                          f"{reason}")


def _verify(prefix: Path, packages: Sequence[LockedPackage]) -> None:
    meta = prefix / "conda-meta"
    installed: set[str] = set()
    for path in sorted(meta.glob("*.json")):
        record = json.loads(path.read_text())
        installed.add(record.get("name", ""))
        for rel in record.get("files") or []:
            if not os.path.lexists(prefix / rel):
                raise HpcenvError(f"{prefix}: file {rel} of {record.get('name')} is missing "
                                  "after install; the package cache may be damaged (run "
                                  "'hpcenv env gc' and build again)")
    missing = sorted({p.name for p in packages} - installed)
    if missing:
        raise HpcenvError(f"{prefix}: no conda-meta record for {', '.join(missing)} after install")
    if "python" in installed:
        proc = subprocess.run([str(prefix / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                              capture_output=True, text=True, check=False, timeout=120,
                              env={**os.environ, "PYTHONNOUSERSITE": "1"})
        reported = proc.stdout.strip()
        if proc.returncode != 0 or os.path.realpath(reported) != os.path.realpath(prefix):
            detail = (proc.stderr.strip().splitlines() or [reported or "no output"])[-1]
            raise HpcenvError(f"{prefix}: the env's python does not run from its prefix: {detail}")


def _same_fs_warning(prefix: Path, pkgs_dir: Path) -> str | None:
    if prefix.stat().st_dev == pkgs_dir.stat().st_dev:
        return None
    return (f"package cache {pkgs_dir} and envs {prefix.parent} are on different filesystems: "
            "files were copied, not hardlinked; put pkgs_dirs and envs_dirs on one filesystem")


def _fix_modes(prefix: Path, site: SiteConfig) -> None:
    """Readable by all (group/other per site), writable by nobody; group + setgid if configured."""
    gid = group_id(site.permissions.group)
    setgid = stat.S_ISGID if gid is not None else 0
    for root, dirs, files in os.walk(prefix, topdown=False):
        for entry in files + dirs:
            path = os.path.join(root, entry)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                continue
            if gid is not None and st.st_gid != gid:
                chgrp(path, gid)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                new = (mode | 0o555 | setgid) & ~0o222
            else:
                new = (mode | 0o444 | (0o111 if mode & 0o100 else 0)) & ~0o222
            if new != mode:
                os.chmod(path, new)
    if gid is not None:
        chgrp(prefix, gid)


def _write_marker(prefix: Path, record: EnvRecord) -> None:
    """The completion marker, then the prefix root made read-only too (the very last step)."""
    data = {"name": record.name, "version": record.version, "key": record.key,
            "completed": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_json(prefix / MARKER, data, mode=0o444)
    mode = stat.S_IMODE(prefix.stat().st_mode)
    os.chmod(prefix, (mode | 0o555) & ~0o222)
