"""The ``hpcenv`` command line: argument parsing, output and error handling only.

Each command group lives in its own module (``site_cmd``, ``env_cmd``, ``job_cmd``, ...); the
command tree in :mod:`hpcenv.cli.commands` names, for every command and action, the function
there that fills in its parser (``register_list(parser)``: description, options, handler), and
a command line imports and builds only the one it names.  Handlers take ``(args, ctx)`` and
return an exit code; they call the library API and never hold business logic of their own.
Keep imports here light: ``hpcenv --help`` must not load py-rattler, fabric or jinja2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from hpcenv import __version__
from hpcenv.cli.commands import COMMANDS, Command, named
from hpcenv.errors import HpcenvError

# typing.TYPE_CHECKING without importing typing: `hpcenv --help` needs nothing else from it
# (2 ms); type checkers read the name itself.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that say where to look for help, and no abbreviations:
    ``--ntasks 4`` must not quietly become ``--ntasks-per-node 4``, nor ``--mem`` something
    else once options are added."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        line = f"{message} (see '{self.prog} --help')"
        print(f"hpcenv: error: {line}", file=sys.stderr)
        raise UsageError(line)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        # argparse reports words no sub-command took from the top parser, naming `hpcenv
        # --help`; the sub-command that was chosen is where the user has to look.
        words = list(sys.argv[1:] if args is None else args)
        parsed, extra = self.parse_known_args(words, namespace)
        if extra:
            _chosen_parser(self, parsed).error(_unknown_message(self, parsed, words, extra))
        return parsed


class UsageError(SystemExit):
    """A command line argparse refused (exit 2); ``message`` is the line printed for it."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Sub-commands get the same options with SUPPRESS defaults, so `hpcenv env list --json`
    # and `hpcenv --json env list` both work without the sub-parser resetting the value.
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--site", metavar="PATH", default=default(None),
                        help="site config (default: $HPCENV_SITE, ~/.config/hpcenv/site.yaml, "
                             "/etc/hpcenv/site.yaml, then the embedded local.yaml)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="machine-readable output on stdout; logs and progress on stderr")
    parser.add_argument("-v", "--verbose", action="count", default=default(0),
                        help="more detail on stderr; tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="only errors on stderr")
    parser.add_argument("--remote", metavar="NAME", default=default(None),
                        help="run the command on a remote login node named in the site config "
                             "or ~/.config/hpcenv/remotes.yaml")


# Global options that take a value (the word after them is not the command).
_VALUE_OPTIONS = ("--site", "--remote")


def build_parser(prog: str = "hpcenv", *,
                 path: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the command line.  ``path`` is the command and action it names (as
    :func:`_command_path` finds them): only those get their options, every other command and
    action is just its help line, which is all ``--help`` lists of it.  ``None`` builds every
    command in full."""
    parser = _Parser(prog=prog, description="Conda environments for Slurm clusters.")
    parser.add_argument("--version", action="version", version=f"hpcenv {__version__}")
    _global_options(parser, suppress=False)
    common = _Parser(add_help=False)
    _global_options(common, suppress=True)
    _add_commands(parser, "command", "COMMAND", COMMANDS, common,
                  None if path is None else tuple(path))
    return parser


def _add_commands(parser: argparse.ArgumentParser, dest: str, metavar: str,
                  table: dict[str, Command], common: argparse.ArgumentParser,
                  path: tuple[str, ...] | None) -> None:
    sub = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=_Parser)
    for name, command in table.items():
        aliases = list(command.aliases)
        if path is not None and path[:1] != (name,):
            sub.add_parser(name, aliases=aliases, help=command.help)
            continue
        chosen = sub.add_parser(name, aliases=aliases, help=command.help, parents=[common])
        module, _, builder = command.builder.partition(":")
        # __import__, not importlib.import_module: only imports through the interpreter's
        # own machinery show in -X importtime, which the tests and bench/ read.
        getattr(__import__(f"hpcenv.cli.{module}", fromlist=[builder]), builder)(chosen)
        if command.actions is not None:
            _add_commands(chosen, command.dest, "ACTION", command.actions, common,
                          None if path is None else path[1:])


def _command_path(argv: Sequence[str]) -> tuple[str, ...]:
    """The command and action ``argv`` names, as far as it names known ones: ``("env",
    "list")`` for ``--json env list``, ``("env",)`` for ``env --help``, ``()`` for the
    top-level help or version, no command or an unknown one."""
    path: list[str] = []
    table: dict[str, Command] | None = COMMANDS
    words = iter(argv)
    positional = False  # after "--" every word is positional: the command, then its action
    for word in words:
        if not positional:
            if word in _VALUE_OPTIONS:
                next(words, None)
                continue
            if word in ("-h", "--help", "--version"):
                break
            if word == "--":
                positional = True
                continue
            if word.startswith("-"):
                continue
        name = named(table, word)
        if name is None:
            break
        path.append(name)
        table = table[name].actions
        if table is None:
            break
    return tuple(path)


def main(argv: Sequence[str] | None = None, *, prog: str = "hpcenv") -> int:
    """Run one command; ``prog`` is what usage lines call the command (``conda hpcenv`` when
    conda runs it through :mod:`hpcenv.cli.conda_plugin`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Until the arguments are parsed, -v is read from the raw words so that an error in parsing
    # itself still honours it.
    verbosity = 1 if any(a in ("-v", "--verbose") or a.startswith("-vv") for a in argv) else 0
    json_errors = "--json" in (argv[:argv.index("--")] if "--" in argv else argv)
    try:
        parser = build_parser(prog, path=_command_path(argv))
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            # `hpcenv` or `hpcenv env` alone: the usage of the deepest command named.
            _chosen_parser(parser, args).print_help(sys.stderr)
            _json_error(json_errors, "no command given (see the usage above)", 2)
            return 2
        # Imported once a command runs: `hpcenv --help` needs neither (nor dataclasses).
        from hpcenv.cli.argtypes import check_sync_options
        from hpcenv.cli.context import Context

        ctx = Context.from_args(args)
        verbosity = ctx.verbosity
        check_sync_options(args)
        if ctx.remote:
            # Imported here: remote mode needs the site config and the SSH layers.
            from hpcenv.cli.remote import run_remote_cli

            return run_remote_cli(parser, args, ctx)
        return int(handler(args, ctx) or 0)
    except HpcenvError as exc:
        _print_traceback(verbosity)
        print(f"hpcenv: error: {_one_line(exc)}", file=sys.stderr)
        if exc.details:
            import textwrap

            print(textwrap.indent(exc.details.rstrip("\n"), "  "), file=sys.stderr)
        _json_error(json_errors, _one_line(exc), exc.exit_code, details=exc.details)
        return exc.exit_code
    except UsageError as exc:
        _json_error(json_errors, exc.message, 2)
        raise
    except KeyboardInterrupt:
        print("hpcenv: interrupted", file=sys.stderr)
        _json_error(json_errors, "interrupted", 130)
        return 130
    except BrokenPipeError:
        # The reader went away (`hpcenv ... | head`): point stdout at /dev/null so the
        # interpreter's final flush does not complain a second time.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except PermissionError as exc:
        # The shared store refused us (an outsider, a missing group bit): who owns what, in
        # one line, never an internal error.
        from hpcenv.fsutil import permission_problem

        _print_traceback(verbosity)
        message = _one_line(permission_problem(exc))
        print(f"hpcenv: error: {message}", file=sys.stderr)
        _json_error(json_errors, message, 1)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence for users
        # A bug, not bad input: one line by default, the whole story with -v.
        _print_traceback(verbosity)
        detail = _one_line(exc)
        print(f"hpcenv: internal error: {type(exc).__name__}{': ' + detail if detail else ''}"
              f" ({'please report this' if verbosity > 0 else 'rerun with -v for the traceback'}"
              ")", file=sys.stderr)
        _json_error(json_errors, f"internal error: {type(exc).__name__}"
                    f"{': ' + detail if detail else ''}", 1)
        return 1


def _chosen_parser(parser: argparse.ArgumentParser,
                   args: argparse.Namespace) -> argparse.ArgumentParser:
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen is None:
            return parser
        parser = subs[0].choices[chosen]


def _unknown_message(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     words: list[str], extra: list[str]) -> str:
    """What to say about the words no parser took: ``unknown option --cdua (did you mean
    --cuda?)``, and for ``submit`` options after SCRIPT, how to pass them to the script."""
    from hpcenv.yamlio import closest

    chosen = _chosen_parser(parser, args)
    options = [w for w in extra if w.startswith("-") and w != "-"]
    if not options:
        return f"unexpected argument{'s' if len(extra) > 1 else ''} {shlex.join(extra)}"
    known = tuple(o for a in chosen._actions for o in a.option_strings if o.startswith("--"))
    script = getattr(args, "script", None)
    # After SCRIPT most unknown options are the script's own (--steps, --seed): a guess then
    # has to be a one-letter slip, or `--steps` would be "corrected" to --site.
    for_script = (chosen.prog.endswith(" submit") and script is not None
                  and _after(words, script, options[0]))
    parts = []
    for option in options:
        flag = option.partition("=")[0]
        guess = closest(flag, known) if flag.startswith("--") else None
        if guess and for_script and not _one_edit(flag, guess):
            guess = None
        parts.append(f"{flag} (did you mean {guess}?)" if guess else flag)
    message = f"unknown option{'s' if len(parts) > 1 else ''} {', '.join(parts)}"
    if for_script:
        message += (f"; put the script's own options after '--': hpcenv "
                    f"{shlex.join(_moved_after_double_dash(words, extra))}")
    return message


def _one_edit(a: str, b: str) -> bool:
    """True when ``b`` is ``a`` with one letter added, dropped, changed or two swapped."""
    if abs(len(a) - len(b)) > 1:
        return False
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    a_rest, b_rest = a[start:], b[start:]
    return (a_rest[1:] == b_rest[1:] or a_rest[1:] == b_rest or a_rest == b_rest[1:]
            or (a_rest[:2] == b_rest[1::-1] and a_rest[2:] == b_rest[2:]))


def _after(words: list[str], first: str, second: str) -> bool:
    """True when ``second`` is written after ``first`` (and before any ``--``)."""
    head = words[:words.index("--")] if "--" in words else words
    return first in head and second in head and head.index(second) > head.index(first)


def _moved_after_double_dash(words: list[str], extra: list[str]) -> list[str]:
    """``words`` with ``extra`` taken out (in order) and put first after ``--``."""
    head, tail = (words, []) if "--" not in words else (words[:words.index("--")],
                                                        words[words.index("--") + 1:])
    kept, pending = [], list(extra)
    for word in head:
        if pending and word == pending[0]:
            pending.pop(0)
        else:
            kept.append(word)
    return [*kept, "--", *extra, *tail]


def _json_error(wanted: bool, message: str, exit_code: int, *,
                details: str | None = None) -> None:
    """Under ``--json``, a failure is the one JSON document on stdout too (as conda does), so
    a script reading stdout always gets something to parse."""
    if not wanted:
        return
    import json

    error: dict[str, object] = {"error": message, "exit_code": exit_code}
    if details:
        error["details"] = details
    try:
        json.dump(error, sys.stdout, indent=2)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        pass  # nobody is reading (or stdout is closed): the stderr line is all there is


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _print_traceback(verbosity: int) -> None:
    if verbosity > 0:
        import traceback

        traceback.print_exc()
