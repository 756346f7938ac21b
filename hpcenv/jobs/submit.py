"""``hpcenv submit``: make sure the env exists, route by its CUDA, render the job, hand it over.

Steps, in order; nothing is submitted (or recorded) unless every step before succeeded:

1. The program: a ``.py`` file runs with the env's python, any other file with bash, and a
   command (``-- CMD ARGS``) as given, inside the activated env.
2. The env: the registry's current version of ``--env NAME``.  When NAME is not registered and an
   environment file for it is found, it is built through the locked builder first (on this login
   node, before submission).  Files looked at: ``--env-file FILE`` (always built or reused, so the
   job runs that spec; it becomes the current version only if the env has no usable one), else
   ``NAME.yml``/``NAME.yaml`` next to the script or in the working directory, else
   ``environment.yml`` there if its ``name:`` is NAME.  Anything else is an error telling the user
   to ``hpcenv env build FILE``: guessing which spec a name means would build the wrong env.
3. Routing (:mod:`hpcenv.jobs.routing`) on the env record's CUDA with the scheduler's live node state.
4. Rendering (:mod:`hpcenv.jobs.templates`) into a job directory under the site's ``state_dir``; the
   script is kept there, so what ran can be read (and resubmitted) later.
5. ``scheduler.submit`` and a submission record (:mod:`hpcenv.jobs.control`) for ``jobs``/``status``/``logs``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.fsutil import current_user
from hpcenv.jobs.backend import site_scheduler
from hpcenv.jobs.control import SubmissionRecord, job_namespace, save_submission
from hpcenv.jobs.routing import RouteRequest, RoutingDecision, route
from hpcenv.jobs.staging import PREFIX_VAR, check_staged_script, plan_staging
from hpcenv.jobs.templates import (
    JobScript,
    Launcher,
    job_name_from,
    render_job_script,
)
from hpcenv.scheduler.base import (
    SLURM_CAPABILITIES,
    Capabilities,
    JobInfo,
    SchedulerUnreachable,
)
from hpcenv.scheduler.build_use import build_of, tag_comment
from hpcenv.scheduler.job_options import JobOptions, job_fields, min_nodes, sbatch_lines
from hpcenv.scheduler.options import TOKEN, name_problem
from hpcenv.scheduler.slurm_cli import SlurmCLI
from hpcenv.spec.names import EnvName
from hpcenv.store import store_for
from hpcenv.store.activation import activation_script
from hpcenv.store.layout import is_complete

if TYPE_CHECKING:
    from hpcenv.scheduler.base import PartitionState, Scheduler
    from hpcenv.site.config import SiteConfig
    from hpcenv.spec.environment import EnvSpec
    from hpcenv.store.registry import EnvRecord

Progress = Callable[[str], None]


@dataclass(frozen=True)
class SubmitOptions(JobOptions):
    """``hpcenv submit``'s options: the job's Slurm options (the table in
    :mod:`hpcenv.scheduler.job_options`; None means the site default, or Slurm's) plus what only
    hpcenv uses."""

    env_file: Path | None = None
    workdir: Path | None = None           # default: the current directory
    launcher: Launcher | None = None      # default: the site's (auto: conda-run if conda exists)
    stage: bool = False                   # run from a node-local copy (hpcenv.jobs.staging)


@dataclass(frozen=True)
class SubmitResult:
    """What a submit (or dry run) did: the job, where it was routed and why, the env and the
    rendered script."""

    job_id: str | None                    # None for a dry run
    partition: str | None
    constraint: str | None
    env: str
    env_version: int
    prefix: str
    script: Path                          # the rendered job script (kept in the job dir)
    reason: str
    gpus: int
    launcher: str
    scheduler: str
    env_status: str                       # "existing", "built" or "reused"
    script_text: str = field(repr=False, default="")
    routing: RoutingDecision | None = field(repr=False, default=None)
    dry_run: bool = False
    warnings: tuple[str, ...] = ()        # e.g. options the local executor ignores
    options: JobOptions = field(repr=False, default=JobOptions())  # as rendered
    live_state: bool = False              # routing saw the scheduler's node state
    live_note: str | None = None          # why it did not (a dry run without an answer)
    pack: str | None = None               # --stage: the pack the job unpacks

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "partition": self.partition, "constraint": self.constraint,
                "env": self.env, "env_version": self.env_version, "prefix": self.prefix,
                "script": str(self.script), "reason": self.reason, "gpus": self.gpus,
                "launcher": self.launcher, "scheduler": self.scheduler,
                "env_status": self.env_status, "dry_run": self.dry_run,
                "live_state": self.live_state, "live_note": self.live_note,
                "warnings": list(self.warnings), "pack": self.pack,
                "options": self.options.to_dict(),
                "routing": self.routing.to_dict() if self.routing else None}


# --- the program ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Program:
    """What the job runs; ``argv`` needs the env prefix for python scripts."""

    script: Path | None                   # absolute path of the user's script, if any
    args: tuple[str, ...]
    kind: str                             # "python", "shell" or "command"

    def argv(self, prefix: Path) -> tuple[str, ...]:
        if self.kind == "python":
            return (str(prefix / "bin" / "python"), str(self.script), *self.args)
        if self.kind == "shell":
            return ("bash", str(self.script), *self.args)
        return self.args


def resolve_program(script_or_cmd: str | Path | Sequence[str], args: Sequence[str] = ()) -> Program:
    """A script path (``str``/``Path``) or a command (list/tuple of words) plus its arguments."""
    if isinstance(script_or_cmd, (str, Path)):
        path = Path(script_or_cmd).expanduser()
        if not path.is_file():
            hint = ("" if path.exists() else
                    "; to run a command instead use: hpcenv submit --env NAME -- CMD [ARGS...]")
            raise InvalidInput(f"{script_or_cmd}: no such script file{hint}")
        kind = "python" if path.suffix == ".py" else "shell"
        return Program(path.resolve(), tuple(args), kind)
    words = (*script_or_cmd, *args)
    if not words or not words[0]:
        raise InvalidInput("nothing to run: give a script or -- CMD [ARGS...]")
    return Program(None, tuple(words), "command")


# --- the env ----------------------------------------------------------------------------------------

def _spec_candidates(name: str, search_dirs: Sequence[Path]) -> list[Path]:
    out: list[Path] = []
    for directory in dict.fromkeys(search_dirs):
        out += [directory / f"{name}.yml", directory / f"{name}.yaml"]
        out += [directory / "environment.yml", directory / "environment.yaml"]
    return out


def _load_spec(path: Path) -> EnvSpec:
    """The spec in ``path``.  The spec parser (and below, the builder) is imported only when a
    spec is read: submitting to a built env, the common case, is a registry lookup that their
    imports would make several times slower."""
    from hpcenv.spec.environment import load_spec as parse_file

    return parse_file(path)


def find_env_file(name: str, search_dirs: Sequence[Path]) -> Path | None:
    """An environment file that clearly means env ``name`` (see the module doc)."""
    for path in _spec_candidates(name, search_dirs):
        if not path.is_file():
            continue
        spec = _load_spec(path)
        if spec.name == name or (spec.name is None and path.stem == name):
            return path
    return None


def ensure_env(site: SiteConfig, name: str | None, *, env_file: Path | None = None,
               search_dirs: Sequence[Path] = (), progress: Progress | None = None,
               build: bool = True) -> tuple[EnvRecord, str]:
    """The env record to run in, and how it was obtained: existing, built or reused.

    With an environment file the job runs the build of that file, reused when it exists.  That
    build becomes the env's current version only when the env has no usable one yet: a submit
    must not undo a rollback (or replace the version other users run) behind their back.
    ``build=False`` (a dry run) never builds: it uses the file's existing build, and refuses
    only when there is none.
    """
    say = progress or (lambda _m: None)
    spec = None
    if env_file is not None:
        spec = _load_spec(env_file)
        name = name or spec.name or Path(env_file).stem
    if name is None:
        raise InvalidInput("no env given: pass --env NAME (a registered env) or --env-file FILE")
    name = EnvName.of(name)
    registry = store_for(site).registry()
    current = registry.current(name)
    usable = current is not None and current.status == "ready" and is_complete(current.prefix)
    if spec is None:
        if current is not None and usable:
            return current, "existing"
        env_file = find_env_file(name, search_dirs)
        if env_file is None:
            state = "is not in the registry" if current is None else \
                f"has no usable current version (v{current.version} is {current.status})"
            raise NotFound(f"env {name!r} {state} ({site.registry}); build it first with "
                           f"'hpcenv env build FILE --name {name}' or pass --env-file FILE")
        spec = _load_spec(env_file)
    from hpcenv.build.builder import build_env  # see _load_spec
    from hpcenv.build.plan import plan_build

    plan = plan_build(spec, site, name=name)
    found = registry.find_ready(plan.key, plan.name)
    if found is not None and not is_complete(found.prefix):
        found = None  # its files are gone: build_env rebuilds it
    if not build:
        if found is None:
            raise NotFound(f"env {name!r} would be built from {env_file} first; a dry run builds "
                           f"nothing: run 'hpcenv env build {env_file} --name {name}'")
        return found, "reused"
    if found is not None:
        say(f"hpcenv: reusing env {name} v{found.version}, built from {env_file}")
    else:
        say(f"hpcenv: building env {name} from {env_file} (once; later submits reuse it)")
    result = build_env(spec, site, name=name, on_progress=lambda event: say(str(event)),
                       make_current=not usable)
    return result.record, result.status


# --- launcher and scheduler -------------------------------------------------------------------------

def choose_launcher(site: SiteConfig, override: Launcher | None = None) -> Launcher:
    """conda-run when asked (or ``auto`` and the site's conda exists), else hpcenv's activation."""
    wanted = override or site.launcher
    if wanted == "conda-run":
        if not site.conda_exe:
            raise InvalidInput("launcher conda-run needs conda_exe in the site config")
        return "conda-run"
    if wanted == "auto" and site.conda_exe and _conda_available(site.conda_exe):
        return "conda-run"
    return "activate"


def _conda_available(conda_exe: str) -> bool:
    path = Path(conda_exe).expanduser()
    if path.is_absolute():
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(conda_exe) is not None


# A dry run asks the controller for node state only this long: it must work (quickly) where no
# controller answers, e.g. before the cluster is up or on a machine with client tools only.
DRY_RUN_QUERY_TIMEOUT = 5.0


def _dry_run_live_state(site: SiteConfig, scheduler: Scheduler | None
                        ) -> tuple[list[PartitionState] | None, str | None]:
    """Node state for a dry run's routing when a controller answers at once, else None and why
    not.  Asked through the Slurm command line (read-only, bounded by a timeout), whichever
    backend would submit: importing pyslurm where no Slurm is configured ends the process."""
    if scheduler is not None and not scheduler.capabilities.partitions:
        return None, None
    if not site.partitions:
        return None, None
    reader = scheduler if scheduler is not None else SlurmCLI(
        timeout=DRY_RUN_QUERY_TIMEOUT, bin_dir=site.slurm.bin_dir)
    try:
        return reader.partitions(), None
    except HpcenvError as exc:
        return None, f"not consulted (dry run, no answer from Slurm: {exc}); routed on the site config alone"


def _live_state(scheduler: Scheduler, site: SiteConfig, say: Progress) -> list[PartitionState] | None:
    # A backend without real partitions (the local executor) says nothing about the site's.
    if not scheduler.capabilities.partitions or not site.partitions:
        return None
    try:
        return scheduler.partitions()
    except SchedulerUnreachable:
        raise  # the submission itself could not get through either
    except HpcenvError as exc:
        say(f"hpcenv: warning: cannot read node state ({exc}); routing on the site config alone")
        return None


# --- submit -----------------------------------------------------------------------------------------

def _with_site_defaults(options: SubmitOptions, site: SiteConfig) -> SubmitOptions:
    """The site's ``slurm:`` defaults for every option the user left unset (``extra_args``:
    the site's first, then the user's)."""
    table = {f.name for f in job_fields()}
    changes: dict[str, Any] = {}
    for f in fields(site.slurm):
        if f.name not in table:
            continue
        default = getattr(site.slurm, f.name)
        if f.name == "extra_args":
            changes[f.name] = (*default, *options.extra_args)
        elif getattr(options, f.name) is None and default is not None:
            changes[f.name] = default
    if options.cpus_per_gpu is not None:
        # sbatch refuses --cpus-per-task beside --cpus-per-gpu: the user's choice wins.
        changes.pop("cpus_per_task", None)
    return replace(options, **changes)


def _unsupported(options: SubmitOptions, site: SiteConfig,
                 caps: Capabilities) -> tuple[SubmitOptions, tuple[str, ...]]:
    """What the backend cannot honour, dropped from the options and said once.  Every job of
    a backend without partitions runs on one machine, so a partition the site config does not
    list is refused as on Slurm (where ``sinfo`` would refuse it); the rest is accepted, so the
    same command works on the cluster."""
    partition = options.partition if options.partition not in (None, "", "auto") else None
    if not caps.partitions and partition is not None and not site.partitions:
        where = f" ({site.source})" if site.source else ""
        raise InvalidInput(f"--partition {partition}: the local executor has no partitions and "
                           f"the site config{where} lists none; drop --partition")
    ignored: dict[str, str] = {}
    drop: dict[str, Any] = {}
    if not caps.partitions and partition is not None and site.partitions:
        ignored[f"--partition {partition}"] = "partitions"
    if not caps.gpus:
        for flag, value in (("--gpus", options.gpus), ("--gpus-per-node", options.gpus_per_node),
                            ("--gpu-type", options.gpu_type)):
            if value:
                ignored[f"{flag} {value}"] = "GPU allocation"
    if not caps.multi_node:
        if min_nodes(options.nodes) > 1:
            ignored[f"--nodes {options.nodes}"] = "multi-node jobs"
        for flag, value in (("--ntasks", options.ntasks),
                            ("--ntasks-per-node", options.ntasks_per_node)):
            if value is not None and value > 1:
                ignored[f"{flag} {value}"] = "multi-task jobs (srun)"
        # No srun there: the program runs once, in the batch shell.
        drop.update(nodes=None, ntasks=None, ntasks_per_node=None)
    if not caps.time_limit_signals and options.signal:
        ignored[f"--signal {options.signal}"] = "signals before the time limit"
    options = replace(options, **drop)
    if not ignored:
        return options, ()
    lacks = " or ".join(dict.fromkeys(ignored.values()))
    return options, (f"the local executor runs every job on this machine and has no {lacks}: "
                     f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored",)


def _check_gpu_options(options: SubmitOptions) -> None:
    """What ``sbatch_lines`` cannot check before routing decided the GPUs."""
    for flag, value in (("--gpus", options.gpus), ("--gpus-per-node", options.gpus_per_node)):
        if value is not None and value < 0:
            raise InvalidInput(f"{flag} {value}: must be 0 or more (0 runs the job without "
                               "GPUs, even in a CUDA env)")
    if options.gpus is not None and options.gpus_per_node is not None:
        raise InvalidInput(f"--gpus {options.gpus} and --gpus-per-node {options.gpus_per_node}: "
                           "give one (--gpus counts the whole job's GPUs, --gpus-per-node each "
                           "node's)")
    if options.gpu_type is not None and (problem := name_problem(options.gpu_type, "a GPU type")):
        raise InvalidInput(f"--gpu-type {options.gpu_type!r}: {problem}")


def _routed(options: SubmitOptions, decision: RoutingDecision) -> SubmitOptions:
    """The options with routing's partition, node features and GPUs: the user's ``--gpus``
    (whole job) stays a job total, anything else becomes GPUs per node."""
    constraint = decision.constraint
    if options.constraint and constraint:
        constraint = f"{options.constraint}&({constraint})" if "|" in constraint else \
            f"{options.constraint}&{constraint}"
    elif options.constraint:
        constraint = options.constraint
    if options.gpus is not None and options.gpus > 0 and decision.gpus > 0:
        gpus: dict[str, Any] = {"gpus": options.gpus, "gpus_per_node": None}
    else:
        gpus = {"gpus": None, "gpus_per_node": decision.gpus or None}
    return replace(options, partition=decision.partition, constraint=constraint,
                   gpu_type=decision.gpu_type, **gpus)


def _make_log_dirs(workdir: Path, patterns: Sequence[tuple[str, str | None]],
                   created: list[Path]) -> None:
    """Create the missing directories of ``--output``/``--error`` paths, adding each to
    ``created`` (outermost first) so a refused job can take them back.  sbatch does not create
    them, and a job whose output file cannot be opened fails without a line of output anywhere.
    A directory part with a ``%`` pattern is only known once the job runs and is left alone;
    an existing one must be writable."""
    for flag, pattern in patterns:
        if not pattern:
            continue
        parent = (workdir / pattern).parent  # relative to the submit dir, as for sbatch
        if "%" in str(parent):
            continue
        missing: list[Path] = []
        walk = parent
        while not walk.exists():
            missing.append(walk)
            walk = walk.parent
        if not walk.is_dir():
            raise InvalidInput(f"{flag} {pattern}: {walk} is not a directory; pick another path")
        if not missing and not os.access(parent, os.W_OK | os.X_OK):
            raise InvalidInput(f"{flag} {pattern}: cannot write in {parent}; pick another path")
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:
                continue  # made meanwhile (e.g. --output and --error in the same new dir)
            except OSError as exc:
                raise InvalidInput(f"{flag} {pattern}: cannot create {directory} "
                                   f"({exc.strerror}); pick another path") from None
            created.append(directory)


def _default_output(workdir: Path, *, array: bool) -> str:
    """Where output goes without ``--output``: Slurm's own default name in the submit dir.
    sbatch reads ``#SBATCH`` values unquoted, so a submit dir whose path holds a space or a
    quote cannot be written there; the relative name lands in the same place (the job starts
    in the submit dir) and is what the script says then."""
    name = "slurm-%A_%a.out" if array else "slurm-%j.out"
    absolute = str(workdir / name)
    return absolute if TOKEN.match(absolute) else name


def _job_dir(site: SiteConfig, job_name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(site.state_dir) / "jobs" / f"{stamp}-{job_name}-{os.urandom(3).hex()}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def submit(script_or_cmd: str | Path | Sequence[str], args: Sequence[str] = (), *,
           env_name: str | None, site: SiteConfig, options: SubmitOptions = SubmitOptions(),
           scheduler: Scheduler | None = None, dry_run: bool = False,
           progress: Progress | None = None) -> SubmitResult:
    """Submit ``script_or_cmd`` (a script path, or a command as a list of words) to run in env
    ``env_name``; see the module doc for the steps.  ``dry_run`` renders and keeps the script but
    submits nothing and builds nothing; it routes with live node state only when a controller
    answers within DRY_RUN_QUERY_TIMEOUT, else on the site config alone (and says so)."""
    say = progress or (lambda _m: None)
    program = resolve_program(script_or_cmd, args)
    options = _with_site_defaults(options, site)
    workdir = (options.workdir or Path.cwd()).resolve()
    if not workdir.is_dir():
        raise InvalidInput(f"--workdir {workdir}: no such directory")
    job_name = options.job_name or job_name_from(program.args, program.script)
    output = options.output or _default_output(workdir, array=bool(options.array))
    nodes = str(options.nodes) if options.nodes is not None else None
    options = replace(options, job_name=job_name, output=output, nodes=nodes)
    _check_gpu_options(options)
    sbatch_lines(options)  # bad options fail now, not after a long env build
    if scheduler is None and not (dry_run and site.scheduler != "local"):
        scheduler = site_scheduler(site)
    # A dry run on a Slurm site picks no backend (pyslurm would need a configured Slurm to
    # import): Slurm's capabilities are the same whichever of the two would submit.
    caps = scheduler.capabilities if scheduler is not None else SLURM_CAPABILITIES
    kind = scheduler.kind if scheduler is not None else site.scheduler
    options, warnings = _unsupported(options, site, caps)
    if options.stage and options.launcher == "conda-run":
        raise InvalidInput("--stage runs the node-local copy with hpcenv's activation; drop "
                           "--launcher conda-run")
    # A staged copy is activated by hpcenv: conda on the node would start from the shared
    # filesystem again, which staging is there to avoid.
    launcher = "activate" if options.stage else choose_launcher(site, options.launcher)
    search = [program.script.parent, workdir] if program.script else [workdir]
    env_file = options.env_file.expanduser().resolve() if options.env_file else None
    record, env_status = ensure_env(site, env_name, env_file=env_file, search_dirs=search,
                                    progress=say, build=not dry_run)
    prefix = Path(record.prefix)

    # gpu_required only adds what the CUDA version cannot say: a GPU env naming no CUDA (ROCm,
    # an unversioned GPU build) still needs a GPU partition.  Without it, a recorded CUDA
    # decides, as for records written before the field existed.
    request = RouteRequest(cuda=record.cuda,
                           gpu_required=True if record.gpu_required else None,
                           gpus=options.gpus_per_node_wanted, gpu_type=options.gpu_type,
                           partition=options.partition, nodes=min_nodes(options.nodes))
    if dry_run or scheduler is None:
        live, live_note = _dry_run_live_state(site, scheduler)
    else:
        live, live_note = _live_state(scheduler, site, say), None
    decision = route(request, site.partitions, compat=site.cuda_compat, live=live)
    # The comment names the build the job runs in, for everyone removing builds (build_use).
    options = replace(_routed(options, decision), comment=tag_comment(options.comment, prefix))

    stage = plan_staging(site, record) if options.stage else None
    if stage is not None and stage.warning:
        warnings = (*warnings, stage.warning)
    activation = ""
    if launcher == "activate":
        activation = activation_script(prefix, name=record.name,
                                       prefix_var=PREFIX_VAR if stage is not None else None)
    job = JobScript(options=options, launcher=launcher, command=program.argv(prefix), prefix=prefix,
                    env_name=record.name, env_version=str(record.version),
                    conda_exe=site.conda_exe, activation=activation)
    text = render_job_script(job, templates_dir=site.templates_dir,
                             cache_dir=Path(site.state_dir) / "template-cache",
                             extra={"stage": stage.context} if stage is not None else None)
    if stage is not None:
        check_staged_script(text, site)

    script = _job_dir(site, job_name) / "job.sh"
    script.write_text(text)
    result = SubmitResult(
        job_id=None, partition=decision.partition, constraint=options.constraint,
        env=record.name, env_version=record.version, prefix=str(prefix), script=script,
        reason=decision.reason, gpus=decision.gpus, launcher=launcher, scheduler=kind,
        env_status=env_status, script_text=text, routing=decision, dry_run=dry_run,
        warnings=warnings, options=JobOptions(**{f.name: getattr(options, f.name)
                                                 for f in job_fields()}),
        live_state=live is not None, live_note=live_note,
        pack=str(stage.pack) if stage is not None else None)
    if dry_run or scheduler is None:
        return result

    created: list[Path] = []
    try:
        _make_log_dirs(workdir, (("--output", output), ("--error", options.error)), created)
        job_id = scheduler.submit(script, workdir=workdir, options=result.options)
    except BaseException:
        # Nothing of a refused job stays: neither its job dir nor log dirs made for it.
        shutil.rmtree(script.parent, ignore_errors=True)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    asked = _asked_of(scheduler, job_id, result)
    save_submission(site.state_dir, SubmissionRecord(
        job_id=job_id, scheduler=job_namespace(scheduler), env=record.name, env_version=record.version,
        prefix=str(prefix), partition=asked.partition, constraint=asked.constraint,
        gpus=decision.gpus, reason=decision.reason, script=str(script), workdir=str(workdir),
        job_name=job_name, output=output, error=options.error, command=list(job.command),
        launcher=launcher, submitted=time.time(), user=current_user(),
        backend=scheduler.kind, options=result.options.to_dict(), gres=asked.gres,
        comment=asked.comment, read_back=asked.read_back))
    warnings = result.warnings
    if asked.read_back and build_of(asked.comment) is None:
        warnings = (*warnings, f"job {job_id}'s comment, as the scheduler holds it "
                    f"({asked.comment or 'none'}), does not name the env build it runs in (a "
                    "site template's own --comment line?): 'env rm' and 'env gc' cannot tell "
                    f"that it runs in {prefix}")
    return replace(result, job_id=job_id, partition=asked.partition, constraint=asked.constraint,
                   warnings=warnings)


@dataclass(frozen=True)
class _Asked:
    """Where a job was sent, as its record states it."""

    partition: str | None
    constraint: str | None
    gres: str | None
    comment: str | None
    read_back: bool        # the scheduler's own account of the job, not what hpcenv meant


def _asked_of(scheduler: Scheduler, job_id: str, result: SubmitResult) -> _Asked:
    """The job's routing as the scheduler holds it (one ``scontrol show job``), so a record
    never claims a partition, GPUs or features Slurm did not get (an ``#SBATCH`` line of a
    site template, a submit filter).  The local executor has no partitions: what hpcenv
    decided stands there.  A controller that stops answering right after the submit leaves
    what hpcenv asked for, marked as not read back."""
    try:
        info: JobInfo | None = scheduler.status(job_id)
    except HpcenvError:
        info = None
    options = result.options
    if info is None or not scheduler.capabilities.partitions:
        return _Asked(result.partition, options.constraint, None,
                      info.comment if info is not None else options.comment, info is not None)
    return _Asked(info.partition, info.constraint, info.gres, info.comment, True)
