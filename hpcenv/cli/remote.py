"""``hpcenv --remote NAME COMMAND ...``: the parsed command runs on the remote's login node.

Options that only exist over ``--remote`` (``--sync``, ``--exclude``) and the global options that
stay on this side are taken out of argv; files the command names are uploaded (see
``hpcenv.remote.uploads``) and argv pointed at their remote copies; the remote hpcenv runs in the
remote workdir with the same arguments and its output streams here.  ``submit --wait`` and
``logs -f`` are driven from here, so they survive dropped connections.
"""

from __future__ import annotations

import argparse
import posixpath
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcenv.errors import InvalidInput
from hpcenv.jobs.control import job_exit_code
from hpcenv.remote.errors import RemoteCommandFailed, last_lines
from hpcenv.remote.jobs import parse_json, wait_for_job
from hpcenv.remote.session import RemoteSession
from hpcenv.remote.sync import sync_dir
from hpcenv.remote.uploads import PathMap, upload_inputs
from hpcenv.site.config import load_remotes

if TYPE_CHECKING:
    from hpcenv.cli.context import Context
    from hpcenv.site.config import Remote


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


def _strip_local_globals(argv: Sequence[str]) -> list[str]:
    return _take_options(argv, _LOCAL_GLOBALS_WITH_VALUE, _LOCAL_GLOBAL_FLAGS)[0]


def _same_arg(token: str, value: str) -> bool:
    # argparse may have turned the value into a Path ("./x.yml" -> "x.yml"): compare as paths.
    return token == value or (bool(token) and not token.startswith("-")
                              and Path(token) == Path(value))


def _rewrite_arg(parser: argparse.ArgumentParser, argv: list[str], dest: str, value: str,
                 new: str) -> None:
    """Replace, in ``argv``, the argument that gives ``dest`` its ``value`` by ``new``.

    The same text may stand in several places (``submit --job-name train.py train.py``), so the
    real CLI parser decides which one it is: each token that looks like the value (or the value
    of an ``--option=value`` token) is swapped for a marker and argv parsed again; the swap that
    lands in ``dest`` is the one.
    """
    import contextlib
    import io


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

    remotes = load_remotes(ctx.site())
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise InvalidInput(f"unknown remote {name!r} (known: {known}); add it under 'remotes:' in "
                       f"the site config or in ~/.config/hpcenv/remotes.yaml")
    return remotes[name]


def _upload_inputs(parser: argparse.ArgumentParser, session: RemoteSession,
                   args: argparse.Namespace, argv: list[str], paths: PathMap = PathMap()) -> None:
    """Point argv at remote copies of the local files the command names (spec, lock, script),
    uploading those not in a synced tree (``upload_inputs``)."""
    for placed in upload_inputs(session, args, paths):
        _rewrite_arg(parser, argv, placed.dest, placed.value, placed.remote_path)


def run_remote_cli(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   argv: Sequence[str], ctx: Context,
                   options: RemoteOptions | None = None) -> int:
    """Run one parsed hpcenv invocation on the remote ``ctx.remote``; return its exit code.

    ``argv`` is the command line as given (with ``--sync``/``--exclude`` already taken out into
    ``options``).  Local files it names are uploaded (see ``hpcenv.remote.uploads``), the remote
    hpcenv runs in the remote workdir with the same arguments, and its output streams here.
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
            return _remote_submit(parser, session, args, remote_argv, ctx, options)
        _upload_inputs(parser, session, args, remote_argv)
        line = session.hpcenv_line((["--json"] if ctx.json else []) + remote_argv,
                                   cwd=session.workdir())
        if command == "logs" and getattr(args, "follow", False):
            return session.follow(line, sys.stdout, sys.stderr)
        return session.run(line, check=False, out=sys.stdout, err=sys.stderr).exit_code


def _remote_submit(parser: argparse.ArgumentParser, session: RemoteSession, args: argparse.Namespace, remote_argv: list[str],
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
    _upload_inputs(parser, session, args, remote_argv, paths)
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
    data = parse_json(result.stdout, session, "submit")
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
    info = wait_for_job(session, job_id, show_status=ctx.verbosity >= 0)
    code = job_exit_code(info)
    if ctx.json:
        ctx.emit({**data, "state": info.state, "exit_code": code, "node": info.node,
                  "elapsed": info.elapsed})
    return code
