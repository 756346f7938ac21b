"""The rattler engine's child process: JSON requests on stdin, one JSON reply per line on the
pipe named by its argument, until stdin closes (the parent side is
:mod:`hpcenv.engine.rattler_engine`, which explains why engine work runs in a child).

The child is on a new build's critical path: the parent waits for its first reply, so whatever
the child imports before ``import rattler`` delays every build.  It is therefore started as a
script (``python -P .../rattler_child.py FD``), not as ``-m hpcenv.engine...``, which would
import the ``hpcenv`` and ``hpcenv.engine`` packages (dataclasses, the package records, ...)
first; and before its first reply it imports nothing of hpcenv (lockfiles are written with
:func:`hpcenv.fsutil.atomic_write_text`, imported after it).  Its package dicts carry the fields of
:class:`~hpcenv.engine.base.LockedPackage` (a test holds them in step).
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

_REQUEST_RE = re.compile(r"error sending request for url \((\S+?)\)")
_SUBDIR_RE = re.compile(r"could not find subdir '([^']+)' in channel '([^']+)'")


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent (pid ``parent``, read at start)
    dies; no-op elsewhere."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # parent died before prctl took effect
        os._exit(1)


# Requests that write (into a prefix, the package cache, a lockfile): never served before the
# child is bound to die with its parent.
_WRITES = frozenset({"install", "write_lock"})


def _to_record(pkg: dict[str, Any]) -> Any:
    from rattler import BuildString, NoArchType, PackageRecord, RepoDataRecord

    record = PackageRecord(
        name=pkg["name"], version=pkg["version"], build=BuildString(pkg["build"]),
        build_number=int(pkg["build_number"]), subdir=pkg["subdir"],
        noarch=NoArchType(pkg.get("noarch")),
        depends=list(pkg.get("depends") or []), constrains=list(pkg.get("constrains") or []),
        sha256=bytes.fromhex(pkg["sha256"]) if pkg.get("sha256") else None,
        md5=bytes.fromhex(pkg["md5"]) if pkg.get("md5") else None,
        size=pkg.get("size"), license=pkg.get("license"))
    if pkg.get("timestamp") is not None:
        import datetime as dt

        record.timestamp = dt.datetime.fromtimestamp(pkg["timestamp"] / 1000, tz=dt.timezone.utc)
    return RepoDataRecord(record, pkg["file_name"], pkg["url"], pkg["channel"])


def _from_record(record: Any) -> dict[str, Any]:
    """A record as :meth:`LockedPackage.to_dict` writes it."""
    noarch = record.noarch
    timestamp = record.timestamp
    return {"name": record.name.normalized, "version": str(record.version),
            "build": str(record.build), "build_number": record.build_number,
            "subdir": record.subdir, "url": record.url, "channel": record.channel or "",
            "file_name": record.file_name,
            "sha256": record.sha256.hex() if record.sha256 else None,
            "md5": record.md5.hex() if record.md5 else None, "size": record.size,
            "depends": list(record.depends), "constrains": list(record.constrains),
            "noarch": "python" if noarch.python else "generic" if noarch.generic else None,
            "timestamp": int(timestamp.timestamp() * 1000) if timestamp else None,
            "license": record.license}


def _virtual_packages(cuda: str | None) -> list[Any]:
    from rattler import Override, VirtualPackage, VirtualPackageOverrides

    if cuda is None:
        return VirtualPackage.detect()
    return VirtualPackage.detect(VirtualPackageOverrides(cuda=Override.string(cuda)))


def _match_specs(specs: list[str]) -> list[Any]:
    """Parse leniently, as conda does: ``solve()`` parses strings strictly and rejects
    ``name=version=build``, the form ``conda env export`` writes."""
    from rattler import MatchSpec

    parsed = []
    for spec in specs:
        try:
            parsed.append(MatchSpec(spec))
        except Exception as exc:  # noqa: BLE001 - rattler raises its own parse error types
            raise _Invalid(f"invalid match spec {spec!r}: {_one_line('parse', exc)}") from None
    return parsed


async def _solve(req: dict[str, Any]) -> dict[str, Any]:
    from rattler import ChannelPriority, Gateway, solve

    specs = _match_specs(req["specs"])
    platform = req["platform"]
    gateway = Gateway(cache_dir=req["cache_dir"]) if req.get("cache_dir") else Gateway()
    priority = (ChannelPriority.Strict if req["channel_priority"] == "strict"
                else ChannelPriority.Disabled)
    records = await solve(sources=req["channels"], specs=specs, gateway=gateway,
                          platforms=[platform, "noarch"],
                          virtual_packages=_virtual_packages(req["cuda"]),
                          channel_priority=priority)
    return {"packages": [_from_record(r) for r in records]}


async def _install(req: dict[str, Any]) -> dict[str, Any]:
    from rattler import install

    records = [_to_record(p) for p in req["packages"]]
    await install(records, target_prefix=req["prefix"], cache_dir=req["pkgs_dir"],
                  show_progress=False)
    return {}


def _write_lock(req: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    from rattler import LockChannel, LockFile, LockPlatform

    from hpcenv.fsutil import atomic_write_text

    env_name = req["env_name"]
    platform = LockPlatform(req["platform"])
    lock = LockFile([platform])
    lock.set_channels(env_name, [LockChannel(c) for c in req["channels"]])
    for pkg in req["packages"]:
        lock.add_conda_package(env_name, platform, _to_record(pkg))
    for dist in req.get("pypi") or ():
        lock.add_pypi_package(env_name, platform, dist["name"], dist["version"], dist["location"])

    # rattler only writes to a path, and not atomically: let it write into scratch, then
    # replace the target with hpcenv's one atomic writer.
    with tempfile.TemporaryDirectory(prefix="hpcenv-lock-") as scratch:
        written = os.path.join(scratch, "lock.yml")
        lock.to_path(written)
        with open(written, encoding="utf-8") as handle:
            text = handle.read()
        if req.get("extension"):
            # JSON is YAML: one flow-style mapping after rattler's keys, which readers ignore.
            text += "".join(f"{key}: {json.dumps(value, sort_keys=True)}\n"
                            for key, value in req["extension"].items())
        atomic_write_text(req["path"], text)
    return {}


def _read_lock(req: dict[str, Any]) -> dict[str, Any]:
    from rattler import LockFile

    path = req["path"]
    lock = LockFile.from_path(path)
    envs = dict(lock.environments())
    name = req.get("env_name")
    if name is None:
        # default_environment() returns a hollow wrapper (not None) when there is no "default"
        # environment in 0.28.0, so pick by name.
        if "default" in envs:
            env = envs["default"]
        elif len(envs) == 1:
            env = next(iter(envs.values()))
        else:
            raise _Invalid(f"{path}: lockfile has environments {sorted(envs)}; name one")
    elif name in envs:
        env = envs[name]
    else:
        raise _Invalid(f"{path}: no environment {name!r} in lockfile (has {sorted(envs)})")
    platforms = env.platforms()
    wanted = req.get("platform")
    if wanted is None and len(platforms) == 1:
        chosen = platforms[0]
    else:
        matches = [p for p in platforms if str(p) == wanted]
        if not matches:
            raise _Invalid(f"{path}: no packages for platform {wanted} "
                           f"(lockfile has {sorted(str(p) for p in platforms)})")
        chosen = matches[0]
    records = env.conda_repodata_records_for_platform(chosen) or []
    return {"packages": [_from_record(r) for r in records]}


class _Invalid(Exception):
    """Bad input detected in the child; maps to InvalidInput in the parent."""


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    import asyncio

    op = request.get("op")
    try:
        if op == "solve":
            return asyncio.run(_solve(request))
        if op == "install":
            return asyncio.run(_install(request))
        if op == "write_lock":
            return _write_lock(request)
        if op == "read_lock":
            return _read_lock(request)
        return {"error": f"unknown engine op {op!r}"}
    except _Invalid as exc:
        return {"error": str(exc), "kind": "invalid"}
    except Exception as exc:  # noqa: BLE001 - rattler's exception classes are not importable types
        classified = _classify(exc, request.get("channels") or [])
        if classified is not None:
            return {"error": classified[1], "kind": classified[0], "chain": str(exc)}
        # Unsatisfiable specs are the user's input (exit 2); channel and I/O errors are not.
        kind = "invalid" if type(exc).__name__ == "SolverError" else None
        return {"error": _one_line(str(op), exc)} | ({"kind": kind} if kind else {})


def _child_main(reply_fd: int) -> None:
    """Serve one JSON request per stdin line, one JSON reply per line, until stdin closes."""
    parent = os.getppid()
    # Python's TLS is never used in the child: rattler downloads over its own (Rust) network
    # stack, and asyncio, which runs rattler's coroutines, imports ssl only to offer TLS
    # transports.  Refusing that import spares the first reply ~5 ms of loading OpenSSL.
    sys.modules["ssl"] = None  # type: ignore[assignment]
    import rattler  # noqa: F401 - now, while the parent prepares its first request

    bound = False   # to die with the parent: ctypes and prctl, ~3 ms, kept off the first reply
    with os.fdopen(reply_fd, "w") as out:
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            if not bound and request.get("op") in _WRITES:
                _die_with_parent(parent)
                bound = True
            out.write(json.dumps(_handle(request)) + "\n")
            out.flush()
            if not bound:
                # While the parent reads the first reply (a solve's) and records the version:
                # bind to it, and import what the lockfile request that follows needs (~3 ms
                # the parent would otherwise wait for).
                _die_with_parent(parent)
                bound = True
                import tempfile  # noqa: F401
                import hpcenv.fsutil  # noqa: F401
    sys.stderr.flush()
    os._exit(0)  # quirk #3: skip interpreter teardown, where rattler sometimes crashes


_MIRRORS_HINT = "use local channels or site mirrors (see 'hpcenv site show')"


def _classify(exc: Exception, channels: list[str]) -> tuple[str, str] | None:
    """("unreachable" | "missing", one-line message) for channel failures, whose raw text is a
    chain of 4-5 "Caused by:" lines; None for anything else."""
    text = str(exc)
    if m := _SUBDIR_RE.search(text):
        subdir, channel = m.group(1), m.group(2).rstrip("/")
        if channel.startswith("file://"):
            root = channel[len("file://"):]
            if not os.path.isdir(root):
                return "missing", (f"channel {channel} does not exist (no directory {root}); fix "
                                   "the channel path in the spec or the site config")
            return "missing", (f"channel {channel} has no {subdir}/repodata.json: build or "
                               "index it first")
        return "unreachable", (f"channel {channel} has no {subdir} subdir (is it a conda "
                               f"channel?); {_MIRRORS_HINT}")
    m = _REQUEST_RE.search(text)
    if m is None:
        return None
    url = m.group(1)
    lowered = text.lower()
    if "dns error" in lowered or "failed to lookup address" in lowered:
        reason = "network unreachable (offline?: the host name does not resolve)"
    elif "connection refused" in lowered:
        reason = "connection refused (no server at that address?)"
    elif "timed out" in lowered or "timeout" in lowered:
        reason = "network unreachable (offline?: the connection timed out)"
    else:
        reason = "network unreachable (offline?)"
    if "repodata" not in url:
        return "unreachable", f"cannot download {url}: {reason}; {_MIRRORS_HINT}"
    channel = _channel_of(url, channels)
    return "unreachable", (f"cannot fetch repodata for channel {channel}: {reason}; "
                           f"{_MIRRORS_HINT}")


def _channel_of(url: str, channels: list[str]) -> str:
    """``NAME (URL)`` of the requested channel that ``url`` (a repodata URL) belongs to."""
    base = url.rsplit("/", 2)[0]   # drop SUBDIR/FILE
    for channel in channels:
        if base == channel.rstrip("/"):
            return base
        if "://" not in channel and base.rstrip("/").endswith("/" + channel.strip("/")):
            return f"{channel} ({base})"
    return base


def _one_line(op: str, exc: Exception) -> str:
    text = str(exc).replace("Cannot solve the request because of: ", "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = "; ".join(lines[:12]) or type(exc).__name__
    verb = {"solve": "cannot solve environment", "install": "install failed",
            "write_lock": "cannot write lockfile", "read_lock": "cannot read lockfile"}.get(op)
    return f"{verb}: {text}" if verb else text


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
