"""Conda engines: the protocol (:mod:`.base`), py-rattler (:mod:`.rattler_engine`), conda CLI."""

from hpcenv.engine.base import Engine, LockedPackage, channel_url, current_platform, get_engine

__all__ = ["Engine", "LockedPackage", "channel_url", "current_platform", "get_engine"]
