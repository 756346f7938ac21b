"""``hpcenv --remote NAME COMMAND ...``: the parsed command runs on the remote's login node.

The remote command line is built from the parsed arguments (:func:`remote_argv`), never by
editing the words typed: every option the command declared is written back in its long form,
the options that only mean something on this side (``--site``, ``--remote``, ``--json``,
``--sync``, ``--exclude``) are left out, and arguments that name local files (values of type
:class:`LocalFile`) point at their remote copies (see ``hpcenv.remote.uploads``).  The remote
hpcenv runs in the remote workdir and its output streams here.  ``submit --wait`` and
``logs -f`` are driven from here, so they survive dropped connections.
"""

from __future__ import annotations

import argparse
import posixpath
import sys
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from hpcenv.cli.argtypes import LocalFile
from hpcenv.cli.submission import report_submission
from hpcenv.errors import InvalidInput
from hpcenv.remote.errors import RemoteCommandFailed, last_lines
from hpcenv.remote.jobs import parse_json, wait_for_job
from hpcenv.remote.session import RemoteSession
from hpcenv.remote.sync import sync_dir
from hpcenv.remote.uploads import PathMap, upload_inputs
from hpcenv.site.config import load_remotes

if TYPE_CHECKING:
    from hpcenv.cli.context import Context
    from hpcenv.scheduler.base import JobInfo
    from hpcenv.site.config import Remote


# Parsed values that only mean something on this side and are never sent.
_LOCAL_ONLY_DESTS = frozenset({"site", "remote", "json", "sync", "exclude", "help", "version",
                               "verbose", "quiet", "handler"})


def local_files(args: argparse.Namespace) -> dict[str, Path]:
    """The parsed arguments that name local files which exist, by argparse dest."""
    return {dest: Path(value).expanduser() for dest, value in vars(args).items()
            if isinstance(value, LocalFile) and Path(value).expanduser().is_file()}


def remote_argv(parser: argparse.ArgumentParser, args: argparse.Namespace,
                replace: Mapping[str, str] = {}) -> list[str]:
    """The command line that makes the remote hpcenv parse what ``parser`` parsed into ``args``.

    ``replace`` gives new values by dest (the remote copies of local files).  Options are
    written ``--long=value`` so no value can be read as an option; a job's program and its
    arguments go after ``--``.
    """
    argv = ["-v"] * max(0, getattr(args, "verbose", 0) or 0)
    if getattr(args, "quiet", False):
        argv.append("-q")
    tail: list[str] = []
    _unparse(parser, args, replace, argv, tail)
    return argv + (["--", *tail] if tail else [])


def _unparse(parser: argparse.ArgumentParser, args: argparse.Namespace,
             replace: Mapping[str, str], argv: list[str], tail: list[str]) -> None:
    positionals: list[str] = []
    chosen: tuple[str, argparse.ArgumentParser] | None = None
    done: set[str] = set()  # a dest two spellings share (FILE or -f FILE) is written once
    for action in parser._actions:
        if action.dest in _LOCAL_ONLY_DESTS or action.dest == argparse.SUPPRESS \
                or action.dest in done:
            continue
        done.add(action.dest)
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name is not None:
                chosen = (name, action.choices[name])
            continue
        value = replace.get(action.dest, getattr(args, action.dest, None))
        if not action.option_strings:
            positionals.extend(_positional_words(action, value, args, replace, tail))
        else:
            argv.extend(_option_words(action, value))
    argv.extend(positionals)
    if chosen is not None:
        argv.append(chosen[0])
        _unparse(chosen[1], args, replace, argv, tail)


def _positional_words(action: argparse.Action, value: object, args: argparse.Namespace,
                      replace: Mapping[str, str], tail: list[str]) -> list[str]:
    if action.dest == "words":
        # submit's SCRIPT [ARGS...]: parsed into script / program_args / program_cmd.
        script = replace.get("script", args.script)
        tail.extend(args.program_args if script is not None else (args.program_cmd or []))
        return [str(script)] if script is not None else []
    if action.nargs == argparse.REMAINDER:
        words = list(value or [])  # type: ignore[call-overload]
        tail.extend(words[1:] if words[:1] == ["--"] else words)
        return []
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]


def _option_words(action: argparse.Action, value: object) -> list[str]:
    if value is None or value == action.default:
        return []
    flag = max(action.option_strings, key=len)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                           argparse._StoreConstAction)):
        return [flag]
    if isinstance(action, argparse._CountAction):
        return [flag] * int(value)  # type: ignore[call-overload]
    if isinstance(action, argparse._AppendAction):
        return [f"{flag}={v}" for v in value]  # type: ignore[attr-defined]
    return [f"{flag}={value}"]


def load_remote(name: str, ctx: Context) -> Remote:
    remotes = load_remotes(ctx.site())
    if name not in remotes:
        known = ", ".join(sorted(remotes)) or "none"
        raise InvalidInput(f"unknown remote {name!r} (known: {known}); add it under 'remotes:' in "
                           f"the site config or in ~/.config/hpcenv/remotes.yaml")
    return remotes[name]


def run_remote_cli(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   ctx: Context) -> int:
    """Run one parsed hpcenv invocation on the remote ``ctx.remote``; return its exit code."""
    assert ctx.remote is not None
    command = getattr(args, "command", None)
    remote = load_remote(ctx.remote, ctx)
    session = RemoteSession(ctx.remote, remote, info=ctx.info, debug=ctx.debug)
    with session:
        version = session.check_version()
        ctx.debug(f"hpcenv: {session.target} runs {version}")
        if command == "submit":
            return _remote_submit(parser, session, args, ctx)
        placed = upload_inputs(session, local_files(args))
        line = session.hpcenv_line((["--json"] if ctx.json else [])
                                   + remote_argv(parser, args, placed), cwd=session.workdir())
        if command == "logs" and getattr(args, "follow", False):
            return session.follow(line, sys.stdout, sys.stderr)
        return session.run(line, check=False, out=sys.stdout, err=sys.stderr).exit_code


def _sync(session: RemoteSession, args: argparse.Namespace, ctx: Context) -> PathMap:
    workdir = session.workdir()
    roots: list[tuple[Path, str]] = []
    for directory in args.sync:
        local = directory.expanduser().resolve()
        dest = posixpath.join(workdir, local.name or "root")
        if any(dest == other for _, other in roots):
            raise InvalidInput(f"--sync {directory}: another synced directory is also named "
                               f"{local.name!r} and would land in the same remote place; sync "
                               f"their common parent instead")
        synced = sync_dir(session, local, dest, args.exclude)
        ctx.info(f"hpcenv: synced {local} -> {session.target}:{dest}: "
                 f"{len(synced.uploaded)} file(s) sent ({synced.bytes_sent} bytes), "
                 f"{synced.unchanged} unchanged")
        roots.append((local, dest))
    return PathMap(tuple(roots))


def _remote_submit(parser: argparse.ArgumentParser, session: RemoteSession,
                   args: argparse.Namespace, ctx: Context) -> int:
    paths = _sync(session, args, ctx)
    env_name = None if args.env_file else args.env
    placed = upload_inputs(session, local_files(args), paths, script_env=env_name)
    # Run where the user is, when that is inside a synced tree: relative paths keep working.
    cwd = paths.remote_path(Path.cwd()) or session.workdir()
    if args.dry_run:
        # Nothing to track: show the remote's own rendering of the script and its routing.
        line = session.hpcenv_line((["--json"] if ctx.json else [])
                                   + remote_argv(parser, args, placed), cwd=cwd)
        return session.run(line, check=False, out=sys.stdout, err=sys.stderr).exit_code
    # --wait is done from here by polling, so a dropped connection does not lose the job.
    submit_args = argparse.Namespace(**{**vars(args), "wait": False})
    line = session.hpcenv_line(["--json", *remote_argv(parser, submit_args, placed)], cwd=cwd)
    result = session.run(line, check=False, err=sys.stderr, what="hpcenv submit")
    if result.exit_code != 0:
        return result.exit_code
    data = parse_json(result.stdout, session, "submit")
    if "job_id" not in data:
        raise RemoteCommandFailed(f"remote '{session.name}': hpcenv submit printed no job_id "
                                  f"({last_lines(result.stdout, 1)}); check the remote hpcenv "
                                  f"version", 1)
    data["remote"] = session.name
    wait = (lambda: wait_for_job(session, str(data["job_id"]), show_status=ctx.verbosity >= 0)) \
        if args.wait else None
    return report_submission(data, ctx, wait, outputs=_remote_outputs)


def _remote_outputs(info: JobInfo) -> tuple[PurePosixPath | None, PurePosixPath | None]:
    """Where a remote job's output went, on the remote (as its status reports it)."""
    stdout = PurePosixPath(info.stdout) if info.stdout else None
    stderr = PurePosixPath(info.stderr) if info.stderr and info.stderr != info.stdout else None
    return stdout, stderr
