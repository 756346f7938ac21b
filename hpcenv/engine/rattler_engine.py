"""The embedded engine: py-rattler, run in a child process.

Why a child process: after async rattler calls the interpreter sometimes crashes at exit
(SIGSEGV/SIGABRT, a few % of runs, py-rattler 0.28.0), although the work succeeded.  The CLI and
any library user must never inherit that, so engine calls run in a child,
:mod:`hpcenv.engine.rattler_child`: JSON requests on stdin, JSON replies on a private
pipe, one line each, and the child leaves with ``os._exit`` after flushing.  A build keeps one
child (:meth:`RattlerEngine.serving`) for its solve, lockfiles and install, so it pays one
interpreter start plus ``import rattler`` (~60 ms), never paid on the "reused" fast path.  Before
it serves anything that writes, the child asks the kernel to kill it when its parent dies
(``PR_SET_PDEATHSIG``), so a builder killed with SIGKILL does not leave an orphan still
writing into a prefix the next builder is about to clean.

Mapping of the engine protocol onto rattler:

* specs are parsed leniently with ``MatchSpec(s)`` (conda's ``name=version=build`` is accepted);
* channel priority ``strict`` -> ``ChannelPriority.Strict``; ``flexible`` -> ``Disabled`` (rattler
  has no conda-style "flexible": packages from every channel compete on version/build);
* ``cuda`` -> ``VirtualPackageOverrides(cuda=Override.string(...))``; ``""`` removes ``__cuda``;
* lockfiles are rattler ``LockFile``s; records are read with the platform object taken from
  ``environment.platforms()`` (``LockPlatform("linux-64")`` panics in 0.28.0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hpcenv.engine.base import (
    ChannelMissing,
    ChannelPriority,
    ChannelUnreachable,
    EngineErrorChain,
    LockedPackage,
    channel_url,
)
from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.spec.cuda_target import CudaTarget

# One request to a rattler child and its reply (lockfiles are written through one).
RattlerCall = Callable[[dict[str, Any]], dict[str, Any]]

# The child's own script (see its module doc for why it is not run with -m).
CHILD_SCRIPT = Path(__file__).with_name("rattler_child.py")


class RattlerEngine:
    """The py-rattler engine (see module doc).  ``repodata_cache``: the gateway's cache dir."""

    name = "rattler"

    def __init__(self, repodata_cache: Path | None = None, python: str | None = None) -> None:
        self.repodata_cache = repodata_cache
        self.python = python or sys.executable
        self._child: RattlerChild | None = None

    def solve(self, specs: Sequence[str], *, channels: Sequence[str], platform: str,
              cuda: CudaTarget, channel_priority: ChannelPriority = "strict") -> list[LockedPackage]:
        reply = self._call({
            "op": "solve", "specs": list(specs), "channels": [channel_url(c) for c in channels],
            "platform": platform, "cuda": _child_cuda(cuda), "channel_priority": channel_priority,
            "cache_dir": str(self.repodata_cache) if self.repodata_cache else None,
        })
        return [LockedPackage.from_dict(d) for d in reply["packages"]]

    def install(self, prefix: Path, packages: Sequence[LockedPackage], *, pkgs_dir: Path) -> None:
        self._call({"op": "install", "prefix": str(prefix), "pkgs_dir": str(pkgs_dir),
                    "packages": [p.to_dict() for p in packages]})

    @contextmanager
    def serving(self) -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
        """One child, started now, for every call of this engine inside the block; yields the
        call (for lockfiles: :func:`hpcenv.engine.lockfile.write_lock`'s ``call``)."""
        if self._child is not None:   # nested: the outer block's child serves
            yield self.call
            return
        with RattlerChild(self.python) as child:
            child.start()
            self._child = child
            try:
                yield self.call
            finally:
                self._child = None

    def no_more_requests(self) -> None:
        """The serving child gets no further request in this :meth:`serving` block: it exits
        now, while the caller goes on, rather than when the block ends."""
        if self._child is not None:
            self._child.end_input()

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """One request to the serving child, or to a fresh one outside :meth:`serving`."""
        if self._child is not None:
            return self._child.call(request)
        return call_rattler(request, self.python)

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.call(request)


def call_rattler(request: dict[str, Any], python: str | None = None) -> dict[str, Any]:
    """Run one request in a fresh rattler child and return its reply; a reply with an error is
    raised as the classified hpcenv error."""
    with RattlerChild(python) as child:
        return child.call(request)


class RattlerChild:
    """One :mod:`~hpcenv.engine.rattler_child` process serving requests one after another
    (one JSON line each way), so a build pays one interpreter start and one ``import rattler``
    for its solve, lockfiles and install instead of one per call.  Started on first use (or
    by :meth:`start`, to let the import run while the parent works); a context manager."""

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable
        self._proc: subprocess.Popen[str] | None = None
        self._replies: Any = None      # the read end of the private reply pipe
        self._stderr: Any = None       # a temp file: a full pipe could block a long-lived child
        self._asked = False            # whether any request was sent

    def start(self) -> None:
        if self._proc is not None:
            return
        read_fd, write_fd = os.pipe()
        self._stderr = tempfile.TemporaryFile(mode="w+", prefix="hpcenv-rattler-")
        try:
            self._proc = subprocess.Popen(
                # -P: the script's dir (engine/, with its base.py) stays off sys.path.
                [self.python, "-P", str(CHILD_SCRIPT), str(write_fd)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._stderr,
                pass_fds=(write_fd,), text=True)
        except OSError as exc:
            os.close(read_fd)
            self._stderr.close()
            raise HpcenvError(f"cannot start the rattler engine with {self.python}: "
                              f"{exc.strerror}") from None
        finally:
            os.close(write_fd)
        self._replies = os.fdopen(read_fd, "r")

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """The child's reply to ``request``, or the classified error it reports."""
        self.start()
        assert self._proc is not None and self._proc.stdin is not None
        self._asked = True
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child died before reading: its exit code and stderr say why
        raw = self._replies.readline()
        try:
            reply = json.loads(raw) if raw else None
        except ValueError:
            reply = None
        if reply is None:
            code = self._finish()
            self._stderr.seek(0)
            tail = " / ".join(self._stderr.read().strip().splitlines()[-3:]) or "no output"
            raise HpcenvError(f"rattler engine ({request['op']}) died with exit code {code}: "
                              f"{tail}")
        if "error" in reply:
            error = {"invalid": InvalidInput, "unreachable": ChannelUnreachable,
                     "missing": ChannelMissing}.get(reply.get("kind", ""), HpcenvError)
            if reply.get("chain"):
                raise error(reply["error"]) from EngineErrorChain(reply["chain"])
            raise error(reply["error"])
        return reply

    def end_input(self) -> None:
        """No request follows: the child exits once it has replied to the last one (a later
        :meth:`call` finds it gone)."""
        if self._proc is not None and self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except BrokenPipeError:
                pass

    def close(self, *, kill: bool = False) -> None:
        """End the child: after its current request, or at once with ``kill`` (the caller is
        unwinding an error or an interrupt, and nothing it asked for is wanted any more) or
        when it was never asked anything (started for a build that found one to reuse)."""
        if self._proc is not None:
            if (kill or not self._asked) and self._proc.poll() is None:
                self._proc.kill()
            self._finish()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _finish(self) -> int:
        """End of input for the child; its exit code."""
        proc = self._proc
        assert proc is not None and proc.stdin is not None
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if self._replies is not None:
            self._replies.close()
            self._replies = None
        return code

    def __enter__(self) -> RattlerChild:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(kill=exc_type is not None)


def _child_cuda(cuda: CudaTarget) -> str | None:
    """The child's JSON spelling of a CudaTarget: "12.4", "" (none) or null (detect)."""
    return None if cuda.kind == "detect" else cuda.version or ""
