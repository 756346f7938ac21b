"""Error types shared by the library and the CLI.

The CLI maps them to exit codes: ``InvalidInput`` (bad config, spec, name or argument) exits 2,
every other ``HpcenvError`` exits 1.  Messages are one line: what is wrong, where, and how to fix
it.
"""

from __future__ import annotations


class HpcenvError(Exception):
    """A failure the user can act on; its message is shown without a traceback.

    ``details`` is optional supporting text (e.g. a table of partitions and why each was
    refused) that the CLI prints indented below the one-line message.
    """

    exit_code = 1

    def __init__(self, message: str, *, details: str | None = None) -> None:
        super().__init__(message)
        self.details = details


class InvalidInput(HpcenvError):
    """Bad user input: a config file, env spec, env name, partition or argument."""

    exit_code = 2


class NotFound(HpcenvError):
    """A named thing (env, version, job, remote) does not exist."""

    exit_code = 1


def where(path: object, line: int | None = None) -> str:
    """Format a ``file:line`` location for error messages."""
    return f"{path}:{line}" if line is not None else str(path)


def shown_value(value: str, limit: int = 60) -> str:
    """``value`` quoted for a one-line message, cut to ``limit`` characters when longer (a
    5,000-character argument must not flood the terminal), saying how long it was."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
