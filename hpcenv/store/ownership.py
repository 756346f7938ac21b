"""Who may change which env others use.

A lab shares envs: everyone in the group may build and run them, but changing what a name
means for everyone (which version is current, removing versions) belongs to the env's owner
(the user who built its first version) and to the site's admins (``permissions.admins``: user
names and ``@group`` names).  A user may also remove a version of their own that is not
current.  root may do everything, as it may on the filesystem anyway.

Ownership is read from the registry records (``creator: user@host``), which are written with
the lab's group and mode; it is a rule between lab members who can already write the shared
dirs, not a security boundary against them (the filesystem is that).
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hpcenv.errors import HpcenvError
from hpcenv.fsutil import current_user


class NotPermitted(HpcenvError):
    """The user may not make this change to an env others use."""


def user_of(creator: str) -> str:
    """The user part of a record's ``creator`` (``alice@login1`` -> ``alice``)."""
    return creator.rpartition("@")[0] or creator


class _Version(Protocol):
    """A record or its index entry: what ownership reads of one."""

    @property
    def version(self) -> int: ...

    @property
    def creator(self) -> str: ...


def env_owner(records: Sequence[_Version]) -> str | None:
    """The user who built the env's first version (None for an env without records; records or
    their index entries)."""
    return user_of(min(records, key=lambda r: r.version).creator) if records else None


@dataclass(frozen=True)
class Actor:
    """The user making a change, and the site's admins (users and ``@group`` names)."""

    user: str
    admins: tuple[str, ...] = ()

    @classmethod
    def current(cls, admins: Sequence[str]) -> Actor:
        return cls(current_user(), tuple(admins))

    @property
    def is_admin(self) -> bool:
        if self.user == "root" or self.user in self.admins:
            return True
        groups = [a[1:] for a in self.admins if a.startswith("@")]
        return bool(groups) and any(group in _groups_of(self.user) for group in groups)

    def may_change(self, owner: str | None) -> bool:
        return owner is None or self.user == owner or self.is_admin

    def check(self, owner: str | None, name: str, what: str) -> None:
        """NotPermitted unless this user owns the env ``name`` or is an admin."""
        if not self.may_change(owner):
            raise NotPermitted(f"{name} belongs to {owner} (who built its first version): only "
                               f"{owner} or the site's admins ({self._admins_text()}) may {what}; "
                               f"ask them, or build your own env under another name")

    def _admins_text(self) -> str:
        return ("permissions.admins: " + ", ".join(self.admins) if self.admins
                else "none set in permissions.admins")


def _groups_of(user: str) -> set[str]:
    """The groups ``user`` belongs to: supplementary ones, and the primary group."""
    names = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
    try:
        primary = pwd.getpwnam(user).pw_gid
        names.add(grp.getgrgid(primary).gr_name)
    except KeyError:
        pass
    if user == current_user():
        for gid in os.getgroups():
            try:
                names.add(grp.getgrgid(gid).gr_name)
            except KeyError:
                continue
    return names
