"""Job scripts from Jinja2 templates: the ``#SBATCH`` header, then the launcher.

Nothing a user typed reaches the script unchecked.  ``#SBATCH`` values are validated here (Slurm
parses those lines itself, so quoting would not help: a newline or a space would start a new
option); program arguments are shell-quoted with :func:`shlex.quote` by the templates' ``quote``
filter, so ``$(rm -rf ~)`` or an embedded newline reaches the program verbatim.

Launchers:

``activate``
    hpcenv's own activation, inlined as bash (:func:`hpcenv.store.activation.activation_script`), then
    ``exec`` of the program: the program *is* the batch shell, so signals Slurm sends to the batch
    step (``--signal=B:...``, ``scancel --batch``) reach it, and its exit status is the job's.
    Inlining (rather than calling ``hpcenv run`` on the compute node) keeps the script
    self-contained: it needs neither hpcenv nor its Python on the node, only the env's prefix on
    the shared filesystem, and the kept script shows exactly what ran.
``conda-run``
    ``conda run -p PREFIX --no-capture-output``.  conda stays between the shell and the program and
    does not forward signals, so the batch shell runs it in the background, traps
    TERM/INT/HUP/USR1/USR2 and forwards each to the program itself.  The program's pid is learnt
    by having conda start a second stage of this same script (``$0 --hpcenv-exec PIDFILE``) that
    writes its pid and then ``exec``\\ s the program; this also keeps the program's arguments out
    of conda's own command line (conda re-quotes them into a temporary script).  ``-p PREFIX``
    instead of ``-n NAME`` pins the exact build that was routed for, even if the name is rebuilt
    or rolled back while the job waits in the queue.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcenv import __version__
from hpcenv.errors import InvalidInput
from hpcenv.resources import data_dir
from hpcenv.scheduler.options import (
    NAME,
    TOKEN,
    control_problem,
    extra_arg_problem,
    mem_problem,
    name_problem,
    signal_spec_problem,
    time_problem,
)

Launcher = Literal["conda-run", "activate"]

TEMPLATE_NAME = "job.sh.j2"

# Signals the conda-run wrapper forwards to the program.  KILL and STOP cannot be trapped; CONT
# is sent by Slurm itself to every process before TERM, forwarding it would be redundant.
FORWARDED_SIGNALS = ("TERM", "INT", "HUP", "USR1", "USR2")

_NODES = re.compile(r"^\d+(?:-\d+)?$")
_ARRAY = re.compile(r"^[0-9][0-9,\-:]*(?:%\d+)?$")
_DEPENDENCY = re.compile(r"^[A-Za-z_]+(?::[0-9_+:*]+)?(?:[,?][A-Za-z_]+(?::[0-9_+:*]+)?)*$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.+@:,-]{1,128}$")
_PARTITIONS = re.compile(r"^[A-Za-z0-9_.-]+(?:,[A-Za-z0-9_.-]+)*$")


@dataclass(frozen=True)
class SbatchOptions:
    """The ``#SBATCH`` options of one job, as the user and the router gave them."""

    job_name: str
    partition: str | None = None
    constraint: str | None = None
    gpus: int = 0                       # per node, as --gres=gpu[:type]:N
    gpu_type: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    nodes: str | None = None            # "2" or "1-4"
    ntasks_per_node: int | None = None
    account: str | None = None
    qos: str | None = None
    array: str | None = None
    dependency: str | None = None
    output: str | None = None
    error: str | None = None
    signal: str | None = None           # "USR1@120" -> --signal=B:USR1@120 (the batch shell)
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobScript:
    """Everything a template needs to render one job script."""

    options: SbatchOptions
    launcher: Launcher
    command: tuple[str, ...]            # the program's argv, verbatim
    prefix: Path
    env_name: str
    env_version: str | None = None
    conda_exe: str | None = None
    activation: str = ""                # bash text for the activate launcher
    forwarded_signals: tuple[str, ...] = field(default=FORWARDED_SIGNALS)


def _check(flag: str, value: str, pattern: re.Pattern[str], expected: str) -> str:
    problem = control_problem(value) or (None if pattern.match(value) else expected)
    return _ok(flag, value, problem)


def _ok(flag: str, value: str, problem: str | None) -> str:
    if problem is not None:
        raise InvalidInput(f"{flag} {value!r}: {problem}")
    return value


def _positive(flag: str, value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{flag} {value!r}: must be a whole number of at least 1")
    return str(value)


def _nodes_problem(value: str) -> str | None:
    """``N`` or ``MIN-MAX``, each at least 1 (Slurm reads ``--nodes=0`` as "no nodes")."""
    if control_problem(value) is not None or not _NODES.match(value):
        return "use N or MIN-MAX, e.g. 2 or 2-4"
    low, _, high = value.partition("-")
    if int(low) < 1 or (high and int(high) < int(low)):
        return "a job needs at least 1 node: use N or MIN-MAX with 1 <= MIN <= MAX"
    return None


def _path_value(flag: str, value: str) -> str:
    return _check(flag, value, TOKEN, "paths in Slurm options may not contain spaces, quotes, "
                  "'$', '`', ';', '#' or backslashes; pick a simpler path")


def sbatch_signal(value: str) -> str:
    """``USR1@120`` -> ``B:USR1@120``: hpcenv's programs run in the batch step (no srun), and
    Slurm only signals the batch shell when asked with ``B:``."""
    _ok("--signal", value, signal_spec_problem(value))
    return value if ":" in value else f"B:{value}"


def sbatch_lines(opts: SbatchOptions) -> list[str]:
    """Validated ``--option=value`` strings for the ``#SBATCH`` header, in a stable order."""
    lines = [f"--job-name={check_job_name(opts.job_name)}"]
    if opts.partition:
        lines.append(f"--partition={_check('--partition', opts.partition, _PARTITIONS, 'not a partition name')}")
    if opts.constraint:
        lines.append(f"--constraint={_check('--constraint', opts.constraint, TOKEN, 'not a Slurm feature expression')}")
    if opts.gpus:
        count = _positive("--gpus", opts.gpus)
        if opts.gpu_type:
            _check("--gpu-type", opts.gpu_type, NAME, "use the GPU type name from the site config")
            lines.append(f"--gres=gpu:{opts.gpu_type}:{count}")
        else:
            lines.append(f"--gres=gpu:{count}")
    if opts.time:
        lines.append(f"--time={_ok('--time', opts.time, time_problem(opts.time))}")
    if opts.mem:
        lines.append(f"--mem={_ok('--mem', opts.mem, mem_problem(opts.mem))}")
    if opts.cpus_per_task is not None:
        lines.append(f"--cpus-per-task={_positive('--cpus-per-task', opts.cpus_per_task)}")
    if opts.nodes is not None:
        lines.append(f"--nodes={_ok('--nodes', str(opts.nodes), _nodes_problem(str(opts.nodes)))}")
    if opts.ntasks_per_node is not None:
        lines.append(f"--ntasks-per-node={_positive('--ntasks-per-node', opts.ntasks_per_node)}")
    if opts.account:
        lines.append(f"--account={_ok('--account', opts.account, name_problem(opts.account, 'an account name'))}")
    if opts.qos:
        lines.append(f"--qos={_ok('--qos', opts.qos, name_problem(opts.qos, 'a QOS name'))}")
    if opts.array:
        lines.append(f"--array={_check('--array', opts.array, _ARRAY, 'use e.g. 0-9, 1,3,5 or 0-99%10')}")
    if opts.dependency:
        lines.append(f"--dependency={_check('--dependency', opts.dependency, _DEPENDENCY, 'use e.g. afterok:123 or afterany:1:2')}")
    if opts.output:
        lines.append(f"--output={_path_value('--output', opts.output)}")
    if opts.error:
        lines.append(f"--error={_path_value('--error', opts.error)}")
    if opts.signal:
        lines.append(f"--signal={sbatch_signal(opts.signal)}")
    for arg in opts.extra_args:
        lines.append(extra_arg(arg))
    return lines


def check_job_name(name: str) -> str:
    """A job name Slurm keeps intact.  Spaces are refused rather than replaced: the job would
    be listed under a name the user never typed, and a space garbles the job's record in the
    job completion log (``sacct -c``), so its status is lost once it leaves the queue."""
    safe = re.sub(r"[^A-Za-z0-9_.+@:,-]", "_", name)[:128]
    hint = f"; e.g. --job-name {safe}" if safe.strip("_") else ""
    if " " in name:
        return _check("--job-name", name, _JOB_NAME,
                      f"spaces are not allowed (Slurm's job completion log cannot record them){hint}")
    return _check("--job-name", name, _JOB_NAME, f"use letters, digits and ._+@:,- (at most 128){hint}")


def extra_arg(arg: str) -> str:
    """Validate one ``--sbatch-arg`` value (``--exclusive``, ``--mail-type=END``)."""
    return _ok("--sbatch-arg", arg, extra_arg_problem(arg))


def job_name_from(command: Sequence[str], script: Path | None) -> str:
    """A valid default job name: the script's stem or the command's basename."""
    base = script.stem if script is not None else Path(command[0]).name if command else "job"
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", base)[:128].strip("_")
    return name or "job"


def _comment(value: object) -> str:
    """Text safe inside a ``#`` comment line: control characters shown as ``?``."""
    return re.sub(r"[\x00-\x1f\x7f]", "?", str(value))


def _quote(value: object) -> str:
    text = str(value)
    if "\x00" in text:
        raise InvalidInput(f"{text!r}: NUL bytes cannot be passed to a program")
    return shlex.quote(text)


def template_dirs(templates_dir: Path | None) -> list[Path]:
    """Where templates are looked up: the site's dir first, then the shipped ones."""
    shipped = data_dir("slurm_templates")
    return [templates_dir, shipped] if templates_dir is not None else [shipped]


def render_job_script(job: JobScript, *, templates_dir: Path | None = None,
                      template: str = TEMPLATE_NAME, extra: dict[str, Any] | None = None) -> str:
    """Render the job script.  ``templates_dir`` (the site's) is searched before the shipped
    templates, so a site may override ``job.sh.j2`` or only one of the parts it includes."""
    import jinja2

    if job.launcher not in ("conda-run", "activate"):
        raise InvalidInput(f"launcher {job.launcher!r}: use conda-run or activate")
    if job.launcher == "conda-run" and not job.conda_exe:
        raise InvalidInput("launcher conda-run needs conda_exe in the site config")
    if not job.command:
        raise InvalidInput("nothing to run: give a script or -- CMD [ARGS...]")
    for sig in job.forwarded_signals:
        if not re.fullmatch(r"[A-Z][A-Z0-9]*", sig):
            raise InvalidInput(f"signal {sig!r}: use names like TERM or USR1")
    for arg in job.command:
        _quote(arg)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in template_dirs(templates_dir)]),
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["quote"] = _quote
    env.filters["comment"] = _comment

    context: dict[str, Any] = {
        "job": job, "opts": job.options, "sbatch": sbatch_lines(job.options),
        "launcher": job.launcher, "command": list(job.command), "prefix": str(job.prefix),
        "env_name": job.env_name, "env_version": job.env_version, "conda_exe": job.conda_exe,
        "activation": job.activation, "signals": list(job.forwarded_signals),
        "hpcenv_version": __version__,
    }
    if extra:
        context.update(extra)
    try:
        return env.get_template(template).render(context)
    except jinja2.TemplateNotFound as exc:
        searched = ", ".join(str(d) for d in template_dirs(templates_dir))
        raise InvalidInput(f"job template {exc.name!r} not found in {searched}") from None
    except jinja2.TemplateError as exc:
        where, line = _template_location(exc, template)
        raise InvalidInput(f"{where}{':' + str(line) if line else ''}: job template error: {exc}") from None


def _template_location(exc: Exception, fallback: str) -> tuple[str, int | None]:
    """File and line of a template error.  Syntax errors carry them; render-time errors (an
    undefined variable) only show them in the traceback, which Jinja2 rewrites to point into
    the template."""
    filename, line = getattr(exc, "filename", None), getattr(exc, "lineno", None)
    if filename and line:
        return filename, line
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(".j2"):
            filename, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        tb = tb.tb_next
    return filename or fallback, line
