"""Environment activation without conda: the variables an activated prefix gets, and ``exec``.

What ``conda activate PREFIX`` does for bash, reproduced:

* ``PATH``: ``PREFIX/bin`` first, then the caller's ``PATH`` with the previously active env's
  ``bin`` removed (conda's non-stacked activation replaces the old env, it does not stack).
* ``CONDA_PREFIX``, ``CONDA_DEFAULT_ENV``, ``CONDA_PROMPT_MODIFIER``, ``CONDA_SHLVL`` (and
  ``CONDA_PREFIX_<n>`` for the env being replaced, so ``conda deactivate`` inside still works).
* The env's own variables from ``conda-meta/state`` (``{"env_vars": {...}}``, what
  ``conda env config vars set`` and the ``variables:`` section of environment.yml write).
* Then ``etc/conda/activate.d/*.sh`` are sourced, in sorted order, by bash.

Why not ``rattler.shell.activate``: it only returns script text (no dict form), so bash has to
run anyway to learn what the activate.d scripts export, and importing rattler costs ~110 ms on
every ``hpcenv run``.  Computing the fixed part here is a few dict operations; bash is spawned
only when the env has activate.d scripts.  ``activation_script`` emits the same steps as bash
text for job scripts on nodes without conda; the tests check both give the same environment.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from hpcenv.errors import HpcenvError, InvalidInput, NotFound, shown_value

# Variables bash itself sets or changes while it sources the scripts; they are not part of the
# activation and must keep the caller's values.
_BASH_ARTIFACTS = ("_", "SHLVL", "PWD", "OLDPWD")
# What a shell accepts after ``export``; anything else in a name could inject commands into
# the activation text of a job script.
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CommandNotFound(HpcenvError):
    """CMD is not on the activated env's PATH: exit 127, as ``env``, ``timeout`` and shells do."""

    exit_code = 127


class CommandNotExecutable(HpcenvError):
    """CMD exists but cannot be executed: exit 126, the shell convention."""

    exit_code = 126


def activate_scripts(prefix: Path) -> list[Path]:
    """The env's ``etc/conda/activate.d/*.sh`` scripts in the order conda sources them."""
    directory = Path(prefix) / "etc" / "conda" / "activate.d"
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == ".sh" and p.is_file())


def env_state_vars(prefix: Path) -> dict[str, str]:
    """Variables the env defines in ``conda-meta/state`` (empty if none).

    Names must be shell variable names (``[A-Za-z_][A-Za-z0-9_]*``) and values free of NUL
    bytes: the file may have been edited by hand, and its names end up in job scripts.
    """
    state = Path(prefix) / "conda-meta" / "state"
    try:
        data = json.loads(state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise HpcenvError(f"{state}: unreadable env state ({exc}); fix or delete the file") from exc
    env_vars = data.get("env_vars", {}) if isinstance(data, dict) else {}
    if not isinstance(env_vars, dict):
        raise HpcenvError(f"{state}: 'env_vars' must be a mapping of names to strings")
    out = {}
    for key, value in env_vars.items():
        if not isinstance(key, str) or not _VAR_NAME.fullmatch(key):
            raise HpcenvError(f"{state}: env_vars name {key!r} is not a shell variable name "
                              "(letters, digits and _, not starting with a digit); fix the "
                              "name in the file or rebuild the env")
        text = str(value)
        if "\0" in text:
            raise HpcenvError(f"{state}: env_vars value of {key} holds a NUL byte; fix the file "
                              "or rebuild the env")
        out[key] = text
    return out


def _shlvl(base_env: Mapping[str, str]) -> int:
    try:
        return max(int(base_env.get("CONDA_SHLVL", "0")), 0)
    except ValueError:
        return 0


def _env_name(prefix: Path, name: str | None) -> str:
    return name if name else str(prefix)


def _static_activation(prefix: Path, base_env: Mapping[str, str], name: str | None) -> dict[str, str]:
    """Everything except what activate.d scripts do."""
    env = dict(base_env)
    old_prefix = base_env.get("CONDA_PREFIX", "")
    old_bin = os.path.join(old_prefix, "bin") if old_prefix else None
    kept = [d for d in base_env.get("PATH", "").split(os.pathsep) if d and d != old_bin]
    env["PATH"] = os.pathsep.join([str(prefix / "bin"), *kept])
    shlvl = _shlvl(base_env)
    if old_prefix:
        env[f"CONDA_PREFIX_{shlvl}"] = old_prefix
    env["CONDA_SHLVL"] = str(shlvl + 1)
    env["CONDA_PREFIX"] = str(prefix)
    env["CONDA_DEFAULT_ENV"] = _env_name(prefix, name)
    env["CONDA_PROMPT_MODIFIER"] = f"({_env_name(prefix, name)}) "
    env.update(env_state_vars(prefix))
    return env


def activation_env(prefix: Path, base_env: Mapping[str, str], *, name: str | None = None) -> dict[str, str]:
    """The environment a process started inside activated ``prefix`` sees.

    ``base_env`` is the caller's environment (usually ``os.environ``); ``name`` is what
    ``CONDA_DEFAULT_ENV`` shows (conda uses the env name when activated by name, else the path).
    """
    prefix = Path(prefix)
    if not (prefix / "conda-meta").is_dir():
        raise NotFound(f"{prefix} is not a conda environment (no conda-meta/ directory)")
    env = _static_activation(prefix, base_env, name)
    scripts = activate_scripts(prefix)
    if not scripts:
        return env
    # The scripts' own output goes to stderr, so stdout carries only `env -0`.
    body = "".join(f". {shlex.quote(str(s))}\n" for s in scripts)
    bash = shutil.which("bash", path=env.get("PATH")) or "/bin/bash"
    proc = subprocess.run(
        [bash, "--noprofile", "--norc", "-c", f"{{\n{body}}} 1>&2\nexec env -0"],
        env=env, stdout=subprocess.PIPE, check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        listed = ", ".join(str(s) for s in scripts)
        raise HpcenvError(f"activation scripts of {prefix} failed (exit {proc.returncode}): {listed}; "
                          "run them by hand with bash to see why")
    result: dict[str, str] = {}
    for entry in proc.stdout.split(b"\0"):
        if not entry:
            continue
        key, sep, value = entry.decode("utf-8", "surrogateescape").partition("=")
        if sep:
            result[key] = value
    for key in _BASH_ARTIFACTS:
        result.pop(key, None)
        if key in env:
            result[key] = env[key]
    return result


def activation_script(prefix: Path, *, name: str | None = None,
                      prefix_var: str | None = None) -> str:
    """Bash text that activates ``prefix`` in the current shell, for job scripts without conda.

    The list of activate.d scripts and the ``conda-meta/state`` variables are read now: a build
    prefix is immutable once published, so they cannot change before the job runs.  With
    ``prefix_var`` the text activates the prefix that shell variable holds when it runs (a
    copy of ``prefix`` staged on the node, whose path is only known there).
    """
    prefix = Path(prefix)
    q = shlex.quote
    if prefix_var is not None and not _VAR_NAME.fullmatch(prefix_var):
        raise InvalidInput(f"prefix_var {prefix_var!r}: not a shell variable name")

    def at(rel: str) -> str:
        """The shell word for ``prefix/rel`` (``rel`` empty: the prefix)."""
        if prefix_var is None:
            return q(str(prefix / rel) if rel else str(prefix))
        return f'"${prefix_var}"' + (q(f"/{rel}") if rel else "")

    env_name = _env_name(prefix, name)
    lines = [
        f"# hpcenv: activate {prefix}" if prefix_var is None
        else f"# hpcenv: activate the copy of {prefix} at ${prefix_var}",
        "if [ -n \"${CONDA_PREFIX:-}\" ]; then",
        "    __hpcenv_path=",
        "    while IFS= read -r -d : __hpcenv_dir; do",
        "        if [ -n \"$__hpcenv_dir\" ] && [ \"$__hpcenv_dir\" != \"$CONDA_PREFIX/bin\" ]; then",
        "            __hpcenv_path=\"${__hpcenv_path:+$__hpcenv_path:}$__hpcenv_dir\"",
        "        fi",
        "    done <<< \"${PATH:-}:\"",
        "    PATH=$__hpcenv_path",
        "    unset __hpcenv_path __hpcenv_dir",
        "    export \"CONDA_PREFIX_${CONDA_SHLVL:-0}=$CONDA_PREFIX\"",
        "fi",
        f"export PATH={at('bin')}\"${{PATH:+:$PATH}}\"",
        "export CONDA_SHLVL=$(( ${CONDA_SHLVL:-0} + 1 ))",
        f"export CONDA_PREFIX={at('')}",
        f"export CONDA_DEFAULT_ENV={q(env_name)}",
        f"export CONDA_PROMPT_MODIFIER={q(f'({env_name}) ')}",
    ]
    lines += [f"export {key}={q(value)}" for key, value in env_state_vars(prefix).items()]
    lines += [f". {at(script.relative_to(prefix).as_posix())}" for script in activate_scripts(prefix)]
    return "\n".join(lines) + "\n"


def resolve_command(command: str, env: Mapping[str, str]) -> str:
    """Path of ``command`` as the activated env's PATH finds it (CommandNotFound otherwise)."""
    if os.sep in command:
        path = command
        if not os.path.exists(path):
            raise CommandNotFound(f"{command}: no such file")
    else:
        found = shutil.which(command, mode=os.F_OK, path=env.get("PATH", ""))
        if found is None:
            raise CommandNotFound(f"{command}: command not found on the env's PATH "
                                  f"(looked in {env.get('PATH', '')!r})")
        path = found
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise CommandNotExecutable(f"{path}: not an executable file")
    return path


def exec_in_env(prefix: Path, argv: Sequence[str], *, name: str | None = None,
                base_env: Mapping[str, str] | None = None) -> NoReturn:
    """Replace this process by ``argv`` running inside activated ``prefix``.

    ``os.execve`` keeps the pid: there is no process between the caller and the command, so
    signals reach it directly and its exit status is the caller's.  A command missing from the
    env's PATH raises CommandNotFound (exit 127), not executable CommandNotExecutable (126).
    """
    if not argv:
        raise HpcenvError("no command given; usage: hpcenv run -n NAME -- CMD [ARGS...]")
    env = activation_env(Path(prefix), os.environ if base_env is None else base_env, name=name)
    path = resolve_command(argv[0], env)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(path, list(argv), env)
    except OSError as exc:
        raise CommandNotExecutable(f"{path}: cannot execute ({exc.strerror})") from exc


def find_named_env(envs_dirs: Sequence[Path], name: str) -> Path:
    """The prefix of env ``name``: the first ``envs_dir/name`` holding a conda env, as conda does.

    The published name is a symlink to an immutable build; the resolved build path is returned
    so a process keeps its build even if the name is switched (rollback, rebuild) meanwhile.
    """
    if not name or os.sep in name or name in (".", "..") or "\0" in name:
        raise InvalidInput(f"env name {shown_value(name)}: give a plain name, or -p PREFIX for "
                           "a path")
    if len(name.encode()) > 255:
        # Longer than any file name can be: no envs_dir can hold it (the lookup would fail
        # with ENAMETOOLONG instead of saying so).
        raise NotFound(f"no environment named {shown_value(name)}: longer than any directory "
                       "name can be")
    for envs_dir in envs_dirs:
        candidate = Path(envs_dir) / name
        if (candidate / "conda-meta").is_dir():
            return candidate.resolve()
    searched = ", ".join(str(d) for d in envs_dirs) or "(no envs_dirs configured)"
    raise NotFound(f"no environment named {shown_value(name)} in {searched}; "
                   "see 'hpcenv env list' or build it with 'hpcenv env build FILE'")
