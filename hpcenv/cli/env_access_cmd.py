"""``hpcenv env module|kernel``: reach a published env through Lmod or Jupyter.

Handlers only call :mod:`hpcenv.store.modules` and :mod:`hpcenv.admin.kernels`, and print.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcenv.cli.argtypes import env_name
from hpcenv.cli.context import Context


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("module", parents=[common], help="write an Lmod modulefile for an env",
                       description="Write the Lmod modulefile hpcenv/NAME/VERSION.lua for NAME's "
                                   "current version (or --version V) into the site's "
                                   "modules_dir, so 'module load hpcenv/NAME' activates it. "
                                   "'default' follows the current version; rollback and rm "
                                   "keep the tree in step.")
    p.add_argument("name", metavar="NAME", type=env_name)
    p.add_argument("--version", type=int, metavar="V")
    p.set_defaults(handler=_module)

    p = sub.add_parser("kernel", parents=[common], help="register a Jupyter kernel for an env",
                       description="Register the Jupyter kernel hpcenv-NAME, which runs NAME's "
                                   "python (current version, or --version V) with the env "
                                   "activated. The env needs ipykernel.")
    p.add_argument("name", metavar="NAME", type=env_name)
    p.add_argument("--version", type=int, metavar="V")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--site-wide", action="store_true",
                       help="into the site's kernels_dir, for every user (default: your own "
                            "Jupyter data dir)")
    where.add_argument("--dir", type=Path, metavar="DIR",
                       help="into DIR (a 'kernels' directory on Jupyter's path)")
    p.set_defaults(handler=_kernel)


def _module(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.store import store_for
    from hpcenv.store.modules import MODULE_CATEGORY, write_env_module

    site = ctx.site()
    store = store_for(site)
    record = store.registry().resolve(args.name, args.version)
    path = write_env_module(store, record)
    ctx.emit({"name": record.name, "version": record.version, "modulefile": str(path),
              "module": f"{MODULE_CATEGORY}/{record.name}/{record.version}"},
             lambda d: f"wrote {d['modulefile']}: 'module load {d['module']}'")
    return 0


def _kernel(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.admin.kernels import install_kernel

    spec = install_kernel(ctx.site(), args.name, version=args.version, kernels_dir=args.dir,
                          site_wide=args.site_wide)
    ctx.emit({"kernel": spec.kernel_name, "directory": str(spec.directory),
              "display_name": spec.display_name, "name": spec.env, "version": spec.version,
              "prefix": spec.prefix},
             lambda d: f"registered Jupyter kernel {d['kernel']} ({d['display_name']}) in "
                       f"{d['directory']}")
    return 0
