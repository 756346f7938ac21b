"""``hpcenv run -n NAME -- CMD ARGS...``: run a command inside an env, with exec semantics."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.cli.context import Context
from hpcenv.errors import InvalidInput

if TYPE_CHECKING:
    from hpcenv.site.config import SiteConfig


def register(parser: argparse.ArgumentParser) -> None:
    parser.usage = "hpcenv run (-n NAME | -p PREFIX) [--] CMD [ARGS...]"
    parser.description = ("Run CMD inside an environment with its activation applied (activate.d "
                          "scripts included). hpcenv replaces itself with CMD (exec): signals "
                          "reach CMD directly and its exit status is hpcenv's. Exit 127 when CMD "
                          "is not on the env's PATH, 126 when it cannot be executed.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("-n", "--name", help="env name, looked up in the site's envs_dirs")
    where.add_argument("-p", "--prefix", type=Path, help="path of a conda environment")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.store.activation import exec_in_env, find_named_env

    argv = list(args.cmd)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        which = f"-p {args.prefix}" if args.prefix is not None else f"-n {args.name}"
        raise InvalidInput(f"no command given; usage: hpcenv run {which} -- CMD [ARGS...]")
    if args.prefix is not None:
        prefix, name = args.prefix.resolve(), None
    else:
        site = ctx.site()
        name = args.name
        prefix = _registered_prefix(site, name) or find_named_env(site.envs_dirs, name)
    exec_in_env(prefix, argv, name=name)


def _registered_prefix(site: SiteConfig, name: str) -> Path | None:
    """The build the registry's ``current`` names, when it is complete.

    The registry, not the ``envs_dir/NAME`` symlink, is the source of truth (jobs submitted
    now use it too): the two differ only after a publisher died between its two steps.  Names
    the registry does not know fall through to conda's lookup in ``envs_dirs``.
    """
    from hpcenv.spec.names import EnvName
    from hpcenv.store import store_for
    from hpcenv.store.layout import is_complete

    if not EnvName.is_valid(name):
        return None  # not a name hpcenv builds; conda's lookup judges it
    record = store_for(site).registry().current(EnvName.parse(name))
    if record is None or not is_complete(record.prefix):
        return None
    return Path(record.prefix)
