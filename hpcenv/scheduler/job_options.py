"""A job's Slurm options, declared once: the table behind ``submit``'s options, the ``#SBATCH``
lines, the pyslurm submission and the submission record.

Each field of :class:`JobOptions` carries an :class:`Option` in its metadata: the sbatch flag
(and its short form), the ``hpcenv submit`` flags, help text and a renderer that validates the
value and writes it the way sbatch reads it.  Everything else is derived from the table:

* :func:`add_arguments` turns it into argparse options (``hpcenv.cli.job_cmd``);
* :func:`sbatch_lines` into validated ``--flag=value`` words for ``#SBATCH`` lines, in field order
  (as submitit's ``_as_sbatch_flag`` table does);
* :func:`from_script` reads ``#SBATCH`` lines back into options, for backends handed a script
  hpcenv did not render (the local executor and pyslurm, which cannot pass a header on);
* :meth:`JobOptions.to_dict` is what a submission record keeps.

The values' grammar lives in :mod:`hpcenv.scheduler.options`, shared with the site config.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any

from hpcenv.errors import InvalidInput
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

_NODES = re.compile(r"^\d+(?:-\d+)?$")
_ARRAY = re.compile(r"^[0-9][0-9,\-:]*(?:%\d+)?$")
_DEPENDENCY = re.compile(r"^[A-Za-z_]+(?::[0-9_+:*]+)?(?:[,?][A-Za-z_]+(?::[0-9_+:*]+)?)*$")
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.+@:,-]{1,128}$")
_PARTITIONS = re.compile(r"^[A-Za-z0-9_.-]+(?:,[A-Za-z0-9_.-]+)*$")
_MAIL_TYPES = ("NONE", "BEGIN", "END", "FAIL", "REQUEUE", "ALL", "INVALID_DEPEND", "STAGE_OUT",
               "TIME_LIMIT", "TIME_LIMIT_90", "TIME_LIMIT_80", "TIME_LIMIT_50", "ARRAY_TASKS")
_MAIL_USER = re.compile(r"^[A-Za-z0-9_.+-]+(?:@[A-Za-z0-9.-]+)?$")
_COMMENT = re.compile(r"^[A-Za-z0-9_.,:=+@%/-]{1,250}$")

# How a value is written: (flag, value) -> text after "--flag=", or raises InvalidInput.
Render = Callable[[str, Any, "JobOptions"], str | None]


@dataclass(frozen=True)
class Option:
    """One row of the table (a field's metadata)."""

    sbatch: str | None                  # "--partition"; None: hpcenv's own (not an sbatch flag)
    short: str | None = None            # sbatch's and submit's short form, "-p"
    cli: bool = True                    # an ``hpcenv submit`` option
    help: str = ""
    metavar: str | None = None
    render: Render | None = None        # None: rendered by another field (gpu_type)
    group: str = "resources"


def _opt(sbatch: str | None, default: Any = None, **kw: Any) -> Any:
    return field(default=default, metadata={"option": Option(sbatch, **kw)})


def _ok(flag: str, value: str, problem: str | None) -> str:
    if problem is not None:
        raise InvalidInput(f"{flag} {value!r}: {problem}")
    return value


COMMENT_RULE = "use letters, digits and _.,:=+@%/- (no spaces), at most 250"


def comment_problem(text: str) -> str | None:
    """Why ``text`` cannot be a job's ``--comment``, or None."""
    return control_problem(text) or (None if _COMMENT.match(text) else COMMENT_RULE)


def _match(pattern: re.Pattern[str], expected: str) -> Render:
    def render(flag: str, value: Any, _o: JobOptions) -> str:
        text = str(value)
        return _ok(flag, text, control_problem(text) or (None if pattern.match(text) else expected))
    return render


def _positive(flag: str, value: Any, _o: JobOptions | None = None) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{flag} {value!r}: must be a whole number of at least 1")
    return str(value)


def _flag(_flag: str, value: Any, _o: JobOptions) -> str | None:
    return "" if value else None        # a bare --flag


def nodes_problem(value: str) -> str | None:
    """``N`` or ``MIN-MAX``, each at least 1 (Slurm reads ``--nodes=0`` as "no nodes")."""
    if control_problem(value) is not None or not _NODES.match(value):
        return "use N or MIN-MAX, e.g. 2 or 2-4"
    low, _, high = value.partition("-")
    if int(low) < 1 or (high and int(high) < int(low)):
        return "a job needs at least 1 node: use N or MIN-MAX with 1 <= MIN <= MAX"
    return None


def _nodes(flag: str, value: Any, _o: JobOptions) -> str:
    return _ok(flag, str(value), nodes_problem(str(value)))


def check_job_name(name: str) -> str:
    """A job name Slurm keeps intact.  Spaces are refused rather than replaced: the job would
    be listed under a name the user never typed, and a space garbles the job's record in the
    job completion log (``sacct -c``), so its status is lost once it leaves the queue."""
    safe = re.sub(r"[^A-Za-z0-9_.+@:,-]", "_", name)[:128]
    hint = f"; e.g. --job-name {safe}" if safe.strip("_") else ""
    why = ("spaces are not allowed (Slurm's job completion log cannot record them)" if " " in name
           else "use letters, digits and ._+@:,- (at most 128)")
    return _ok("--job-name", name, control_problem(name) or
               (None if _JOB_NAME.match(name) else why + hint))


def _gpus(flag: str, value: Any, o: JobOptions) -> str | None:
    """``--gpus``/``--gpus-per-node``: ``[type:]N``; 0 requests none (and writes nothing)."""
    if value == 0:
        return None
    count = _positive(flag, value)
    if o.gpu_type:
        _ok("--gpu-type", o.gpu_type, None if NAME.match(o.gpu_type) else
            "use the GPU type name from the site config")
        return f"{o.gpu_type}:{count}"
    return count


def _path(flag: str, value: Any, _o: JobOptions) -> str:
    return _ok(flag, str(value), control_problem(str(value)) or (
        None if TOKEN.match(str(value)) else "paths in Slurm options may not contain spaces, "
        "quotes, '$', '`', ';', '#' or backslashes; pick a simpler path"))


def sbatch_signal(value: str) -> str:
    """``USR1@120`` -> ``B:USR1@120``: Slurm only signals the batch shell (which is, or forwards
    to, hpcenv's program) when asked with ``B:``; without it, only job steps get the signal."""
    _ok("--signal", value, signal_spec_problem(value))
    return value if ":" in value else f"B:{value}"


def _signal(_flag: str, value: Any, _o: JobOptions) -> str:
    return sbatch_signal(str(value))


def _mail_type(flag: str, value: Any, _o: JobOptions) -> str:
    words = str(value).upper().split(",")
    bad = [w for w in words if w not in _MAIL_TYPES]
    _ok(flag, str(value), f"unknown mail type {bad[0]!r}; use e.g. END,FAIL (any of "
        f"{', '.join(_MAIL_TYPES)})" if bad else None)
    return ",".join(words)


def _named(what: str) -> Render:
    def render(flag: str, value: Any, _o: JobOptions) -> str:
        return _ok(flag, str(value), name_problem(str(value), what))
    return render


def _open_mode(flag: str, value: Any, _o: JobOptions) -> str:
    return _ok(flag, str(value), None if value in ("append", "truncate") else "use append or truncate")


@dataclass(frozen=True)
class JobOptions:
    """The Slurm options of one job; None (or False, or ()) means "not asked for".

    ``gpus`` is what sbatch's ``--gpus`` means, GPUs for the whole job; ``gpus_per_node`` is per
    node.  ``gpu_type`` types either.  ``open_mode`` is ``append`` so that a requeued job keeps
    the output of its earlier runs.
    """

    job_name: str | None = _opt("--job-name", short="-J", metavar="NAME", group="job",
                                help="default: the script's name",
                                render=lambda f, v, o: check_job_name(str(v)))
    partition: str | None = _opt("--partition", short="-p", metavar="P|auto",
                                 help="partition (default auto: chosen by the env's CUDA)",
                                 render=_match(_PARTITIONS, "not a partition name"))
    constraint: str | None = _opt("--constraint", short="-C", metavar="EXPR",
                                  help="node features, e.g. 'ib&skylake' (ANDed with what "
                                       "routing by CUDA needs)",
                                  render=_match(TOKEN, "not a Slurm feature expression"))
    nodes: str | None = _opt("--nodes", short="-N", metavar="N[-MAX]", render=_nodes,
                             help="nodes; with several tasks the program runs under srun")
    ntasks: int | None = _opt("--ntasks", short="-n", metavar="N", render=_positive,
                              help="tasks (ranks) in all; more than one runs the program under "
                                   "srun, once per task")
    ntasks_per_node: int | None = _opt("--ntasks-per-node", metavar="N", render=_positive,
                                       help="tasks per node (runs the program under srun)")
    cpus_per_task: int | None = _opt("--cpus-per-task", short="-c", metavar="N", render=_positive)
    gpus: int | None = _opt("--gpus", short="-G", metavar="N", render=_gpus,
                            help="GPUs for the whole job, as sbatch (default: 1 per node for a "
                                 "CUDA env; 0 runs a CUDA env on a CPU partition)")
    gpus_per_node: int | None = _opt("--gpus-per-node", metavar="N", render=_gpus,
                                     help="GPUs on every node of the job")
    gpu_type: str | None = _opt(None, metavar="TYPE", render=None,
                                help="GPU type, e.g. a100 (restricts partitions)")
    cpus_per_gpu: int | None = _opt("--cpus-per-gpu", metavar="N", render=_positive)
    mem: str | None = _opt("--mem", metavar="SIZE", help="memory per node, e.g. 16G",
                           render=lambda f, v, o: _ok(f, str(v), mem_problem(str(v))))
    time: str | None = _opt("--time", short="-t", metavar="TIME",
                            help="time limit: MIN, HH:MM:SS, D-HH:MM:SS",
                            render=lambda f, v, o: _ok(f, str(v), time_problem(str(v))))
    exclusive: bool = _opt("--exclusive", False, render=_flag,
                           help="whole nodes, shared with no other job")
    account: str | None = _opt("--account", short="-A", metavar="ACCOUNT", render=_named("an account name"))
    qos: str | None = _opt("--qos", metavar="QOS", render=_named("a QOS name"))
    array: str | None = _opt("--array", short="-a", metavar="SPEC", group="job",
                             help="job array, e.g. 0-9 or 0-99%%10",
                             render=_match(_ARRAY, "use e.g. 0-9, 1,3,5 or 0-99%10"))
    dependency: str | None = _opt("--dependency", short="-d", metavar="SPEC", group="job",
                                  help="e.g. afterok:1234",
                                  render=_match(_DEPENDENCY, "use e.g. afterok:123 or afterany:1:2"))
    chdir: str | None = _opt("--chdir", short="-D", cli=False, render=_path)
    output: str | None = _opt("--output", short="-o", metavar="PATTERN", group="job", render=_path,
                              help="stdout file (default slurm-%%j.out in the working directory)")
    error: str | None = _opt("--error", short="-e", metavar="PATTERN", group="job", render=_path,
                             help="stderr file (default: with stdout)")
    open_mode: str = _opt("--open-mode", "append", cli=False, render=_open_mode)
    requeue: bool = _opt("--requeue", False, render=_flag, group="job",
                         help="requeue the job when its node fails or it is preempted (the log "
                              "keeps every run)")
    signal: str | None = _opt("--signal", metavar="SIG[@SECS]", group="job", render=_signal,
                              help="send SIG to the program SECS before the time limit (e.g. "
                                   "USR1@120), delivered through the batch shell")
    mail_type: str | None = _opt("--mail-type", metavar="TYPES", group="job", render=_mail_type,
                                 help="e.g. END,FAIL")
    mail_user: str | None = _opt("--mail-user", metavar="ADDRESS", group="job",
                                 render=_match(_MAIL_USER, "expected a user name or an e-mail address"))
    comment: str | None = _opt("--comment", metavar="TEXT", group="job",
                               render=_match(_COMMENT, COMMENT_RULE))
    extra_args: tuple[str, ...] = _opt(None, (), render=None, metavar="ARG",
                                       help="another sbatch option, repeatable "
                                            "(e.g. --sbatch-arg=--reservation=maint)")

    @property
    def tasks(self) -> int:
        """How many tasks the job runs (sbatch's arithmetic for the options given)."""
        if self.ntasks is not None:
            return self.ntasks
        if self.ntasks_per_node is not None:
            return self.ntasks_per_node * min_nodes(self.nodes)
        return 1

    @property
    def gpus_per_node_wanted(self) -> int | None:
        """GPUs each node needs (what routing compares with a partition's nodes)."""
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        if self.gpus is not None:
            nodes = min_nodes(self.nodes)
            return -(-self.gpus // nodes)
        return None

    def to_dict(self) -> dict[str, Any]:
        """The options that were set, by field name (for the submission record)."""
        out: dict[str, Any] = {}
        for f in job_fields():
            value = getattr(self, f.name)
            if value not in (None, False, ()) and value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def min_nodes(nodes: str | None) -> int:
    return int(str(nodes).partition("-")[0]) if nodes else 1


def job_fields() -> Iterator[Any]:
    """The fields of :class:`JobOptions` (subclasses add non-Slurm fields after them)."""
    for f in fields(JobOptions):
        yield f


def option_of(f: Any) -> Option:
    return f.metadata["option"]


def sbatch_lines(opts: JobOptions) -> list[str]:
    """Validated ``--flag[=value]`` words for the ``#SBATCH`` header, in table order."""
    lines: list[str] = []
    for f in job_fields():
        spec = option_of(f)
        value = getattr(opts, f.name)
        if spec.sbatch is None or spec.render is None or value is None:
            continue
        text = spec.render(spec.sbatch, value, opts)
        if text is None:
            continue
        lines.append(f"{spec.sbatch}={text}" if text else spec.sbatch)
    for arg in opts.extra_args:
        lines.append(extra_arg(arg))
    return lines


def extra_arg(arg: str) -> str:
    """Validate one ``--sbatch-arg`` value (``--reservation=x``, ``--hint=nomultithread``)."""
    return _ok("--sbatch-arg", arg, extra_arg_problem(arg))


def _cli_type(f: Any) -> Callable[[str], Any]:
    return int if str(f.type).startswith("int") else str


def add_arguments(parser: argparse.ArgumentParser,
                  titles: dict[str, str] | None = None) -> None:
    """The table's CLI options on ``parser`` (dest = field name), in argument groups by
    ``Option.group``.  Defaults are None/False/(), so "not given" can be told apart."""
    titles = titles or {}
    groups: dict[str, Any] = {}
    for f in job_fields():
        spec = option_of(f)
        if not spec.cli:
            continue
        group = groups.get(spec.group)
        if group is None:
            group = groups[spec.group] = parser.add_argument_group(titles.get(spec.group, spec.group))
        long = spec.sbatch or "--" + f.name.replace("_", "-")
        names = [long, *([spec.short] if spec.short else [])]
        if f.name == "extra_args":
            group.add_argument("--sbatch-arg", dest=f.name, action="append", default=[],
                               metavar=spec.metavar, help=spec.help)
        elif str(f.type).startswith("bool"):
            group.add_argument(*names, dest=f.name, action="store_true", default=False,
                               help=spec.help)
        else:
            group.add_argument(*names, dest=f.name, type=_cli_type(f), default=None,
                               metavar=spec.metavar, help=spec.help or None)


def from_namespace(ns: argparse.Namespace) -> dict[str, Any]:
    """The table's values out of parsed arguments, as keyword arguments for JobOptions."""
    out: dict[str, Any] = {}
    for f in job_fields():
        if option_of(f).cli and hasattr(ns, f.name):
            value = getattr(ns, f.name)
            out[f.name] = tuple(value) if f.name == "extra_args" else value
    return out


def _flag_table() -> dict[str, Any]:
    table: dict[str, Any] = {}
    for f in job_fields():
        spec = option_of(f)
        if spec.sbatch:
            table[spec.sbatch] = f
        if spec.short:
            table[spec.short] = f
    return table


def header_words(script: str) -> list[str]:
    """The words of a script's ``#SBATCH`` lines.  Like sbatch, reading stops at the first
    line that is neither blank nor a comment."""
    words: list[str] = []
    for line in script.splitlines()[1 if script.startswith("#!") else 0:]:
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            try:
                words += shlex.split(stripped[len("#SBATCH"):], comments=True)
            except ValueError:
                continue
    return words


def from_script(script: str) -> JobOptions:
    """The ``#SBATCH`` options of a job script as JobOptions; options the table does not know
    stay in ``extra_args`` (a backend that cannot pass them on refuses them)."""
    table = _flag_table()
    values: dict[str, Any] = {}
    extra: list[str] = []
    words = header_words(script)
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            flag, eq, value = word.partition("=")
        else:
            flag, eq, value = word[:2], "", word[2:]
            eq = "=" if value else ""
        f = table.get(flag)
        if f is None:
            extra.append(word)
            i += 1
            continue
        is_bool = str(f.type).startswith("bool")
        if not eq and not is_bool and i + 1 < len(words):
            value, i = words[i + 1], i + 1
        if is_bool:
            values[f.name] = True
        elif f.name in ("gpus", "gpus_per_node"):
            gpu_type, _, count = value.rpartition(":")
            values["gpu_type"] = gpu_type.removeprefix("gpu:") or values.get("gpu_type")
            values[f.name] = _int(flag, count)
        elif str(f.type).startswith("int"):
            values[f.name] = _int(flag, value)
        else:
            values[f.name] = value
        i += 1
    return JobOptions(**values, extra_args=tuple(extra))


def _int(flag: str, text: str) -> int:
    if not text.isdigit():
        raise InvalidInput(f"#SBATCH {flag} {text!r} is not a number")
    return int(text)
