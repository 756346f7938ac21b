"""Environment names as a type: parsed once where a name enters (a command line, a spec's
``name:``, a library call) and carried as :class:`EnvName`, so the layers below never check a
name again.  Names become directory names on shared filesystems (registry, envs dir)."""

from __future__ import annotations

import re

from hpcenv.errors import InvalidInput, shown_value

# The rule lives here, not with the spec parser: every command that names an env checks it,
# and most of them (status, env show, submit of a built env) never parse a spec.
_ENV_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME_RULE = ("use 1-64 characters from letters, digits, '.', '_' and '-', starting with a "
                  "letter or digit, with no '/' and no '..' (e.g. 'cv-resnet50-exp1')")


def env_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as an environment name, or None."""
    if ".." in name or not _ENV_NAME_RE.fullmatch(name):
        return f"invalid environment name {shown_value(name)}: {_ENV_NAME_RULE}"
    return None


def validate_env_name(name: str) -> str:
    """Return ``name`` if it is a valid environment name, else raise InvalidInput.

    Names become directory names on shared filesystems, so no path separators, no ``..`` and
    no leading punctuation: ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``.
    """
    problem = env_name_problem(name)
    if problem is not None:
        raise InvalidInput(problem)
    return name


class EnvName(str):
    """A name that follows the env-name rules (``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$``, no ``..``)."""

    __slots__ = ()

    @classmethod
    def parse(cls, text: str) -> EnvName:
        """``text`` as an EnvName; InvalidInput naming the rule otherwise."""
        return cls(validate_env_name(text))

    @classmethod
    def of(cls, value: str) -> EnvName:
        """``value`` itself when it is already an EnvName, else parsed: library entry points
        take plain strings from Python callers, and a name must never reach a path unchecked."""
        return value if isinstance(value, EnvName) else cls.parse(value)

    @staticmethod
    def is_valid(text: str) -> bool:
        try:
            validate_env_name(text)
        except InvalidInput:
            return False
        return True
