"""The shared store on the cluster filesystem: where builds live (:mod:`.layout`), the locks that
order builders (:mod:`.locking`), the lab registry (:mod:`.registry`), an env's life after its
build (:mod:`.lifecycle`), who may change it (:mod:`.ownership`), crashed builders' leftovers
(:mod:`.debris`), garbage collection (:mod:`.gc`), Lmod modulefiles (:mod:`.modules`) and
activation of a stored prefix (:mod:`.activation`).

:func:`store_for` builds, from a site config, the :class:`~hpcenv.store.layout.Store` these
modules take instead of the whole config.

Importing a module of the package runs this file first, so it imports nothing itself:
``hpcenv run`` reads :mod:`.activation` alone, and the layout, the locks and the registry are
loaded by what uses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcenv.site.config import SiteConfig
    from hpcenv.store.layout import Store

__all__ = ["store_for"]


def store_for(site: SiteConfig) -> Store:
    """The store ``site`` describes: its first envs and pkgs dirs, registry, lock policy,
    permissions and module tree."""
    from hpcenv.store.layout import LockPolicy, Store

    return Store(envs_dirs=tuple(site.envs_dirs), pkgs_dir=site.pkgs_dirs[0],
                 registry_root=site.registry,
                 locks=LockPolicy(method=site.locks.method, timeout=site.locks.timeout,
                                  stale_after=site.locks.stale_after,
                                  heartbeat=site.locks.heartbeat),
                 group=site.permissions.group, dir_mode=site.permissions.dir_mode,
                 admins=tuple(site.permissions.admins), modules_dir=site.modules_dir,
                 modules_on_publish=site.modules_on_publish, packs_dir=site.packs_dir,
                 source=str(site.source) if site.source else "the embedded site config")
