"""The SSH session to a remote login node: one fabric connection per command, opened lazily and
reused for every step (version check, uploads, the remote ``hpcenv`` call, polling).

Host keys are checked against the system and user ``known_hosts`` files, the files named by
``~/.ssh/config`` (``UserKnownHostsFile``/``GlobalKnownHostsFile``), the remote's own
``known_hosts`` file (a lab may ship its login nodes' keys with the site config) and any extra
files given to ``RemoteSession``; an unknown or changed key is refused (see ``hostkeys``).
Connection failures become the classified one-line errors of ``hpcenv.remote.errors``.
``follow`` and the job status of ``hpcenv.remote.jobs`` survive dropped connections: they
reconnect on the session's backoff schedule.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shlex
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hpcenv import __version__
from hpcenv.errors import HpcenvError
from hpcenv.fsutil import current_user
from hpcenv.remote.errors import (
    AuthRefused,
    ConnectionLost,
    HostKeyMismatch,
    HostUnreachable,
    IncompatibleVersion,
    RemoteCommandFailed,
    RemoteError,
    RemoteHpcenvMissing,
    UnknownHostKey,
    last_lines,
    upload_error,
)
from hpcenv.remote.hostkeys import (
    SYSTEM_KNOWN_HOSTS,
    UnlistedHostKey,
    fingerprint,
    hostspec,
    reject_unknown_keys,
    split_hostspec,
)
from hpcenv.spec.drivers import version_key

if TYPE_CHECKING:
    import fabric
    import paramiko

    from hpcenv.site.config import Remote


DEFAULT_WORKDIR = "~/.hpcenv/work"


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


def _major_minor(text: str) -> tuple[int, ...] | None:
    """Major and minor of the first dotted version in ``text`` (``hpcenv 0.1.0`` -> ``(0, 1)``)."""
    match = re.search(r"\d+\.\d+", text)
    return version_key(match.group(0)) if match else None


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
        conn.user = current_user()


def _set_timeout(conn: fabric.Connection, seconds: float) -> None:
    """Fabric truncates its ``connect_timeout`` to whole seconds and treats 0 as "none", so 0.5
    would mean waiting for ever: set the attribute it hands paramiko after construction."""
    conn.connect_timeout = seconds


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
        conn.client.set_missing_host_key_policy(reject_unknown_keys())
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
        if isinstance(exc, UnlistedHostKey):
            plain, key_port = split_hostspec(exc.hostname)
            return UnknownHostKey(
                f"remote '{name}': unknown host key for {exc.hostname}{via} "
                f"({exc.key.get_name()} {fingerprint(exc.key)}), not in any known_hosts file; "
                f"check the fingerprint with your admins, then add it: ssh-keyscan -p "
                f"{key_port} {plain} >> ~/.ssh/known_hosts (or connect once with ssh)")
        if isinstance(exc, paramiko.BadHostKeyException):
            # paramiko names the bad host without its port; the hop that failed is the target
            # unless a jump host has that name.
            key_port = int(conn.port) if exc.hostname == conn.host else 22
            spec = hostspec(exc.hostname, key_port)
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
