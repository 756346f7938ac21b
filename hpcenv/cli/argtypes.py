"""Argument types and option groups shared by several commands (kept free of heavy imports:
every command's parser is built for ``hpcenv --help``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.errors import InvalidInput

if TYPE_CHECKING:
    from hpcenv.spec.cuda_target import CudaTarget
    from hpcenv.spec.names import EnvName


class LocalFile(str):
    """An argument that names a file on this machine (an env file, a lock, a job script).

    Parsers give such arguments this type, so remote mode knows from the parsed values alone
    which ones to upload and point at their remote copies."""


def local_file(text: str) -> LocalFile:
    """The ``type`` of an argument naming a local file.  argparse passes a positional's string
    default through ``type`` too; SUPPRESS (a positional another spelling shares) stays itself."""
    return text if text is argparse.SUPPRESS else LocalFile(text)  # type: ignore[return-value]


def add_sync_options(parser: argparse.ArgumentParser) -> None:
    """``--sync DIR``/``--exclude PATTERN``, for commands that run a job from local files."""
    group = parser.add_argument_group("with --remote")
    group.add_argument("--sync", action="append", default=[], type=Path, metavar="DIR",
                       help="upload DIR's changed files to the remote workdir first (repeatable); "
                            "the job runs there, so relative paths inside DIR keep working")
    group.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                       help="leave files matching PATTERN out of --sync (repeatable, fnmatch)")


def add_version_option(parser: argparse.ArgumentParser,
                       help: str = "a version from 'hpcenv env history NAME' (default: the "
                                   "current one)") -> None:
    """``--version V``: which version of NAME an env action takes (a number, as ``env
    history`` lists them)."""
    parser.add_argument("--version", type=int, metavar="V", help=help)


def check_sync_options(args: argparse.Namespace) -> None:
    """``--sync``/``--exclude`` only mean something over ``--remote``."""
    if (getattr(args, "sync", None) or getattr(args, "exclude", None)) and not args.remote:
        raise InvalidInput("--sync/--exclude upload files to a remote login node: add "
                           "--remote NAME, or leave them out to run here")


def cuda_version(text: str) -> CudaTarget:
    """``--cuda X.Y``: a released CUDA version (InvalidInput, exit 2, otherwise)."""
    from hpcenv.spec.cuda_target import CudaTarget

    return CudaTarget.parse(text)


def env_name(text: str) -> EnvName:
    """An env name argument, checked once here (InvalidInput, exit 2, names the rule)."""
    from hpcenv.spec.names import EnvName

    if text is argparse.SUPPRESS:  # a positional's default passed through ``type``, see local_file
        return text  # type: ignore[return-value]
    return EnvName.parse(text)
