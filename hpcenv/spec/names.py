"""Environment names as a type: parsed once where a name enters (a command line, a spec's
``name:``, a library call) and carried as :class:`EnvName`, so the layers below never check a
name again.  Names become directory names on shared filesystems (registry, envs dir)."""

from __future__ import annotations

from hpcenv.errors import InvalidInput
from hpcenv.spec.environment import validate_env_name


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
