"""Job scripts from Jinja2 templates: the ``#SBATCH`` header, then the launcher.

The header comes from :func:`hpcenv.scheduler.job_options.sbatch_lines` (the option table).  A
job of several tasks or nodes runs its program under ``srun`` (once per task, the activated
environment inherited); a single-task job runs it directly in the batch shell.  Output is opened
with ``--open-mode=append``, so a requeued job's log keeps every run.

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

import contextlib
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpcenv import __version__
from hpcenv.errors import InvalidInput
from hpcenv.jobs import template_subset
from hpcenv.resources import data_dir
from hpcenv.scheduler.job_options import JobOptions, min_nodes, sbatch_lines

Launcher = Literal["conda-run", "activate"]

TEMPLATE_NAME = "job.sh.j2"

# Signals the conda-run wrapper forwards to the program.  KILL and STOP cannot be trapped; CONT
# is sent by Slurm itself to every process before TERM, forwarding it would be redundant.
FORWARDED_SIGNALS = ("TERM", "INT", "HUP", "USR1", "USR2")

@dataclass(frozen=True)
class JobScript:
    """Everything a template needs to render one job script."""

    options: JobOptions
    launcher: Launcher
    command: tuple[str, ...]            # the program's argv, verbatim
    prefix: Path
    env_name: str
    env_version: str | None = None
    conda_exe: str | None = None
    activation: str = ""                # bash text for the activate launcher
    forwarded_signals: tuple[str, ...] = field(default=FORWARDED_SIGNALS)

    @property
    def srun(self) -> bool:
        """Run the program under ``srun``, once per task: a job of several tasks or nodes.
        Without it the batch script runs on the first node only, once."""
        o = self.options
        return o.tasks > 1 or min_nodes(o.nodes) > 1


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


# The filters templates have beyond Jinja2's own.
FILTERS: dict[str, Callable[[object], str]] = {"quote": _quote, "comment": _comment}


def template_dirs(templates_dir: Path | None) -> list[Path]:
    """Where templates are looked up: the site's dir first, then the shipped ones."""
    shipped = data_dir("slurm_templates")
    return [templates_dir, shipped] if templates_dir is not None else [shipped]


def render_job_script(job: JobScript, *, templates_dir: Path | None = None,
                      template: str = TEMPLATE_NAME, extra: dict[str, Any] | None = None,
                      cache_dir: Path | None = None) -> str:
    """Render the job script.  ``templates_dir`` (the site's) is searched before the shipped
    templates, so a site may override ``job.sh.j2`` or only one of the parts it includes.

    Templates that keep to the subset of Jinja2 :mod:`hpcenv.jobs.template_subset` reads (the
    shipped ones do) are rendered without importing Jinja2; any other renders with Jinja2, as
    does every template error.  ``cache_dir`` (private to the user: it holds compiled code)
    then keeps the templates compiled between runs: Jinja2 checks each cached entry against a
    hash of its template's current source, so an edited site template is recompiled, never
    served stale."""
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
    context = job_context(job, extra)
    dirs = template_dirs(templates_dir)
    text = template_subset.render(template, dirs, context, FILTERS)
    if text is not None:
        return text
    return _render_with_jinja2(template, dirs, context, cache_dir)


def job_context(job: JobScript, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The values a job template sees."""
    context: dict[str, Any] = {
        "job": job, "opts": job.options, "sbatch": sbatch_lines(job.options), "srun": job.srun,
        "launcher": job.launcher, "command": list(job.command), "prefix": str(job.prefix),
        "env_name": job.env_name, "env_version": job.env_version, "conda_exe": job.conda_exe,
        "activation": job.activation, "signals": list(job.forwarded_signals),
        "hpcenv_version": __version__,
    }
    return context | (extra or {})


def _render_with_jinja2(template: str, dirs: list[Path], context: dict[str, Any],
                        cache_dir: Path | None) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
        trim_blocks=True, lstrip_blocks=True, bytecode_cache=_bytecode_cache(cache_dir),
    )
    env.filters.update(FILTERS)
    try:
        return env.get_template(template).render(context)
    except jinja2.TemplateNotFound as exc:
        searched = ", ".join(str(d) for d in dirs)
        raise InvalidInput(f"job template {exc.name!r} not found in {searched}") from None
    except jinja2.TemplateError as exc:
        where, line = _template_location(exc, template)
        raise InvalidInput(f"{where}{':' + str(line) if line else ''}: job template error: {exc}") from None


def _bytecode_cache(cache_dir: Path | None) -> Any:
    """A Jinja2 bytecode cache in ``cache_dir``, or None when there is none or it cannot be
    made (rendering then compiles the templates, as without a cache)."""
    if cache_dir is None:
        return None
    import jinja2

    class TemplateCache(jinja2.FileSystemBytecodeCache):
        """Only ever an optimisation: an entry that cannot be read or written (a full disk,
        a directory made read-only, a damaged file) means compiling, never a failed submit."""

        def load_bytecode(self, bucket: Any) -> None:
            import pickle  # already loaded by jinja2's cache: its checksums are pickled

            try:
                super().load_bytecode(bucket)
            except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError):
                bucket.reset()

        def dump_bytecode(self, bucket: Any) -> None:
            with contextlib.suppress(OSError):
                super().dump_bytecode(bucket)

    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return TemplateCache(str(cache_dir))


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
