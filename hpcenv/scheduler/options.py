"""Slurm option values: the one copy of their grammar, for every module that reads or writes them.

``hpcenv submit`` renders these into ``#SBATCH`` lines (:mod:`hpcenv.jobs.templates`), the site config
sets defaults for them (:mod:`hpcenv.site.config`, which reports problems at file:line), the local
executor reads ``--time`` back out of a script, and the Slurm backend reads durations Slurm
prints.  A value one of them accepts and another refuses would pass ``site check`` and then fail
every submission, so all of them call the functions below.

The ``*_problem`` functions return None for a good value, else what was expected and how to
write it, phrased to follow the value, which each caller names in its own way (``--time '1h':
...`` or ``site.yaml:12: slurm.time: '1h' is not a valid sbatch value: ...``).

Standard library only: :mod:`hpcenv.site.config` imports this module.
"""

from __future__ import annotations

import re
import signal as _signal

from hpcenv.errors import InvalidInput

# Characters that can reach an #SBATCH value.  sbatch splits these lines on whitespace and
# handles quotes and backslashes itself; none of those (nor $, `, ;, #) appear in any legitimate
# value, so refusing them removes every way to smuggle in a second option.
SAFE_CHARS = r"[A-Za-z0-9_.,:=+@%/|&!()\[\]*~^-]"
TOKEN = re.compile(f"^{SAFE_CHARS}+$")
# Account, QOS, GPU type and partition names.
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# sbatch --time: MINUTES, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS, or no limit.
TIME = re.compile(r"^(?:\d+(?::\d{1,2}){0,2}|\d+-\d{1,2}(?::\d{1,2}){0,2}|UNLIMITED|INFINITE)$",
                  re.IGNORECASE)
# sbatch --mem: a number of megabytes, or with a K/M/G/T unit.
MEM = re.compile(r"^\d+(?:[KMGT]B?)?$", re.IGNORECASE)
_EXTRA_ARG = re.compile(f"^-{SAFE_CHARS}+$")

# sbatch options an extra argument must not carry, with what to do instead.  Placement is
# routing's decision (checked against the env's CUDA and recorded); an extra --partition or
# --gres would run a job where its CUDA cannot, under a record that says otherwise.  The others
# change sbatch's own behaviour, which hpcenv relies on (it reads the job id, it waits itself).
_PLACEMENT = "placement is decided by routing against the env's CUDA"
REFUSED_EXTRA: dict[str, str] = {
    "--partition": f"{_PLACEMENT}; use --partition P (checked against the env's CUDA)",
    "--gres": f"{_PLACEMENT}; use --gpus N and --gpu-type T",
    "--gpus": f"{_PLACEMENT}; use --gpus N",
    "--gpus-per-node": f"{_PLACEMENT}; use hpcenv's --gpus-per-node",
    "--gpus-per-task": f"{_PLACEMENT}; use --gpus N",
    "--gpus-per-socket": f"{_PLACEMENT}; use --gpus N",
    "--constraint": f"{_PLACEMENT}; use --gpu-type T or --partition P",
    "--cluster-constraint": f"{_PLACEMENT}; use --partition P",
    "--nodelist": f"{_PLACEMENT}; use --partition P or --gpu-type T",
    "--exclude": f"{_PLACEMENT}; use --partition P or --gpu-type T",
    "--wrap": "it would replace the job script hpcenv writes; remove it",
    "--wait": "sbatch would block; use hpcenv's --wait",
    "--parsable": "hpcenv reads the job id itself; remove it",
    "--test-only": "nothing would be submitted; use hpcenv's --dry-run",
}
# sbatch's one-letter spellings of the same options.
_REFUSED_SHORT = {"-p": "--partition", "-G": "--gpus", "-C": "--constraint", "-w": "--nodelist",
                  "-x": "--exclude", "-W": "--wait"}

TIME_HELP = "use MINUTES, HH:MM:SS or D-HH:MM:SS (e.g. 30, 2:00:00, 1-00:00)"
MEM_HELP = "use a size like 16G or 4000M"
EXTRA_ARG_HELP = ("expected one sbatch option starting with '-', without spaces or shell "
                  "characters (e.g. --exclusive or --mail-type=END)")


def control_problem(value: str) -> str | None:
    """Control characters would end the ``#SBATCH`` line early or hide in it."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "control characters (newline, tab, ...) are not allowed in Slurm options"
    return None


def _problem(value: str, pattern: re.Pattern[str], expected: str) -> str | None:
    return control_problem(value) or (None if pattern.match(value) else expected)


def time_problem(value: str) -> str | None:
    """Why ``value`` is not an sbatch ``--time``; None if it is."""
    return _problem(value, TIME, f"expected a Slurm time limit; {TIME_HELP}")


def mem_problem(value: str) -> str | None:
    """Why ``value`` is not an sbatch ``--mem``; None if it is."""
    return _problem(value, MEM, f"expected a memory size; {MEM_HELP}")


def name_problem(value: str, what: str) -> str | None:
    """Why ``value`` is not a Slurm account/QOS/partition name (``what`` says which)."""
    return _problem(value, NAME, f"expected {what}: letters, digits, '.', '_' and '-'")


def extra_arg_problem(arg: str) -> str | None:
    """Why ``arg`` cannot be an extra sbatch option (``--sbatch-arg``, ``slurm.extra_args``):
    one ``-option[=value]`` word that sbatch reads as exactly one option, and none of
    :data:`REFUSED_EXTRA` in any spelling sbatch accepts (``-pgpu``, ``--part=gpu``: sbatch
    takes any unambiguous prefix of a long option)."""
    problem = _problem(arg, _EXTRA_ARG, EXTRA_ARG_HELP)
    if problem is not None:
        return problem
    refused = _refused_option(arg)
    if refused is not None:
        return f"{refused} is not allowed here: {REFUSED_EXTRA[refused]}"
    return None


def _refused_option(arg: str) -> str | None:
    if not arg.startswith("--"):
        return _REFUSED_SHORT.get(arg[:2])
    name = arg.split("=", 1)[0]
    if len(name) < 4:
        return None
    return next((option for option in REFUSED_EXTRA if option.startswith(name)), None)


def parse_time_limit(text: str) -> float | None:
    """An sbatch ``--time`` (see :data:`TIME`) in seconds; None for no limit.

    A lone number is minutes and two fields are MM:SS, as sbatch reads them; after ``D-`` the
    fields are hours, minutes, seconds.  This also reads the durations Slurm prints (Elapsed,
    RunTime: ``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``).  InvalidInput for anything else.
    """
    text = text.strip()
    problem = time_problem(text)
    if problem is not None:
        raise InvalidInput(f"time {text!r}: {problem}")
    if text.upper() in {"UNLIMITED", "INFINITE"}:
        return None
    days, dash, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if dash:
        h, m, s = (parts + [0, 0])[:3]
        return float(int(days) * 86400 + h * 3600 + m * 60 + s)
    if len(parts) == 1:
        return parts[0] * 60.0
    if len(parts) == 2:
        return parts[0] * 60.0 + parts[1]
    h, m, s = parts
    return float(h * 3600 + m * 60 + s)


# The signal names sbatch --signal and scancel --signal know (Slurm's sig_name2num table, checked
# against sbatch 22.05); anything else they refuse only after the env was built.  Numbers of real
# signals are accepted by both.
SLURM_SIGNAL_NAMES = ("HUP", "INT", "QUIT", "ABRT", "KILL", "ALRM", "TERM", "USR1", "USR2", "URG",
                      "CONT", "STOP", "TSTP", "TTIN", "TTOU", "XCPU")


def signal_number(sig: str | int) -> int:
    """``"TERM"``, ``"SIGTERM"``, ``"term"``, ``15`` -> 15; InvalidInput for anything else,
    including names Slurm does not know (PIPE, WINCH, ...: give their number instead).  The one
    validator of ``cancel --signal`` and ``submit --signal``."""
    hint = f"use one of {', '.join(SLURM_SIGNAL_NAMES)} or a signal number"
    if isinstance(sig, int) or (isinstance(sig, str) and sig.isdigit()):
        number = int(sig)
        try:
            _signal.Signals(number)
        except ValueError:
            raise InvalidInput(f"unknown signal number {number}; {hint}") from None
        return number
    name = sig.upper().removeprefix("SIG")
    if name not in SLURM_SIGNAL_NAMES:
        raise InvalidInput(f"unknown signal {sig!r}; {hint}")
    return int(_signal.Signals[f"SIG{name}"])


def signal_name(sig: str | int) -> str:
    """What Slurm and kill(1) accept: ``15`` or ``"SIGTERM"`` -> ``"TERM"``; a signal Slurm has
    no name for stays a number (``13`` -> ``"13"``)."""
    number = signal_number(sig)
    name = _signal.Signals(number).name.removeprefix("SIG")
    return name if name in SLURM_SIGNAL_NAMES else str(number)


# sbatch --signal: [R|B|RB:]SIG[@SECONDS]; SECONDS is at most 65535 (a 16-bit field in Slurm).
_SIGNAL_SPEC = re.compile(r"^(?:([RB]{1,2}):)?([^@:]+)(?:@(\d+))?$", re.IGNORECASE)
SIGNAL_HELP = "use SIG[@SECONDS], e.g. USR1@120 or TERM@60"
MAX_SIGNAL_SECONDS = 65535


def signal_spec_problem(value: str) -> str | None:
    """Why ``value`` is not an sbatch ``--signal``; None if it is.  The signal itself is checked
    by :func:`signal_number`, the validator ``cancel --signal`` uses."""

    if (problem := control_problem(value)) is not None:
        return problem
    match = _SIGNAL_SPEC.match(value)
    if match is None:
        return f"expected a signal; {SIGNAL_HELP}"
    flags, sig, seconds = match.groups()
    if flags and len(set(flags.upper())) != len(flags):
        return f"expected a signal; {SIGNAL_HELP}"
    try:
        signal_number(sig)
    except InvalidInput as exc:
        return str(exc)
    if seconds is not None and int(seconds) > MAX_SIGNAL_SECONDS:
        return f"at most {MAX_SIGNAL_SECONDS} seconds before the time limit; {SIGNAL_HELP}"
    return None
