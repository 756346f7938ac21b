"""The engine of a new build, started as soon as the build is known to be new.

A new build waits for its engine child (:mod:`hpcenv.engine.rattler_engine`) before anything
else: the solve is its first request, and the child first pays an interpreter start and
``import rattler`` (~60 ms).  :func:`hpcenv.build.builder.build_env` therefore starts it the
moment it holds the key's lock with no build to reuse, before it imports the new-build steps
(:mod:`hpcenv.build.installer`, ~20 ms) and cleans debris, so that work runs on the other core
while the child starts.  Its own module so that this start imports none of the installer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.engine import get_engine
from hpcenv.engine.rattler_engine import RattlerCall, RattlerEngine
from hpcenv.fsutil import shared_umask

if TYPE_CHECKING:
    from hpcenv.engine.base import Engine
    from hpcenv.site.config import SiteConfig
    from hpcenv.store.layout import Store


def engine_for(site: SiteConfig) -> Engine:
    """The site's engine (``engine:``), with its repodata cache under ``state_dir``."""
    return get_engine(site.engine, conda_exe=site.conda_exe,
                      repodata_cache=Path(site.state_dir) / "rattler-cache")


@dataclass(frozen=True)
class EngineSession:
    """The engine a build solves and installs with, and the call of the rattler child that
    serves it (and writes the lockfiles, whichever engine solves)."""

    engine: Engine
    call: RattlerCall
    rattler: RattlerEngine   # the engine whose child serves ``call``

    def no_more_requests(self) -> None:
        """The build's last engine request is answered: the child exits now, in parallel
        with what the build still does, not when the session ends."""
        self.rattler.no_more_requests()


@contextmanager
def serving_engine(site: SiteConfig, store: Store,
                   engine: Engine | None = None) -> Iterator[EngineSession]:
    """``engine`` (default: the site's) with its rattler child started now and kept for the
    block: one interpreter and one ``import rattler`` for the whole build."""
    engine = engine or engine_for(site)
    rattler = engine if isinstance(engine, RattlerEngine) else RattlerEngine()
    with ExitStack() as stack:
        # A child keeps the umask it starts with, and this one creates the engine's files in
        # the shared cache (entries, its .cache.lock files): the lab's umask, not the builder's.
        with shared_umask(store.dir_mode, store.group):
            call = stack.enter_context(rattler.serving())
        yield EngineSession(engine, call, rattler)
