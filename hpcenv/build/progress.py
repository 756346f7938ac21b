"""Progress of a build as its caller sees it: :class:`BuildEvent` objects given to an
``on_progress`` callback, and the :class:`Reporter` that sends them and keeps them (with tool
output) for the build log."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal


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
class Reporter:
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
        stamp = time.strftime("%H:%M:%S", time.gmtime())   # UTC; no datetime import (~1 ms)
        self.lines.append(f"{stamp} {'warning: ' if kind == 'warning' else ''}{text}")
        if self.callback is not None:
            self.callback(BuildEvent(kind, text))

