"""A new build, for :func:`hpcenv.build.builder.build_env` once it holds the key's lock and
found nothing to reuse: solve (or read the lock), record the version, install, run pip,
verify, seal the prefix and mark it ready (steps 2-7 in :mod:`hpcenv.build.builder`).

Its own module so that a reuse, the everyday case, imports none of it: the engines, the
lockfile module and the ``@EXPLICIT`` converter are what a build pays for.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from hpcenv.build.export import (
    explicit_list_omissions,
    is_explicit_list,
    lock_from_explicit,
)
from hpcenv.build.engine_start import EngineSession
from hpcenv.build.plan import BuildPlan, cuda_of_packages
from hpcenv.build.progress import Reporter
from hpcenv.engine.base import CHANNEL_ERRORS, LockedPackage
from hpcenv.engine.lockfile import (
    LockedPip,
    LockExtras,
    read_lock,
    read_lock_extras,
    write_lock,
)
from hpcenv.engine.rattler_engine import RattlerCall, call_rattler
from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.fsutil import (
    atomic_write_json,
    chgrp,
    current_user,
    ensure_shared_dir,
    group_id,
    group_name,
    lab_only_mode,
    shared_umask,
    user_at_host,
    user_name,
)
from hpcenv.spec.cuda_target import NO_CUDA, CudaTarget
from hpcenv.spec.environment import EnvSpec
from hpcenv.store.activation import env_state_vars
from hpcenv.store.cache_integrity import VerifiedFiles, check_env, quarantine, record_path
from hpcenv.store.debris import force_rmtree
from hpcenv.store.layout import (
    MARKER,
    Store,
    builds_dir,
    cache_lock,
)
from hpcenv.store.registry import EnvRecord, Registry

if TYPE_CHECKING:
    from hpcenv.engine.base import Engine
    from hpcenv.site.config import SiteConfig


def lockfile_for(path: Path, spec: EnvSpec | None, site: SiteConfig,
                  cuda_override: CudaTarget | None, engine: Engine | None, report: Reporter,
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


def build_new(spec: EnvSpec | None, site: SiteConfig, store: Store, plan: BuildPlan,
              registry: Registry, session: EngineSession, from_lock: Path | None,
              report: Reporter) -> tuple[EnvRecord, list[str]]:
    """Make the new build ``plan`` describes (the caller holds its key lock and started the
    engine, :mod:`hpcenv.build.engine_start`): its record, now ``ready``, and the warnings to
    pass on."""
    engine, call = session.engine, session.call
    # Solve (or read the lock) before allocating a version: a spec that cannot be built leaves
    # nothing behind, not even a failed record.  A cache we cannot write fails first of all.
    _check_cache_writable(store.pkgs_dir)
    packages, channels, cuda, pinned, extras = packages_for(spec, plan, engine, from_lock,
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
        session.no_more_requests()   # the child exits while the prefix is walked
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


def _store_build_log(registry: Registry, record: EnvRecord, report: Reporter) -> Path | None:
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


def packages_for(spec: EnvSpec | None, plan: BuildPlan, engine: Engine, from_lock: Path | None,
                  report: Reporter) -> tuple[list[LockedPackage], tuple[str, ...], CudaTarget,
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
                 report: Reporter) -> LockExtras:
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
    # pip's own modules (and the stdlib it imports) are not compiled into the env: whether the
    # builder's shell sets this or not, the published env is the same, without ~5 MB of pip's
    # bytecode that no package cache shares.  The packages pip installs are still compiled:
    # pip writes their .pyc itself (py_compile), whatever this says.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
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
                     pkgs_dir: Path, verified: VerifiedFiles, report: Reporter) -> None:
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
        owner, group = user_name(st.st_uid), group_name(st.st_gid)
        what = "package cache" if path == pkgs_dir else "package cache lock file"
        raise HpcenvError(
            f"{what} {path} is owned by {owner}:{group} (mode {stat.S_IMODE(st.st_mode):o}) and "
            f"{current_user()} cannot write it: ask {owner} to make it writable for group "
            f"{group} (chmod g+w; umask 002 for builders) or set pkgs_dirs to a cache you can "
            "write")


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
