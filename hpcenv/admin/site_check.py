"""``hpcenv site check``: probe this machine against a loaded site config.

Loading and validating the config is :mod:`hpcenv.site.config`'s job; this module looks at the world:
are the dirs writable, do envs and pkgs share a filesystem, do local channels exist, is
``conda_exe`` there, does the group exist, do locks work on the shared filesystem, and does
Slurm agree with the configured partitions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hpcenv.errors import HpcenvError
from hpcenv.fsutil import group_name
from hpcenv.scheduler import select_scheduler
from hpcenv.site.config import SiteConfig, effective_channels
from hpcenv.spec import drivers
from hpcenv.store.locking import probe_lock_support

if TYPE_CHECKING:
    from hpcenv.scheduler.base import PartitionState

CheckStatus = Literal["pass", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str


# Seconds a remote channel gets to answer `site check`: long enough for a slow proxy, short
# enough that an offline login node hears about it at once rather than at the first build.
PROBE_TIMEOUT = 5.0


def check_site(site: SiteConfig, *, live: Sequence[PartitionState] | None = None,
               umask: int | None = None, probe_timeout: float = PROBE_TIMEOUT) -> list[Check]:
    """Probe the machine against the config: dirs, filesystems, channels, executables, group.

    Nothing is left behind: the only writes are the lock probe's temporary files
    (``hpcenv.store.locking.probe_lock_support``), one per envs dir, package cache and
    registry.  On a Slurm site it says which backend ``scheduler`` picks here, and the
    partitions are compared with what Slurm reports (``live``, else asked through that
    backend).  ``umask`` is the one lab users build under (default: this process's).  Remote
    channels are asked for ``noarch/repodata.json`` (a HEAD request, ``probe_timeout`` seconds
    each, in parallel).
    """
    checks: list[Check] = []
    for i, path in enumerate(site.envs_dirs):
        checks.append(_dir_check(f"envs_dirs[{i}]", path, must_write=i == 0))
    for i, path in enumerate(site.pkgs_dirs):
        checks.append(_dir_check(f"pkgs_dirs[{i}]", path, must_write=i == 0))
    checks.append(_dir_check("registry", site.registry, must_write=True))
    checks.append(_dir_check("state_dir", site.state_dir, must_write=True))
    checks.append(_same_fs_check(site.envs_dirs[0], site.pkgs_dirs[0]))
    checks.extend(_channel_checks(site, probe_timeout))
    checks.extend(_partition_checks(site))
    checks.append(_conda_check(site))
    if site.scheduler != "local":
        checks.extend(_scheduler_checks(site, live))
    if site.permissions.group is not None:
        checks.append(_group_check(site.permissions.group))
        checks.append(_shared_cache_check(site.pkgs_dirs[0], site.permissions.group,
                                          current_umask() if umask is None else umask))
    if site.templates_dir is not None:
        checks.append(_exists_check("templates_dir", site.templates_dir))
    if site.pip.wheel_dir is not None:
        checks.append(_exists_check("pip.wheel_dir", site.pip.wheel_dir))
    # Written by admins (hpcenv env module / env kernel --site-wide), read by every user.
    for key, directory in (("modules_dir", site.modules_dir), ("kernels_dir", site.kernels_dir)):
        if directory is not None:
            checks.append(_dir_check(key, directory, must_write=False))
    for name, remote in site.remotes.items():
        for label, file in (("identity_file", remote.identity_file),
                            ("known_hosts", remote.known_hosts)):
            if file is not None and not file.is_file():
                checks.append(Check(f"remotes.{name}.{label}", "warn",
                                    f"{file} is not a file"))
    checks.extend(_lock_checks(site))
    return checks


def _existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def _dir_check(name: str, path: Path, *, must_write: bool) -> Check:
    bad: CheckStatus = "fail" if must_write else "warn"
    if path.is_dir():
        if os.access(path, os.W_OK | os.X_OK):
            return Check(name, "pass", f"{path} exists and is writable")
        if must_write:
            return Check(name, "fail", f"{path} is not writable by you; ask an admin to add you "
                         "to the owning group or fix its mode")
        return Check(name, "pass", f"{path} exists (read-only for you)")
    if path.exists():
        return Check(name, bad, f"{path} exists but is not a directory")
    ancestor = _existing_ancestor(path)
    if ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK):
        return Check(name, "pass", f"{path} will be created (under writable {ancestor})")
    return Check(name, bad, f"{path} cannot be created: {ancestor} is not a writable directory")


def _same_fs_check(envs: Path, pkgs: Path) -> Check:
    try:
        dev_envs = _existing_ancestor(envs).stat().st_dev
        dev_pkgs = _existing_ancestor(pkgs).stat().st_dev
    except OSError as exc:
        return Check("hardlinks", "warn", f"cannot stat envs/pkgs dirs: {exc}")
    if dev_envs == dev_pkgs:
        return Check("hardlinks", "pass", f"{envs} and {pkgs} are on one filesystem")
    return Check("hardlinks", "warn", f"{envs} and {pkgs} are on different filesystems: packages "
                 "will be copied into every env instead of hardlinked")


def _file_url_path(url: str) -> Path:
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(url).path))


def _channel_checks(site: SiteConfig, probe_timeout: float) -> list[Check]:
    checks = []
    remote = []
    urls = list(effective_channels(site)) + [u for n, u in site.mirrors.items()
                                            if n not in site.channels]
    for url in urls:
        if not url.startswith("file://"):
            remote.append(url)
            continue
        path = _file_url_path(url)
        if not path.is_dir():
            checks.append(Check(f"channel {url}", "fail", f"{path} does not exist"))
        elif not any(path.glob("*/repodata.json")):
            checks.append(Check(f"channel {url}", "warn", f"{path} has no <subdir>/repodata.json "
                                "yet; index it (e.g. conda index) before building"))
        else:
            subdirs = sorted(p.parent.name for p in path.glob("*/repodata.json"))
            checks.append(Check(f"channel {url}", "pass", f"local channel ({', '.join(subdirs)})"))
    if remote:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(remote))) as pool:
            checks.extend(pool.map(lambda url: probe_channel(url, probe_timeout), remote))
    return checks


def _channel_base_url(channel: str) -> str:
    """The URL a channel name (``conda-forge``) stands for, as the rattler engine resolves it."""
    if "://" in channel:
        return channel
    from rattler import Channel

    return str(Channel(channel).base_url)


def probe_channel(url: str, timeout: float = PROBE_TIMEOUT) -> Check:
    """Whether the remote channel ``url`` answers for ``noarch/repodata.json`` (every conda
    channel has one) within ``timeout`` seconds, and if not, what went wrong."""
    import socket
    import time
    import urllib.error
    import urllib.request

    name = f"channel {url}"
    target = f"{_channel_base_url(url).rstrip('/')}/noarch/repodata.json"
    started = time.monotonic()
    try:
        request = urllib.request.Request(target, method="HEAD",
                                         headers={"User-Agent": "hpcenv-site-check"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        hint = ("not a conda channel, or a misspelt name" if exc.code == 404 else
                "credentials needed (a token in the URL, or a proxy)" if exc.code in (401, 403)
                else "the server failed")
        return Check(name, "fail", f"HTTP {exc.code} for noarch/repodata.json: {hint}")
    except (urllib.error.URLError, socket.timeout, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (socket.timeout, TimeoutError)) or "timed out" in str(reason):
            reason = f"no answer within {timeout:g} s"
        return Check(name, "fail", f"unreachable ({reason}): builds from it will fail here; "
                     "use a reachable mirror (site 'mirrors:') or a local channel")
    seconds = time.monotonic() - started
    return Check(name, "pass", f"remote, reachable (HTTP {status} in {seconds:.1f} s)")


def _partition_checks(site: SiteConfig) -> list[Check]:
    if not site.partitions:
        slurm = site.scheduler != "local"
        status: CheckStatus = "warn" if slurm else "pass"
        return [Check("partitions", status, "none listed: jobs go to Slurm's default partition"
                      if slurm else "none listed (local scheduler)")]
    checks = []
    for p in site.partitions:
        if not p.is_gpu:
            checks.append(Check(f"partition {p.name}", "pass", "CPU"))
            continue
        what = f"{p.gpus_per_node}x {p.gpu_type or 'GPU'}"
        status = "pass"
        if p.driver is not None:
            # Validation already refused drivers the table cannot place.
            what += f", driver {p.driver} (CUDA <= {drivers.max_cuda_for_driver(p.driver)})"
        elif p.max_cuda is not None:
            what += f", CUDA <= {p.max_cuda}"
            if drivers.newer_than_table(p.max_cuda):
                status = "warn"
                newest = drivers.known_cuda_versions()[-1]
                what += (f": newer than hpcenv's driver table (newest {newest}), so jobs "
                         "are matched by version number only; upgrade hpcenv to know its "
                         "driver minimum")
        else:
            what += f", per-node driver from node feature {p.node_feature!r}"
        checks.append(Check(f"partition {p.name}", status, what))
    return checks


def _scheduler_checks(site: SiteConfig, live: Sequence[PartitionState] | None) -> list[Check]:
    """Which Slurm backend the site's ``scheduler`` picks here (and why), then the partitions
    compared with what it reports (``live``, else asked through that backend)."""
    import shutil

    bin_dir = site.slurm.bin_dir
    sbatch = str(bin_dir / "sbatch") if bin_dir and (bin_dir / "sbatch").is_file() else \
        None if bin_dir else shutil.which("sbatch")
    checks: list[Check] = []
    selection = None
    if sbatch is None:
        where = f"in slurm.bin_dir {bin_dir}" if bin_dir else "on PATH"
        checks.append(Check("scheduler", "warn", f"{site.scheduler}, but sbatch is not {where} "
                            "here: this host cannot submit (use --remote from a laptop)"))
    else:
        try:
            selection = select_scheduler(site.scheduler, state_dir=site.state_dir,
                                         bin_dir=bin_dir, timeout=20.0)
            checks.append(Check("scheduler", "pass", f"backend {selection.scheduler.kind} "
                                f"({selection.why}); sbatch at {sbatch}"))
        except HpcenvError as exc:
            checks.append(Check("scheduler", "fail", str(exc)))
    if live is None and selection is not None:
        try:
            live = selection.scheduler.partitions()
        except HpcenvError as exc:
            checks.append(Check("slurm", "warn", f"cannot ask Slurm for its partitions: {exc}"))
    if live is not None:
        checks.extend(_live_partition_checks(site, live))
    return checks


def _live_partition_checks(site: SiteConfig, live: Sequence[PartitionState]) -> list[Check]:
    """Compare the configured partitions with Slurm's view of them."""
    states = {p.name: p for p in live}
    checks = []
    for p in site.partitions:
        name = f"slurm partition {p.name}"
        state = states.get(p.name)
        if state is None:
            checks.append(Check(name, "fail", f"Slurm has no partition {p.name!r} (it has: "
                                f"{', '.join(states) or 'none'}); fix partitions in the site"))
            continue
        problems = []
        if p.is_gpu and state.gpus_total == 0:
            problems.append("Slurm reports no GPUs (gres) on its nodes")
        if p.gpu_type and state.gpu_types and p.gpu_type not in state.gpu_types:
            problems.append(f"gpu_type {p.gpu_type} but its nodes have "
                            f"{', '.join(state.gpu_types)}")
        if p.node_feature is not None:
            bare = [n.name for n in state.nodes
                    if not any(p.feature_cuda(f) is not None for f in n.features)]
            if bare:
                problems.append(f"nodes {', '.join(bare)} have no feature matching "
                                f"{p.node_feature!r}: CUDA jobs will never run there")
        if problems:
            checks.append(Check(name, "warn", "; ".join(problems)))
        else:
            count = len(state.nodes)
            checks.append(Check(name, "pass", f"{count} node{'s' * (count != 1)}, "
                                f"state {state.state}"))
    return checks


def _conda_check(site: SiteConfig) -> Check:
    import shutil

    needed = site.engine == "conda" or site.launcher == "conda-run"
    if site.conda_exe is None:
        return Check("conda_exe", "pass", "not set: hpcenv builds with rattler and activates "
                     "envs itself")
    found = shutil.which(site.conda_exe)
    if found:
        return Check("conda_exe", "pass", f"{found}")
    why = f"{site.conda_exe} is not an executable file or a command on PATH"
    if needed:
        return Check("conda_exe", "fail", f"{why}, and engine/launcher need it")
    return Check("conda_exe", "warn", f"{why}; launcher auto will use hpcenv's activation")


def _group_check(group: str) -> Check:
    import grp

    try:
        info = grp.getgrnam(group)
    except KeyError:
        return Check("permissions.group", "fail", f"group {group!r} does not exist on this host")
    if info.gr_gid in os.getgroups() or info.gr_gid == os.getegid() or os.geteuid() == 0:
        return Check("permissions.group", "pass", f"group {group} (gid {info.gr_gid})")
    return Check("permissions.group", "warn", f"you are not in group {group}: shared envs you "
                 "build will not be group-owned")


def current_umask() -> int:
    """This process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # os.umask can only be read by setting it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _shared_cache_check(cache: Path, group: str, umask: int) -> Check:
    """Can every member of ``group``, and nobody else, use what any of them puts into the
    package cache?

    hpcenv installs under the umask the site's ``dir_mode`` implies, but the engine creates
    cache entries and their ``.cache.lock`` files with the umask it runs under: a plain
    ``conda`` run under umask 022 leaves entries the next member fails on.  Lock files anyone
    can open let someone outside the group hold a ``flock`` that stalls the lab's builds.
    """
    import stat

    name = "pkgs_dirs[0] sharing"
    try:
        if cache.is_relative_to(Path.home()):
            return Check(name, "pass", f"{cache} is under your home: a per-user cache")
    except RuntimeError:  # no home directory to compare with
        pass
    problems = []
    if umask & 0o020:
        problems.append(f"your umask {umask:03o} makes the cache entries plain conda runs create "
                        f"unwritable for the rest of group {group} (hpcenv builds use 002)")
    if cache.is_dir():
        info = cache.stat()
        if not info.st_mode & stat.S_IWGRP:
            problems.append(f"{cache} is not group-writable")
        if not info.st_mode & stat.S_ISGID:
            problems.append(f"{cache} is not setgid, so new entries do not get group {group}")
        if info.st_mode & 0o007:
            problems.append(f"{cache} is open to users outside group {group}, who could hold "
                            "its lock files and stall the lab's builds")
        owner = group_name(info.st_gid)
        if owner != group:
            problems.append(f"{cache} belongs to group {owner}, not {group}")
    if not problems:
        where = cache if cache.is_dir() else f"{cache} (not created yet)"
        return Check(name, "pass", f"{where}: group {group} alone can share it under umask "
                     f"{umask:03o}")
    return Check(name, "warn", "; ".join(problems) + f". Fix: the cache dir is group {group}, "
                 f"mode 2770 (chgrp {group} {cache}; chmod 2770 {cache}) and plain conda runs "
                 f"into it use umask 002, or one service account owns the cache and does all "
                 f"builds")


def _exists_check(name: str, path: Path) -> Check:
    if path.is_dir():
        return Check(name, "pass", str(path))
    return Check(name, "fail", f"{path} is not a directory")


def _lock_checks(site: SiteConfig) -> list[Check]:
    """One check per place hpcenv keeps locks (build locks under each envs dir, the package
    cache lock, the registry's name locks): the filesystem type and what its mount options mean
    for ``flock`` across nodes, and whether the lease protocol's atomic rename and heartbeat
    work there.  ``flock`` only ever serves as a same-node fast path, so a node-local or
    failing flock is reported, not failed."""
    places = [(f"locks envs_dirs[{i}]", path) for i, path in enumerate(site.envs_dirs)]
    places += [("locks pkgs_dirs[0]", site.pkgs_dirs[0]), ("locks registry", site.registry)]
    stale_after = site.locks.stale_after
    checks = []
    for name, path in places:
        # Before the first build the dir may not exist; its nearest ancestor is on the same
        # filesystem in all but mount-point edge cases.
        ok, detail = probe_lock_support(_existing_ancestor(path))
        if not ok:
            checks.append(Check(name, "fail", detail + "; put this dir on a filesystem with "
                                "POSIX rename semantics"))
        elif stale_after is None:
            checks.append(Check(name, "warn", detail + "; locks.stale_after is null: a builder "
                                "that dies on another login node keeps its lock until its "
                                ".lease dir is removed by hand (set e.g. stale_after: 60)"))
        else:
            checks.append(Check(name, "pass", detail + f"; a holder that dies on another node "
                                f"is detected {stale_after:g}s after its last heartbeat"))
    return checks
