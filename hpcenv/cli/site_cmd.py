"""``hpcenv site show | check | condarc``: inspect and probe the effective site config."""

from __future__ import annotations

import argparse
from typing import Any

from hpcenv.cli.context import Context
from hpcenv.errors import InvalidInput


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = "Show, check and export the effective site config."
    parser.set_defaults(handler=lambda args, ctx: _usage(parser))


def register_show(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Print the effective site config and, for every value, the file:line "
                          "it came from (or 'default').")
    parser.set_defaults(handler=show_handler)


def register_check(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Check that the configured dirs are writable, envs and pkgs share a "
                          "filesystem, local channels exist and remote ones answer, conda_exe "
                          "and the group exist. Exit 1 on any fail.")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="how long each remote channel gets to answer (default: 5)")
    parser.set_defaults(handler=check_handler)


def register_condarc(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Print a .condarc with the site's envs_dirs, pkgs_dirs, channels and "
                          "channel_priority, so plain `conda activate NAME` finds hpcenv envs.")
    parser.set_defaults(handler=condarc_handler)


def _usage(parser: argparse.ArgumentParser) -> int:
    import sys

    parser.print_help(sys.stderr)
    return 2


def show_handler(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.site.config import (
        embedded_site_path,
        load_remotes,
        remote_to_dict,
        site_to_dict,
    )

    site = ctx.site()
    config = site_to_dict(site)
    provenance = dict(site.provenance)
    # Effective remotes include the user's remotes.yaml, which may override the site's.
    remotes = load_remotes(site)
    config["remotes"] = {name: remote_to_dict(r) for name, r in remotes.items()}
    provenance.update({f"remotes.{name}": r.source for name, r in remotes.items()})
    data = {
        "source": str(site.source) if site.source else str(embedded_site_path()),
        "origin": site.origin,
        "config": config,
        "provenance": provenance,
    }
    ctx.emit(data, _format_show)
    return 0


def _format_show(data: dict[str, Any]) -> str:
    prov: dict[str, str] = data["provenance"]
    rows: list[tuple[str, str, str]] = []

    def text(value: Any) -> str:
        if isinstance(value, list):
            return ", ".join(str(v) for v in value) or "[]"
        if isinstance(value, dict):
            return ", ".join(f"{k}={text(v)}" for k, v in value.items() if v is not None)
        if isinstance(value, bool):
            return "true" if value else "false"
        return "null" if value is None else str(value)

    for key, value in data["config"].items():
        if key == "partitions":
            for part in value:
                detail = ", ".join(f"{k}={v}" for k, v in part.items() if k != "name")
                rows.append((f"partitions.{part['name']}", detail or "CPU",
                             prov.get(f"partitions.{part['name']}", prov[key])))
            if not value:
                rows.append((key, "[]", prov[key]))
        elif isinstance(value, dict):
            for sub, subvalue in value.items():
                # A section written in the file still has defaults for the keys it omits.
                rows.append((f"{key}.{sub}", text(subvalue), prov.get(f"{key}.{sub}", "default")))
            if not value:
                rows.append((key, "{}", prov[key]))
        else:
            rows.append((key, text(value), prov[key]))
    width = max(len(r[0]) for r in rows)
    vwidth = min(max(len(r[1]) for r in rows), 60)
    lines = [f"site config: {data['source']} ({data['origin']})", ""]
    lines += [f"{k:<{width}}  {v:<{vwidth}}  {src}" for k, v, src in rows]
    return "\n".join(lines)


def check_handler(args: argparse.Namespace, ctx: Context) -> int:
    from dataclasses import asdict

    from hpcenv.admin.site_check import check_site

    site = ctx.site()
    if args.timeout is not None and args.timeout <= 0:
        raise InvalidInput(f"--timeout {args.timeout:g}: give a positive number of seconds")
    checks = check_site(site) if args.timeout is None else \
        check_site(site, probe_timeout=args.timeout)
    failed = any(c.status == "fail" for c in checks)
    source = str(site.source) if site.source else "embedded local.yaml"
    data = {"source": source, "ok": not failed, "checks": [asdict(c) for c in checks]}

    def human(d: dict[str, Any]) -> str:
        width = max((len(c["name"]) for c in d["checks"]), default=5)
        lines = [f"site config: {d['source']}"]
        lines += [f"{c['status'].upper():<4}  {c['name']:<{width}}  {c['detail']}"
                  for c in d["checks"]]
        counts = {s: sum(c["status"] == s for c in d["checks"]) for s in ("pass", "warn", "fail")}
        lines.append(f"{counts['pass']} passed, {counts['warn']} warnings, "
                     f"{counts['fail']} failed")
        return "\n".join(lines)

    ctx.emit(data, human)
    return 1 if failed else 0


def condarc_handler(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.site.config import condarc_dict, condarc_text

    site = ctx.site()
    ctx.emit(condarc_dict(site), lambda _: condarc_text(site).rstrip("\n"))
    return 0
