"""The kinds of remote failure, each a one-line ``HpcenvError`` that says what happened and what
to do: host unreachable, authentication refused, unknown host key, host key mismatch, remote
hpcenv missing, incompatible remote version, remote command failure (with the last lines of its
stderr)."""

from __future__ import annotations

from pathlib import Path

from hpcenv.errors import HpcenvError


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


def last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) if lines else "(no stderr)"


def upload_error(local: Path, remote: str, exc: OSError) -> HpcenvError:
    """Say which side failed: reading the local file, or writing the remote copy."""
    if exc.filename is not None and Path(exc.filename) == Path(local):
        return HpcenvError(f"cannot read {local} to upload it: {exc.strerror or exc}; fix its "
                           f"permissions or leave it out with --exclude")
    return HpcenvError(f"uploading {local} to {remote} failed: {exc}; check free space and "
                       f"permissions there")
