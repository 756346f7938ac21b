"""``hpcenv env build|list|show|history|export|rollback|rm|gc``: built envs and the lab registry.

Handlers only parse, call :mod:`hpcenv.build.builder`, :mod:`hpcenv.store.lifecycle`, :mod:`hpcenv.store.registry`,
:mod:`hpcenv.build.export` and :mod:`hpcenv.store.gc`, and print.  Progress goes to stderr: a spinner with the current step when
stderr is a terminal, plain lines otherwise (logs, CI, ``--json`` pipelines).
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcenv.cli.argtypes import add_version_option, cuda_version, env_name, local_file
from hpcenv.cli.context import Context
from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.text_table import human_size

if TYPE_CHECKING:
    from hpcenv.build.builder import BuildEvent
    from hpcenv.scheduler.build_use import BuildUse, BuildUseLookup
    from hpcenv.store.registry import Registry


def register_build(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Build FILE (or recreate --from-lock LOCK) once per build key, publish "
                          "it as the current version of NAME, and report 'built' or 'reused'. "
                          "Concurrent builders of the same key wait for the first one. conda's "
                          "spelling works too: 'hpcenv env create -f environment.yml -n NAME'.")
    # FILE positional or -f FILE (conda's spelling) land in one dest: the positional is only
    # set when given (SUPPRESS), so it never overwrites -f.
    parser.add_argument("file", metavar="FILE", nargs="?", default=argparse.SUPPRESS,
                        type=local_file, help="a conda environment.yml file")
    parser.add_argument("-f", "--file", dest="file", metavar="FILE", default=None,
                        type=local_file, help="the environment file, as 'conda env create -f' "
                                              "takes it")
    parser.add_argument("-n", "--name", help="env name (default: the file's 'name:')")
    cuda = parser.add_mutually_exclusive_group()
    cuda.add_argument("--cuda", metavar="X.Y", type=cuda_version,
                      help="solve with __cuda=X.Y, a released CUDA (default: inferred)")
    cuda.add_argument("--no-cuda", action="store_true", help="solve without __cuda (CPU builds)")
    parser.add_argument("--from-lock", metavar="LOCK", type=local_file,
                        help="recreate from a lockfile (hpcenv's, or an @EXPLICIT list) without "
                             "solving")
    trial = parser.add_mutually_exclusive_group()
    trial.add_argument("--dry-run", action="store_true",
                       help="solve and show the plan (packages, pip, variables, reuse); build "
                            "and publish nothing")
    trial.add_argument("--no-publish", action="store_true",
                       help="build (or reuse) a version but leave the current version and "
                            "NAME's link alone; publish it later with 'env rollback NAME --to V'")
    parser.set_defaults(handler=_build)


def register_list(parser: argparse.ArgumentParser) -> None:
    parser.description = "List every environment in the lab registry with its current version."
    parser.set_defaults(handler=_list)


def register_show(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Show the registry record of NAME's current version (or --version V).")
    _name_argument(parser)
    add_version_option(parser)
    parser.set_defaults(handler=_needs_name(_show))


def register_history(parser: argparse.ArgumentParser) -> None:
    parser.description = "List every version of NAME, oldest first; '*' marks the current one."
    _name_argument(parser)
    parser.set_defaults(handler=_needs_name(_history))


def register_export(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Print NAME's current version (or --version V) as environment.yml (as "
                          "'conda env export' writes it), its lockfile (--lock) or an @EXPLICIT "
                          "list (--explicit). Each builds the same env again with 'hpcenv env "
                          "build'.")
    _name_argument(parser)
    add_version_option(parser)
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--no-builds", action="store_true",
                      help="environment.yml without build strings")
    form.add_argument("--lock", action="store_true", help="the lockfile written at build time")
    form.add_argument("--explicit", action="store_true", help="an @EXPLICIT url#sha256 list")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="write to FILE, not stdout")
    parser.set_defaults(handler=_needs_name(_export))


def register_rollback(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Make an earlier ready version of NAME current (default: the newest "
                          "one before the current version).")
    _name_argument(parser)
    parser.add_argument("--to", type=int, metavar="VERSION")
    parser.set_defaults(handler=_needs_name(_rollback))


def register_rm(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Delete the prefix of NAME --version V (its record and lockfile stay as "
                          "history). Without --version, every version of NAME. The current "
                          "version is only removed with --force. Files other versions use are "
                          "hardlinks and stay. A build a pending or running job (anyone's) runs "
                          "in is retired at once but kept until 'env gc' finds no job in it.")
    _name_argument(parser)
    add_version_option(parser, "delete only this version (see 'hpcenv env history NAME')")
    parser.add_argument("--force", action="store_true",
                        help="also remove the current version; delete even when the scheduler "
                             "cannot say whether a job runs in the build")
    parser.set_defaults(handler=_needs_name(_rm))


def register_gc(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Remove builds no registry record references, debris of crashed "
                          "builds, and package-cache entries no live env uses (like 'conda clean "
                          "--all'); report bytes and files freed. Builds a pending or running job "
                          "(anyone's) runs in stay until a later gc.")
    parser.add_argument("--dry-run", action="store_true", help="report what would go; delete nothing")
    parser.add_argument("--force", action="store_true",
                        help="delete unreferenced builds even when the scheduler cannot say "
                             "whether a job runs in them")
    parser.set_defaults(handler=_gc)


def _name_argument(parser: argparse.ArgumentParser) -> None:
    """NAME as a positional or as conda's ``-n/--name NAME`` (one dest, as for build's FILE)."""
    parser.add_argument("name", metavar="NAME", nargs="?", default=argparse.SUPPRESS,
                        type=env_name, help="env name")
    parser.add_argument("-n", "--name", dest="name", metavar="NAME", default=None,
                        type=env_name, help="env name, as conda spells it")


def _needs_name(handler: Any) -> Any:
    """``handler``, refusing a command line that gave NAME neither way."""

    def checked(args: argparse.Namespace, ctx: Context) -> int:
        if not args.name:
            raise InvalidInput(f"hpcenv env {args.env_command}: give the env NAME (or -n NAME)")
        return int(handler(args, ctx))
    return checked


# --- progress ---------------------------------------------------------------------------------

class _Progress:
    """Build progress on stderr: a spinner line on a terminal, plain lines elsewhere.

    Waits and warnings are always printed as lines of their own, so they stay visible after
    the spinner moves on; steps are the spinner's text (or ``-v``-style info lines).
    """

    _FRAMES = "|/-\\"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.tty = sys.stderr.isatty() and ctx.verbosity >= 0
        self.status = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def __call__(self, event: BuildEvent) -> None:
        line = f"warning: {event.text}" if event.kind == "warning" else event.text
        if not self.tty:
            if event.kind == "step":
                self.ctx.info(line)
            else:
                print(f"hpcenv: {line}", file=sys.stderr, flush=True)
            return
        with self._lock:
            if event.kind == "step":
                self.status = line
            else:
                sys.stderr.write(f"\r\x1b[K{line}\n")
            sys.stderr.flush()
        if self._thread is None:
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()

    def _spin(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            with self._lock:
                sys.stderr.write(f"\r\x1b[K{self._FRAMES[frame % 4]} {self.status}")
                sys.stderr.flush()
            frame += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# --- handlers ---------------------------------------------------------------------------------

def _registry(ctx: Context) -> Registry:
    from hpcenv.store import store_for

    return store_for(ctx.site()).registry()


def _build(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.build.builder import build_env
    from hpcenv.spec.environment import load_spec
    from hpcenv.yamlio import yaml_cache_dir

    if args.file is None and args.from_lock is None:
        raise InvalidInput("nothing to build: give an environment FILE or --from-lock LOCK")
    from hpcenv.spec.cuda_target import NO_CUDA

    spec = load_spec(args.file, yaml_cache=yaml_cache_dir()) if args.file is not None else None
    if args.cuda is not None and (warning := args.cuda.warning()):
        ctx.warn(warning)
    if args.dry_run:
        return _dry_run(args, ctx, spec)
    progress = _Progress(ctx)
    try:
        result = build_env(spec, ctx.site(), name=args.name,
                           cuda_override=NO_CUDA if args.no_cuda else args.cuda,
                           from_lock=Path(args.from_lock) if args.from_lock else None,
                           on_progress=progress, publish_build=not args.no_publish)
    finally:
        progress.close()
    data = result.to_dict()
    if args.no_publish:
        data["published"] = False
        ctx.emit(data, lambda d: (
            f"{d['status']} {d['name']} version {d['version']} "
            f"({'CUDA ' + d['cuda'] if d['cuda'] else 'no CUDA'}) in {d['seconds']:.2f}s; not "
            f"published (current version: {d['previous_current'] or 'none'})\n"
            f"  prefix:  {d['prefix']}\n"
            f"  run:     hpcenv run -p {d['prefix']} -- python\n"
            f"  publish: hpcenv env rollback {d['name']} --to {d['version']}"))
        return 0
    note = result.current_note
    if note is not None and ctx.json:
        # --json keeps stdout pure JSON; the move of 'current' must still be seen.
        print(f"hpcenv: {data['name']}: {note}", file=sys.stderr, flush=True)
    ctx.emit(data, lambda d: (f"{d['status']} {d['name']} version {d['version']} "
                              f"({'CUDA ' + d['cuda'] if d['cuda'] else 'no CUDA'}) "
                              f"in {d['seconds']:.2f}s{'; ' + note if note else ''}\n"
                              f"  prefix: {d['prefix']}\n"
                              f"  run:    hpcenv run -n {d['name']} -- python"))
    return 0


def _dry_run(args: argparse.Namespace, ctx: Context, spec: Any) -> int:
    from hpcenv.build.builder import preview_build

    progress = _Progress(ctx)
    try:
        from hpcenv.spec.cuda_target import NO_CUDA

        preview = preview_build(spec, ctx.site(), name=args.name,
                                cuda_override=NO_CUDA if args.no_cuda else args.cuda,
                                from_lock=Path(args.from_lock) if args.from_lock else None,
                                on_progress=progress)
    finally:
        progress.close()

    def human(d: dict[str, Any]) -> str:
        if d["existing_version"] is not None:
            action = f"would reuse {d['name']} version {d['existing_version']} (same build key)"
        else:
            action = f"would build a new version of {d['name']}"
        current = d["current_version"]
        lines = [f"{action}; current version now: {current if current is not None else 'none'}",
                 f"  cuda:      {'; '.join(d['notes']) or d['cuda'] or 'none'}",
                 f"  key:       {d['key']}",
                 f"  channels:  {', '.join(d['channels']) or '-'}",
                 f"  packages:  {len(d['packages'])}"]
        width = max((len(p["name"]) for p in d["packages"]), default=0)
        lines += [f"    {p['name']:<{width}}  {p['version']}  {p['build']}" for p in d["packages"]]
        if d["pip"]:
            lines.append(f"  pip:       {', '.join(d['pip'])}")
        if d["variables"]:
            lines.append(f"  variables: {', '.join(d['variables'])}")
        lines.append("nothing was built or published (drop --dry-run to build; --no-publish "
                     "builds without making it current)")
        return "\n".join(lines)

    ctx.emit(preview.to_dict() | {"dry_run": True}, human)
    return 0


def _list(args: argparse.Namespace, ctx: Context) -> int:
    registry = _registry(ctx)
    if ctx.json:
        ctx.emit(registry.listing()[0])
        return 0
    # The lines the registry's index keeps: 10,000 envs print without formatting a row.
    ctx.emit(registry.list_text() or f"no environments in {registry.root}; build one with "
             "'hpcenv env build FILE'")
    return 0


def _show(args: argparse.Namespace, ctx: Context) -> int:
    registry = _registry(ctx)
    record = registry.resolve(args.name, args.version)
    data = record.to_dict() | {"current": registry.current_version(args.name) == record.version}

    def human(d: dict[str, Any]) -> str:
        override = {None: "from the locked packages" if d.get("from_lock") else "inferred",
                    "": "--no-cuda"}.get(d["cuda_override"], f"--cuda {d['cuda_override']}")
        lines = [
            f"{d['name']} version {d['version']}{' (current)' if d['current'] else ''}: {d['status']}",
            f"  prefix:    {d['prefix']}",
            f"  cuda:      {d['cuda'] or 'none'} ({override})",
            f"  key:       {d['key']}",
            f"  channels:  {', '.join(d['channels']) or '-'}",
            f"  platform:  {d['platform']}",
            f"  packages:  {d['packages']}, {d['file_count']} files, "
            f"{human_size(d['size_bytes'])}"
            + (f" ({human_size(d['unique_bytes'])} its own, the rest shared with the package "
               "cache)" if d.get("unique_bytes") is not None else ""),
            f"  lockfile:  {d['lock_path']}",
            f"  built by:  {d['creator']} at {d['created']}",
        ]
        if d.get("error"):
            lines.append(f"  error:     {d['error']}")
        if d.get("log_path"):
            lines.append(f"  build log: {d['log_path']}")
        if d.get("source"):
            lines.append(f"  from file: {d['source']}")
        if d.get("from_lock"):
            lines.append(f"  from lock: {d['from_lock']}")
        spec = d.get("spec") or {}
        conda = spec.get("conda") or spec.get("dependencies")
        if isinstance(conda, list) and conda:
            lines.append(f"  spec:      {', '.join(map(str, conda))}")
        return "\n".join(lines)

    ctx.emit(data, human)
    return 0


def _history(args: argparse.Namespace, ctx: Context) -> int:
    registry = _registry(ctx)
    # Without --json, the text the registry's index keeps: 10,000 versions print as one string.
    ctx.emit(registry.history_rows(args.name) if ctx.json else registry.history_text(args.name))
    return 0


def _export(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.build.export import ExportFormat, export_record, lock_omissions

    record = _registry(ctx).resolve(args.name, args.version)
    form: ExportFormat = "lock" if args.lock else "explicit" if args.explicit else "environment.yml"
    if form != "environment.yml" and (omitted := lock_omissions(record, form)):
        ctx.warn(omitted)
    text = export_record(record, form, no_builds=args.no_builds)
    if args.output is not None:
        from hpcenv.fsutil import atomic_write_text

        try:
            atomic_write_text(args.output, text)
        except OSError as exc:
            raise HpcenvError(f"-o {args.output}: cannot write it ({exc.strerror}); pick a "
                              "writable path") from None
        ctx.info(f"wrote {args.output}")
    elif ctx.json:
        ctx.emit({"name": record.name, "version": record.version, "format": form, "text": text})
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 0


def _rollback(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.store import store_for
    from hpcenv.store.lifecycle import rollback

    registry = _registry(ctx)
    before = registry.current_version(args.name)
    record = rollback(store_for(ctx.site()), args.name, args.to, on_wait=ctx.info)
    ctx.emit({"name": record.name, "version": record.version, "previous": before,
              "prefix": record.prefix},
             lambda d: f"{d['name']}: current version is now {d['version']} (was {d['previous']})")
    return 0


def _build_use(ctx: Context) -> BuildUseLookup:
    """Asks the site's scheduler, when the store needs to know, which builds jobs run in."""
    site = ctx.site()

    def ask() -> BuildUse:
        from hpcenv.jobs.backend import site_scheduler
        from hpcenv.scheduler.build_use import builds_in_use

        return builds_in_use(site_scheduler(site))
    return ask


def _rm(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.store import store_for
    from hpcenv.store.lifecycle import remove_env, remove_version

    if args.version is not None:
        records = [remove_version(store_for(ctx.site()), args.name, args.version, force=args.force,
                                  on_warning=ctx.warn, on_wait=ctx.info,
                                  jobs_using=_build_use(ctx))]
    else:
        records = remove_env(store_for(ctx.site()), args.name, force=args.force, on_warning=ctx.warn,
                             on_wait=ctx.info, jobs_using=_build_use(ctx))
    removed = [r.version for r in records]
    # Retired, but their files stay: a job runs in them, or they belong to someone else.
    kept = [r.version for r in records if Path(r.prefix).exists()]
    after = _registry(ctx).current_version(args.name)
    ctx.emit({"name": args.name, "removed": removed, "kept_files": kept, "current": after},
             lambda d: f"{d['name']}: removed version(s) {', '.join(map(str, d['removed'])) or 'none'}"
                       + (f" (files of {', '.join(map(str, d['kept_files']))} kept, see above)"
                          if d["kept_files"] else "")
                       + f"; current: {d['current'] if d['current'] is not None else 'none'}")
    return 0


def _gc(args: argparse.Namespace, ctx: Context) -> int:
    from hpcenv.store import store_for
    from hpcenv.store.gc import collect_garbage

    report = collect_garbage(store_for(ctx.site()), dry_run=args.dry_run, on_wait=lambda who: print(
        f"hpcenv: waiting for {who} (package cache)", file=sys.stderr, flush=True),
        jobs_using=_build_use(ctx), force=args.force, on_warning=ctx.warn)
    for error in report.errors:
        ctx.warn(error)

    def human(d: dict[str, Any]) -> str:
        verb = "would free" if d["dry_run"] else "freed"
        lines = [f"{'would remove' if d['dry_run'] else 'removed'} {i['kind']:<7} {i['path']} "
                 f"({human_size(i['bytes'])}, {i['files']} files)" for i in d["removed"]]
        lines += [f"{'would retire' if d['dry_run'] else 'retired'} record  {r['name']} version "
                  f"{r['version']} ({r['was']}: {r['error'] or 'the build never finished'})"
                  for r in d["retired"]]
        lines += [f"kept    build   {k['path']}: in use by "
                  + ", ".join(f"job {j['job_id']} ({j['user'] or 'unknown user'}, "
                              f"{j['state'].lower()})" for j in k["jobs"])
                  + "; a later gc removes it once they end" for k in d["kept"]]
        lines.append(f"{verb} {human_size(d['bytes_freed'])} in {d['files_freed']} files "
                     f"({len(d['removed'])} items)")
        return "\n".join(lines)

    ctx.emit(report.to_dict(), human)
    return 0
