"""``hpcenv env module|kernel|pack``: reach a published env through Lmod, Jupyter or a pack
for node-local staging.

Handlers only call :mod:`hpcenv.store.modules`, :mod:`hpcenv.admin.kernels` and
:mod:`hpcenv.store.pack`, and print.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hpcenv.cli.argtypes import add_version_option, env_name
from hpcenv.cli.context import Context


def register_module(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write the Lmod modulefile hpcenv/NAME/VERSION.lua for NAME's current "
                          "version (or --version V) into the site's modules_dir, so 'module load "
                          "hpcenv/NAME' activates it. 'default' follows the current version; "
                          "rollback and rm keep the tree in step.")
    parser.add_argument("name", metavar="NAME", type=env_name)
    add_version_option(parser)
    parser.set_defaults(handler=_module)


def register_kernel(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Register the Jupyter kernel hpcenv-NAME, which runs NAME's python "
                          "(current version, or --version V) with the env activated. The env "
                          "needs ipykernel.")
    parser.add_argument("name", metavar="NAME", type=env_name)
    add_version_option(parser)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--site-wide", action="store_true",
                       help="into the site's kernels_dir, for every user (default: your own "
                            "Jupyter data dir)")
    where.add_argument("--dir", type=Path, metavar="DIR",
                       help="into DIR (a 'kernels' directory on Jupyter's path)")
    parser.set_defaults(handler=_kernel)


def register_pack(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Pack NAME's current version (or --version V) into one file in the "
                          "site's packs_dir (a tar archive, zstd- or gzip-compressed, with what "
                          "is needed to relocate the prefix), so 'hpcenv submit --stage' can "
                          "unpack it on each node's local disk instead of starting from the "
                          "shared filesystem. An existing pack of the same build is kept unless "
                          "--force.")
    parser.add_argument("name", metavar="NAME", type=env_name)
    add_version_option(parser)
    parser.add_argument("--compression", choices=("zstd", "gzip"),
                        help="default: zstd when installed (unpacks faster), else gzip")
    parser.add_argument("--force", action="store_true", help="pack again even if a pack exists")
    parser.set_defaults(handler=_pack)


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


def _pack(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.store import store_for
    from hpcenv.store.pack import create_pack

    store = store_for(ctx.site())
    record = store.registry().resolve(args.name, args.version)
    result = create_pack(store, record, compression=args.compression, force=args.force,
                         progress=ctx.info)
    ctx.emit(result.to_dict(), _pack_text)
    return 0


def _pack_text(d: dict[str, Any]) -> str:
    mib = 1024 * 1024
    verb = "packed" if d["created"] else "kept the existing pack of"
    return (f"{verb} {d['name']} v{d['version']}: {d['pack']} "
            f"({d['packed_bytes'] / mib:.1f} MiB, {d['file_count']} files, "
            f"{d['unpacked_bytes'] / mib:.1f} MiB unpacked; "
            f"{d['relocated_files']} files relocated on unpack)")
