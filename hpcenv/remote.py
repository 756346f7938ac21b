"""Remote login nodes over SSH (fabric): ``hpcenv --remote NAME COMMAND ...``.

A laptop runs hpcenv commands on a cluster's login node: one SSH connection per command, reused
for every step (version check, uploads, the remote ``hpcenv`` call, polling).  The remote side runs
its own hpcenv, so envs are built there through its locked builder and jobs go to its scheduler.

Files a command names (script, spec, lock) travel to ``WORKDIR/inputs/<hash of names and
contents>/`` unless they sit in a ``--sync`` tree: a queued job still reads its own script when it
starts, however many submits follow, and identical inputs are sent once.  ``--wait`` and
``logs -f`` survive dropped connections: they reconnect on the session's backoff schedule.

Host keys are checked against the system and user ``known_hosts`` files, the files named by
``~/.ssh/config`` (``UserKnownHostsFile``/``GlobalKnownHostsFile``), the remote's own
``known_hosts`` file (a lab may ship its login nodes' keys with the site config) and any extra
files given to ``RemoteSession``; an unknown or changed key is refused, never accepted silently.  Fabric itself
would auto-add unknown keys, so every connection (and jump host) gets a rejecting policy here.

Failures become one-line ``HpcenvError`` messages that say which of these happened and what to do:
host unreachable, authentication refused, unknown host key, host key mismatch, remote hpcenv
missing, incompatible remote version, remote command failure (with the last lines of its stderr).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import logging
import os
import posixpath
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from hpcenv import __version__
from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.jobs import POLL_FIRST, POLL_MAX, job_exit_code, live_status, wait_for
from hpcenv.sync import remote_manifest, sync_dir, upload_error

if TYPE_CHECKING:
    import fabric
    import paramiko

    from hpcenv.cli.context import Context
    from hpcenv.scheduler.base import JobInfo, Scheduler
    from hpcenv.site import Remote


DEFAULT_WORKDIR = "~/.hpcenv/work"
SYSTEM_KNOWN_HOSTS = (Path("/etc/ssh/ssh_known_hosts"), Path("~/.ssh/known_hosts"))

# --- errors -------------------------------------------------------------------------------------

class RemoteError(HpcenvError):
    """A remote failure; subclasses say which kind, so callers and tests can tell them apart."""


class HostUnreachable(RemoteError):
    pass


class AuthRefused(RemoteError):
    pass


class UnknownHostKey(RemoteError):
    pass


class HostKeyMismatch(RemoteError):
    pass


class RemoteHpcenvMissing(RemoteError):
    pass


class IncompatibleVersion(RemoteError):
    pass


class RemoteCommandFailed(RemoteError):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.remote_exit_code = exit_code


class ConnectionLost(HostUnreachable):
    """The connection dropped while a command ran; callers that can resume reconnect."""


class TextSink(Protocol):
    """Where streamed output goes: a text file such as ``sys.stdout``, or any writer."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class RunResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Backoff:
    """Reconnect schedule: ``attempts`` tries, sleeping ``first``, ``2*first``, ... (``cap``)."""

    attempts: int = 6
    first: float = 0.5
    cap: float = 10.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        for _ in range(self.attempts):
            yield delay
            delay = min(delay * 2, self.cap)


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a host key."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "(no stderr)"


def _hostspec(host: str, port: int) -> str:
    """How known_hosts names a host: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


def _split_hostspec(spec: str) -> tuple[str, int]:
    if spec.startswith("[") and "]:" in spec:
        host, port = spec[1:].split("]:", 1)
        return host, int(port)
    return spec, 22


def _major_minor(text: str) -> tuple[int, ...] | None:
    """Major and minor of the first dotted version in ``text`` (``hpcenv 0.1.0`` -> ``(0, 1)``)."""
    from hpcenv.drivers import version_key

    match = re.search(r"\d+\.\d+", text)
    return version_key(match.group(0)) if match else None


class _UnknownKey(Exception):
    """Raised from the host-key policy; turned into ``UnknownHostKey`` by the session."""

    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname = hostname
        self.key = key


def _reject_policy() -> paramiko.MissingHostKeyPolicy:
    import paramiko

    class RejectUnknown(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                             key: paramiko.PKey) -> None:
            raise _UnknownKey(hostname, key)

    return RejectUnknown()


def _quiet_paramiko() -> None:
    """Keep paramiko's transport thread from printing tracebacks on stderr (through logging's
    last-resort handler) when a handshake fails: the failure reaches the user as one classified
    line instead.  Handlers an application configured on the root logger still get the records."""
    logger = logging.getLogger("paramiko")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())


def _close_chain(conn: fabric.Connection) -> None:
    """Close a connection and its jump hosts (fabric closes neither a half-open client nor
    the gateway)."""
    conn.close()
    conn.client.close()
    if conn.gateway is not None and not isinstance(conn.gateway, str):
        _close_chain(conn.gateway)


def _default_user(conn: fabric.Connection, *, explicit: bool) -> None:
    """Log in as ssh would when neither the remote nor ~/.ssh/config names a user: as the
    account this process runs under.  Fabric would take $USER/$LOGNAME, which a shell, sudo or
    a container may have set to someone else."""
    if not explicit and not conn.ssh_config.get("user"):
        from hpcenv.fsutil import current_user

        conn.user = current_user()


def _set_timeout(conn: fabric.Connection, seconds: float) -> None:
    """Fabric truncates its ``connect_timeout`` to whole seconds and treats 0 as "none", so 0.5
    would mean waiting for ever: set the attribute it hands paramiko after construction."""
    conn.connect_timeout = seconds


# --- the session ----------------------------------------------------------------------------------

@dataclass
class RemoteSession:
    """One SSH connection to a remote login node, opened lazily and reused for every step.

    ``known_hosts`` adds files to the default ones; ``connect_timeout`` bounds TCP connect and
    the SSH handshake; ``backoff`` is the reconnect schedule used by resumable operations.
    """

    name: str
    remote: Remote
    known_hosts: Sequence[Path] = ()
    connect_timeout: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    info: Callable[[str], None] = lambda message: None
    debug: Callable[[str], None] = lambda message: None
    _conn: fabric.Connection | None = field(default=None, init=False, repr=False)
    _workdir: str | None = field(default=None, init=False, repr=False)
    _version: str | None = field(default=None, init=False, repr=False)

    # -- connection ----------------------------------------------------------------------------
    @property
    def target(self) -> str:
        user = f"{self.remote.user}@" if self.remote.user else ""
        port = f":{self.remote.port}" if self.remote.port else ""
        return f"{user}{self.remote.host}{port}"

    @property
    def hpcenv_command(self) -> str:
        return self.remote.hpcenv_command or "hpcenv"

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            _close_chain(self._conn)
            self._conn = None

    @property
    def connected(self) -> bool:
        return (self._conn is not None and self._conn.transport is not None
                and self._conn.transport.is_active())

    def _key_files(self) -> list[str]:
        identity = self.remote.identity_file
        return [str(Path(identity).expanduser())] if identity else []

    def _known_hosts_files(self, conn: fabric.Connection) -> list[Path]:
        files = list(SYSTEM_KNOWN_HOSTS)
        for option in ("globalknownhostsfile", "userknownhostsfile"):
            value = conn.ssh_config.get(option)
            if value:
                files.extend(Path(part) for part in str(value).split())
        return [f.expanduser() for f in files] + self._named_known_hosts()

    def _named_known_hosts(self) -> list[Path]:
        """The remote's own ``known_hosts`` and the session's extra files.  Unlike the default
        files these were named on purpose, so a missing one is an error, not skipped: otherwise
        a typo would surface later as a puzzling "unknown host key"."""
        named = [(Path(self.remote.known_hosts), f"known_hosts of remote '{self.name}' "
                                                 f"({self.remote.source})")] \
            if self.remote.known_hosts else []
        named += [(Path(p), "known_hosts file given to the session") for p in self.known_hosts]
        files = []
        for path, what in named:
            path = path.expanduser()
            if not path.is_file():
                raise HpcenvError(f"remote '{self.name}': {what}: {path} is not a file; fix the "
                                  f"path or create it (ssh-keyscan -p PORT HOST > {path})")
            files.append(path)
        return files

    def _secure(self, conn: fabric.Connection) -> None:
        """Replace fabric's auto-accept host-key policy by known_hosts checking, on every hop."""
        conn.client.set_missing_host_key_policy(_reject_policy())
        for path in self._known_hosts_files(conn):
            if path.is_file():
                try:
                    conn.client.load_system_host_keys(str(path))
                except (OSError, ValueError) as exc:
                    raise HpcenvError(f"cannot read known_hosts file {path}: {exc}; fix or "
                                      f"remove the broken line") from exc
        if conn.gateway is not None and not isinstance(conn.gateway, str):
            self._secure(conn.gateway)

    def _new_connection(self) -> fabric.Connection:
        import fabric

        _quiet_paramiko()
        # The banner wait is the first step of the handshake connect_timeout bounds (paramiko
        # would give a silent port 15 s).
        connect_kwargs: dict[str, Any] = {"banner_timeout": self.connect_timeout}
        keys = self._key_files()
        if keys:
            connect_kwargs["key_filename"] = keys
        gateway = None
        proxy_jump = self.remote.proxy_jump
        if proxy_jump:
            # ProxyJump "a,b" means: reach a, from a reach b, from b reach the target.
            for hop in proxy_jump.split(","):
                gateway = fabric.Connection(hop.strip(), gateway=gateway,
                                            connect_kwargs=dict(connect_kwargs),
                                            connect_timeout=self.connect_timeout)
                _default_user(gateway, explicit="@" in hop)
                _set_timeout(gateway, self.connect_timeout)
        conn = fabric.Connection(
            self.remote.host, user=self.remote.user or None, port=self.remote.port or None,
            connect_kwargs=connect_kwargs, connect_timeout=self.connect_timeout,
            gateway=gateway, inline_ssh_env=True)
        _default_user(conn, explicit=bool(self.remote.user))
        _set_timeout(conn, self.connect_timeout)
        self._secure(conn)
        return conn

    def connect(self) -> None:
        """Open the connection (idempotent); raise a classified ``RemoteError`` on failure."""
        if self.connected:
            return
        self.close()
        conn = self._new_connection()
        try:
            conn.open()
        except BaseException as exc:
            _close_chain(conn)
            error = self._classify(exc, conn)
            if error is None:
                raise
            raise error from exc
        assert conn.transport is not None
        # Notice a silently dead link during long waits instead of hanging on it.
        conn.transport.set_keepalive(15)
        self._conn = conn

    def _classify(self, exc: BaseException, conn: fabric.Connection) -> RemoteError | None:
        import paramiko

        name, target = self.name, self.target
        via = f" via jump host {self.remote.proxy_jump}" if self.remote.proxy_jump else ""
        port = conn.port
        if isinstance(exc, _UnknownKey):
            plain, key_port = _split_hostspec(exc.hostname)
            return UnknownHostKey(
                f"remote '{name}': unknown host key for {exc.hostname}{via} "
                f"({exc.key.get_name()} {fingerprint(exc.key)}), not in any known_hosts file; "
                f"check the fingerprint with your admins, then add it: ssh-keyscan -p "
                f"{key_port} {plain} >> ~/.ssh/known_hosts (or connect once with ssh)")
        if isinstance(exc, paramiko.BadHostKeyException):
            # paramiko names the bad host without its port; the hop that failed is the target
            # unless a jump host has that name.
            key_port = int(conn.port) if exc.hostname == conn.host else 22
            spec = _hostspec(exc.hostname, key_port)
            return HostKeyMismatch(
                f"remote '{name}': HOST KEY MISMATCH for {spec}{via}: it presented "
                f"{exc.key.get_name()} {fingerprint(exc.key)} but known_hosts expects "
                f"{fingerprint(exc.expected_key)}; this may be an attack or a reinstalled host: "
                f"ask your admins, and only then replace the entry (ssh-keygen -R '{spec}', then "
                f"ssh-keyscan -p {key_port} {exc.hostname} >> ~/.ssh/known_hosts)")
        if isinstance(exc, paramiko.AuthenticationException):
            keys = self._key_files()
            tried = (f"key {', '.join(keys)}" if keys
                     else "the ssh agent and ~/.ssh/id_* keys (no identity_file set)")
            return AuthRefused(
                f"remote '{name}': authentication refused by {target}{via} (tried {tried}); "
                f"add the public key to ~/.ssh/authorized_keys on the login node, or set "
                f"identity_file for remote '{name}' to a key it accepts")
        if isinstance(exc, socket.gaierror):
            return HostUnreachable(f"remote '{name}': cannot resolve host {self.remote.host!r}"
                                   f"{via} ({exc.strerror}); check the host name in the remote's "
                                   f"config or ~/.ssh/config")
        if isinstance(exc, (TimeoutError, socket.timeout)):
            return HostUnreachable(f"remote '{name}': connection to {target}{via} timed out "
                                   f"after {self.connect_timeout:g}s; check the host, port and "
                                   f"your network/VPN")
        silent = str(exc) == "No existing session" or (
            "banner" in str(exc) and isinstance(exc.__context__, (TimeoutError, socket.timeout)))
        if isinstance(exc, paramiko.SSHException) and silent:
            # paramiko's start_client stops waiting at the timeout without saying so; the next
            # step then finds no session.
            return HostUnreachable(f"remote '{name}': SSH connection to {target}{via} failed: "
                                   f"no SSH handshake within {self.connect_timeout:g}s; check "
                                   f"the host and port are an SSH server (and not overloaded)")
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            return HostUnreachable(f"remote '{name}': connection to {target}{via} refused "
                                   f"(nothing listening on port {port}); check host and port")
        if isinstance(exc, ConnectionRefusedError):
            return HostUnreachable(f"remote '{name}': connection to {target}{via} refused; "
                                   f"check host and port")
        if isinstance(exc, (paramiko.SSHException, EOFError, OSError)):
            return HostUnreachable(f"remote '{name}': SSH connection to {target}{via} failed: "
                                   f"{exc or type(exc).__name__}; check the host and port are an "
                                   f"SSH server")
        return None

    def reconnect(self) -> None:
        """Reconnect after a drop, with exponential backoff; auth and host-key errors are final."""
        last: HostUnreachable | None = None
        for delay in self.backoff.delays():
            self.close()
            try:
                self.connect()
                return
            except HostUnreachable as exc:
                last = exc
                self.info(f"hpcenv: connection to {self.target} lost; retrying in {delay:g}s")
                time.sleep(delay)
        assert last is not None
        raise HostUnreachable(f"{last} (gave up after {self.backoff.attempts} reconnect attempts)")

    @property
    def connection(self) -> fabric.Connection:
        self.connect()
        assert self._conn is not None
        return self._conn

    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP channel (fabric keeps one per connection)."""
        return self.connection.sftp()

    # -- commands ------------------------------------------------------------------------------
    def run(self, command: str, *, check: bool = True, what: str | None = None,
            out: TextSink | None = None, err: TextSink | None = None) -> RunResult:
        """Run a shell command remotely (no pty, no stdin).

        With ``out``/``err`` the output streams there as it arrives; it is captured either way.
        ``check`` raises ``RemoteCommandFailed`` (naming ``what`` and the last stderr lines) on a
        non-zero exit; a dropped connection raises ``ConnectionLost`` whatever ``check`` says.
        """
        conn = self.connection
        try:
            hide = {(True, True): "both", (True, False): "out", (False, True): "err"}.get(
                (out is None, err is None), False)
            result = conn.run(command, hide=hide, warn=True, pty=False,
                              in_stream=False, out_stream=out, err_stream=err)
        except Exception as exc:
            import paramiko

            # A link that died between commands may not be noticed until a channel is opened.
            if isinstance(exc, (paramiko.SSHException, EOFError, OSError)) or not self.connected:
                raise ConnectionLost(f"remote '{self.name}': connection to {self.target} lost "
                                     f"while running {what or command!r}") from exc
            raise
        if result.exited == -1 or not self.connected:
            # paramiko reports -1 when the channel closed without an exit status.
            raise ConnectionLost(f"remote '{self.name}': connection to {self.target} lost "
                                 f"while running {what or command!r}")
        run = RunResult(command, int(result.exited), result.stdout, result.stderr)
        if check and run.exit_code != 0:
            raise RemoteCommandFailed(
                f"remote '{self.name}': {what or command} failed on {self.target} "
                f"(exit {run.exit_code}): {last_lines(run.stderr or run.stdout)}", run.exit_code)
        return run

    def hpcenv_line(self, args: Sequence[str], *, cwd: str | None = None) -> str:
        """The remote shell line running hpcenv with ``args`` (each quoted), optionally in cwd.

        ``hpcenv_command`` is used as written (it may be ``module load x && hpcenv`` or a path
        with arguments); only the hpcenv arguments are quoted.
        """
        line = f"{self.hpcenv_command} {shlex.join(args)}"
        return f"cd {shlex.quote(cwd)} && {line}" if cwd else line

    def check_version(self) -> str:
        """The remote hpcenv version; raises when it is missing or of another major.minor."""
        if self._version is not None:
            return self._version
        result = self.run(self.hpcenv_line(["--version"]), check=False,
                          what="hpcenv --version")
        if result.exit_code in (126, 127) or (
                result.exit_code != 0 and "not found" in result.stderr):
            raise RemoteHpcenvMissing(
                f"remote '{self.name}': hpcenv not found on {self.target} (ran "
                f"{self.hpcenv_command!r}: {last_lines(result.stderr, 1)}); install hpcenv "
                f"there or set hpcenv_command for remote '{self.name}' to its full path")
        if result.exit_code != 0:
            raise RemoteCommandFailed(
                f"remote '{self.name}': {self.hpcenv_command} --version failed on {self.target} "
                f"(exit {result.exit_code}): {last_lines(result.stderr or result.stdout)}",
                result.exit_code)
        text = result.stdout.strip()
        remote_mm, local_mm = _major_minor(text), _major_minor(__version__)
        if remote_mm is None or "hpcenv" not in text:
            raise RemoteHpcenvMissing(
                f"remote '{self.name}': {self.hpcenv_command!r} --version printed {text!r}, not "
                f"an hpcenv version; set hpcenv_command for remote '{self.name}' to hpcenv")
        if remote_mm != local_mm:
            raise IncompatibleVersion(
                f"remote '{self.name}': remote {text} is not compatible with local hpcenv "
                f"{__version__} (major.minor must match); upgrade one side, or point "
                f"hpcenv_command at a matching install")
        self._version = text
        return text

    def workdir(self) -> str:
        """The remote working dir as an absolute path, created on first use."""
        if self._workdir is None:
            raw = self.remote.workdir or DEFAULT_WORKDIR
            # A leading ~ is expanded by the remote shell; everything else stays literal.
            if raw == "~" or raw.startswith("~/"):
                quoted = '"$HOME"' + (shlex.quote(raw[1:]) if raw != "~" else "")
            else:
                quoted = shlex.quote(raw)
            result = self.run(f"mkdir -p {quoted} && cd {quoted} && pwd -P",
                              what=f"creating workdir {raw}")
            self._workdir = result.stdout.strip().splitlines()[-1]
        return self._workdir

    def upload(self, local: Path, remote_path: str) -> None:
        """Upload one file (parent created), keeping its mtime.  The file appears complete or not
        at all: it is written under a temporary name and renamed into place."""
        self.run(f"mkdir -p {shlex.quote(posixpath.dirname(remote_path))}",
                 what=f"creating {posixpath.dirname(remote_path)}")
        partial = f"{remote_path}.part-{os.getpid()}"
        try:
            sftp = self.sftp()
            sftp.put(str(local), partial)
            mtime = int(local.stat().st_mtime)
            sftp.utime(partial, (mtime, mtime))
            sftp.posix_rename(partial, remote_path)
        except OSError as exc:
            raise upload_error(local, f"{self.target}:{remote_path}", exc) from exc

    # -- resumable operations ------------------------------------------------------------------
    def follow(self, command: str, out: TextSink, err: TextSink | None = None) -> int:
        """Stream a command's output; after a dropped connection, reconnect and run it again,
        skipping the output already shown (the command must replay its output from the start,
        as ``hpcenv logs -f`` does).  Returns the command's exit code."""
        # Both streams replay (hpcenv logs copies the job's stderr file to stderr).
        sink = _SkippingWriter(out)
        err_sink = _SkippingWriter(err) if err is not None else None
        while True:
            sink.rewind()
            if err_sink is not None:
                err_sink.rewind()
            try:
                return self.run(command, check=False, out=sink, err=err_sink).exit_code
            except HostUnreachable:
                # Dropped mid-command (ConnectionLost), or noticed only when the next command
                # reopened the link and the host was not back yet.
                self.info(f"hpcenv: connection to {self.target} dropped; reconnecting")
                self.reconnect()


class _SkippingWriter:
    """A text sink that drops what it already wrote in an earlier attempt (by character count)."""

    def __init__(self, target: TextSink) -> None:
        self.target = target
        self.written = 0
        self._seen = 0

    def rewind(self) -> None:
        self._seen = 0

    def write(self, text: str) -> int:
        start = self._seen
        self._seen += len(text)
        fresh = text[max(0, self.written - start):]
        if fresh:
            self.target.write(fresh)
            self.target.flush()
            self.written += len(fresh)
        return len(text)

    def flush(self) -> None:
        self.target.flush()


# --- the CLI over a remote ----------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteOptions:
    """Options that only exist over ``--remote`` and are consumed locally (never sent)."""

    sync: tuple[Path, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def extract(cls, argv: Sequence[str]) -> tuple[list[str], RemoteOptions]:
        """Pull ``--sync DIR`` and ``--exclude PATTERN`` (before any ``--``) out of argv."""
        rest, found = _take_options(argv, ("--sync", "--exclude"))
        return rest, cls(sync=tuple(Path(p) for p in found["--sync"]),
                         exclude=tuple(found["--exclude"]))


def _take_options(argv: Sequence[str], with_value: Sequence[str],
                  flags: Sequence[str] = ()) -> tuple[list[str], dict[str, list[str]]]:
    """Split ``argv`` into the words left and the values of the options named (a flag's value
    is ``""``).  Only words before a ``--`` count: what follows is the job program's."""
    rest: list[str] = []
    found: dict[str, list[str]] = {name: [] for name in (*with_value, *flags)}
    items = list(argv)
    i = 0
    while i < len(items):
        token = items[i]
        if token == "--":
            rest.extend(items[i:])
            break
        option, has_value, value = token.partition("=")
        if token in flags:
            found[token].append("")
        elif option not in with_value:
            rest.append(token)
        elif has_value:
            found[option].append(value)
        elif i + 1 < len(items):
            found[option].append(items[i + 1])
            i += 1
        else:
            raise InvalidInput(f"{option} needs a value")
        i += 1
    return rest, found


# Global options that stay on this side: where to find remotes, how to print.
_LOCAL_GLOBALS_WITH_VALUE = ("--site", "--remote")
_LOCAL_GLOBAL_FLAGS = ("--json",)
# Parsed argument names (argparse dests) that may name a local file the remote side needs.
_FILE_DESTS = ("file", "from_lock", "env_file", "script")


def _strip_local_globals(argv: Sequence[str]) -> list[str]:
    return _take_options(argv, _LOCAL_GLOBALS_WITH_VALUE, _LOCAL_GLOBAL_FLAGS)[0]


def _same_arg(token: str, value: str) -> bool:
    # argparse may have turned the value into a Path ("./x.yml" -> "x.yml"): compare as paths.
    return token == value or (bool(token) and not token.startswith("-")
                              and Path(token) == Path(value))


def _rewrite_arg(argv: list[str], dest: str, value: str, new: str) -> None:
    """Replace, in ``argv``, the argument that gives ``dest`` its ``value`` by ``new``.

    The same text may stand in several places (``submit --job-name train.py train.py``), so the
    real CLI parser decides which one it is: each token that looks like the value (or the value
    of an ``--option=value`` token) is swapped for a marker and argv parsed again; the swap that
    lands in ``dest`` is the one.
    """
    import contextlib
    import io

    from hpcenv.cli import build_parser

    parser = build_parser()
    marker = "@hpcenv-remote-argument@"
    for i, token in enumerate(argv):
        option, eq, attached = token.partition("=")
        if _same_arg(token, value):
            prefix = ""
        elif token.startswith("-") and eq and _same_arg(attached, value):
            prefix = option + eq
        else:
            continue
        trial = [*argv[:i], prefix + marker, *argv[i + 1:]]
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                parsed = parser.parse_args(trial)
        except SystemExit:
            continue
        if str(getattr(parsed, dest, None)) == marker:
            argv[i] = prefix + new
            return
    raise RuntimeError(f"no argument of {shlex.join(argv)!r} gives {dest} the value {value!r}")


def load_remote(name: str, ctx: Context) -> Remote:
    from hpcenv.site import load_remotes

    remotes = load_remotes(ctx.site())
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise InvalidInput(f"unknown remote {name!r} (known: {known}); add it under 'remotes:' in "
                       f"the site config or in ~/.config/hpcenv/remotes.yaml")
    return remotes[name]


@dataclass(frozen=True)
class PathMap:
    """Where local directories live on the remote after ``--sync`` (local root -> remote root)."""

    roots: tuple[tuple[Path, str], ...] = ()

    def remote_path(self, local: Path) -> str | None:
        local = local.resolve()
        for root, remote_root in self.roots:
            if local == root:
                return remote_root
            if root in local.parents:
                return posixpath.join(remote_root, local.relative_to(root).as_posix())
        return None


def _inputs_dir(session: RemoteSession, files: Sequence[Path]) -> str:
    """The remote directory for uploaded ``files``, named after their names and contents.

    A queued job reads its script when it starts, so a later command must never overwrite it:
    other contents get another directory, while the same contents map to the same one and are
    not sent again.
    """
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return posixpath.join(session.workdir(), "inputs", digest.hexdigest()[:16])


def _place(session: RemoteSession, files: Sequence[Path]) -> str:
    """Upload ``files`` (distinct names) together into their inputs dir; return the dir."""
    remote_dir = _inputs_dir(session, files)
    present = remote_manifest(session, remote_dir)
    for local in files:
        # Uploads are atomic, so a file of the right size in a content-named dir is complete.
        stat = present.get(local.name)
        if stat is not None and stat.size == local.stat().st_size:
            session.debug(f"hpcenv: {local} is already on {session.target} ({remote_dir})")
            continue
        remote_path = posixpath.join(remote_dir, local.name)
        session.info(f"hpcenv: uploading {local} to {session.target}:{remote_path}")
        session.upload(local, remote_path)
    return remote_dir


def _env_file_for(args: argparse.Namespace) -> Path | None:
    """The env file a local ``submit --env NAME`` would find (next to the script or in the
    working dir), when no ``--env-file`` is given: the remote submit builds a missing env from
    it the first time, as a local one would."""
    from hpcenv.submit import find_env_file

    if not getattr(args, "env", None) or getattr(args, "env_file", None) \
            or not isinstance(getattr(args, "script", None), (str, Path)):
        return None
    script = Path(args.script).expanduser()
    if not script.is_file():
        return None
    return find_env_file(args.env, [script.resolve().parent, Path.cwd()])


def _upload_inputs(session: RemoteSession, args: argparse.Namespace, argv: list[str],
                   paths: PathMap = PathMap()) -> None:
    """Point argv at remote copies of the local files the command names (spec, lock, script).

    A file inside a synced directory is already there; any other file is uploaded into a
    content-named dir under the remote workdir (with the env file a local submit would find
    placed next to the script, where the remote submit looks for it).  argv gets absolute
    remote paths.
    """
    env_file = _env_file_for(args)
    for dest in _FILE_DESTS:
        value = getattr(args, dest, None)
        if value is None or not isinstance(value, (str, Path)):
            continue
        local = Path(value).expanduser()
        if not local.is_file():
            continue
        remote_path = paths.remote_path(local)
        if remote_path is None:
            group = [local]
            if dest == "script" and env_file is not None and env_file.name != local.name:
                group.append(env_file)
            remote_path = posixpath.join(_place(session, group), local.name)
        elif dest == "script" and env_file is not None and paths.remote_path(env_file) is None:
            # The script was synced but its env file lies outside every synced tree.
            target = posixpath.join(posixpath.dirname(remote_path), env_file.name)
            session.info(f"hpcenv: uploading env file {env_file} to {session.target}:{target}")
            session.upload(env_file, target)
        _rewrite_arg(argv, dest, str(value), remote_path)


def run_remote_cli(args: argparse.Namespace, argv: Sequence[str], ctx: Context,
                   options: RemoteOptions | None = None) -> int:
    """Run one parsed hpcenv invocation on the remote ``ctx.remote``; return its exit code.

    ``argv`` is the command line as given (with ``--sync``/``--exclude`` already taken out into
    ``options``).  Local files it names are uploaded (see the module doc), the remote hpcenv runs
    in the remote workdir with the same arguments, and its output streams here.
    """
    assert ctx.remote is not None
    options = options or RemoteOptions()
    command = getattr(args, "command", None)
    if options.sync and command != "submit":
        raise InvalidInput("--sync/--exclude only apply to 'hpcenv --remote NAME submit'")
    remote = load_remote(ctx.remote, ctx)
    session = RemoteSession(ctx.remote, remote, info=ctx.info, debug=ctx.debug)
    with session:
        version = session.check_version()
        ctx.debug(f"hpcenv: {session.target} runs {version}")
        remote_argv = _strip_local_globals(argv)
        if command == "submit":
            return _remote_submit(session, args, remote_argv, ctx, options)
        _upload_inputs(session, args, remote_argv)
        line = session.hpcenv_line((["--json"] if ctx.json else []) + remote_argv,
                                   cwd=session.workdir())
        if command == "logs" and getattr(args, "follow", False):
            return session.follow(line, sys.stdout, sys.stderr)
        return session.run(line, check=False, out=sys.stdout, err=sys.stderr).exit_code


def _remote_submit(session: RemoteSession, args: argparse.Namespace, remote_argv: list[str],
                   ctx: Context, options: RemoteOptions) -> int:
    workdir = session.workdir()
    roots: list[tuple[Path, str]] = []
    for directory in options.sync:
        local = directory.expanduser().resolve()
        dest = posixpath.join(workdir, local.name or "root")
        if any(dest == other for _, other in roots):
            raise InvalidInput(f"--sync {directory}: another synced directory is also named "
                               f"{local.name!r} and would land in the same remote place; sync "
                               f"their common parent instead")
        synced = sync_dir(session, local, dest, options.exclude)
        ctx.info(f"hpcenv: synced {local} -> {session.target}:{dest}: "
                 f"{len(synced.uploaded)} file(s) sent ({synced.bytes_sent} bytes), "
                 f"{synced.unchanged} unchanged")
        roots.append((local, dest))
    paths = PathMap(tuple(roots))
    _upload_inputs(session, args, remote_argv, paths)
    # Run where the user is, when that is inside a synced tree: relative paths keep working.
    cwd = paths.remote_path(Path.cwd()) or workdir
    if getattr(args, "dry_run", False):
        # Nothing to track: show the remote's own rendering of the script and its routing.
        line = session.hpcenv_line((["--json"] if ctx.json else []) + remote_argv, cwd=cwd)
        return session.run(line, check=False, out=sys.stdout, err=sys.stderr).exit_code
    wait = bool(getattr(args, "wait", False))
    # --wait is done from here by polling, so a dropped connection does not lose the job.
    cut = remote_argv.index("--") if "--" in remote_argv else len(remote_argv)
    submit_argv = [a for a in remote_argv[:cut] if a != "--wait"] + remote_argv[cut:]
    result = session.run(session.hpcenv_line(["--json"] + submit_argv, cwd=cwd),
                         check=False, err=sys.stderr, what="hpcenv submit")
    if result.exit_code != 0:
        return result.exit_code
    data = _parse_json(result.stdout, session, "submit")
    if "job_id" not in data:
        raise RemoteCommandFailed(f"remote '{session.name}': hpcenv submit printed no job_id "
                                  f"({last_lines(result.stdout, 1)}); check the remote hpcenv "
                                  f"version", 1)
    job_id = str(data["job_id"])
    data["remote"] = session.name

    def human(d: dict[str, Any]) -> str:
        constraint = f" (constraint {d['constraint']})" if d.get("constraint") else ""
        version = f" v{d['env_version']}" if d.get("env_version") is not None else ""
        reason = f" ({d['reason']})" if d.get("reason") else ""
        return (f"submitted job {d['job_id']} on {session.name} to partition "
                f"{d.get('partition') or '(default)'}{constraint}: env {d.get('env')}{version}"
                f"{reason}")

    if not wait:
        ctx.emit(data, human)
        return 0
    # As a local --wait: the submission on stderr now, one result (JSON) when the job ended.
    ctx.info(f"hpcenv: {human(data)}; waiting")
    info = wait_for_job(session, job_id, ctx)
    code = job_exit_code(info)
    if ctx.json:
        ctx.emit({**data, "state": info.state, "exit_code": code, "node": info.node,
                  "elapsed": info.elapsed})
    return code


def _parse_json(text: str, session: RemoteSession, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RemoteCommandFailed(f"remote '{session.name}': hpcenv {what} printed no JSON "
                                  f"({last_lines(text, 1)}); is the remote hpcenv too old?",
                                  1) from exc
    if not isinstance(data, dict):
        raise RemoteCommandFailed(f"remote '{session.name}': hpcenv {what} printed "
                                  f"{type(data).__name__} JSON, expected an object", 1)
    return data


def job_info(status: dict[str, Any]) -> JobInfo:
    """A ``JobInfo`` from the remote's ``hpcenv --json status`` record (paths stay remote)."""
    from hpcenv.scheduler.base import JobInfo

    def number(key: str) -> Any:
        value = status.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return JobInfo(
        job_id=str(status.get("job_id", "")), name=str(status.get("name") or ""),
        state=str(status.get("state") or "UNKNOWN").upper(), reason=status.get("reason"),
        exit_code=number("exit_code"), signal=number("signal"), node=status.get("node"),
        elapsed=number("elapsed"), partition=status.get("partition"),
        constraint=status.get("constraint"))


@dataclass(frozen=True)
class RemoteJobStatus:
    """``status(job_id)`` of the remote scheduler, read through the remote ``hpcenv status``;
    all ``hpcenv.jobs.wait_for`` asks of a scheduler.  A dropped connection is reopened on the
    session's backoff schedule and the question asked again, so a long wait outlives a login
    node's reboot; only the reconnects are bounded."""

    session: RemoteSession

    def status(self, job_id: str) -> JobInfo:
        session = self.session
        line = session.hpcenv_line(["--json", "status", job_id])
        while True:
            try:
                result = session.run(line, what=f"hpcenv status {job_id}")
            except HostUnreachable:  # see RemoteSession.follow
                session.info(f"hpcenv: connection to {session.target} dropped; reconnecting")
                session.reconnect()
                continue
            return job_info(_parse_json(result.stdout, session, "status"))


def wait_for_job(session: RemoteSession, job_id: str, ctx: Context, *,
                 first_poll: float = POLL_FIRST, max_poll: float = POLL_MAX) -> JobInfo:
    """Wait for a remote job as a local ``--wait`` does (``hpcenv.jobs.wait_for``: backoff
    polling, the same live status line), polling over the session.  No overall limit, as with
    ``sbatch --wait``: jobs may run for days."""
    with live_status(sys.stderr, enabled=ctx.verbosity >= 0) as show:
        # wait_for only ever calls status(): RemoteJobStatus is all of a scheduler it needs.
        return wait_for(cast("Scheduler", RemoteJobStatus(session)), job_id, on_poll=show,
                        first=first_poll, most=max_poll)
