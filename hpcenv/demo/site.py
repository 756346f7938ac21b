"""A throw-away site config on the demo channel, for the test suite and the benchmarks.

Kept out of ``hpcenv.demo.channel`` on purpose: that module's source is part of the channel's
build stamp, so any edit there rebuilds the channel.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpcenv.demo.channel import DemoChannel


def write_demo_site(root: Path, channel: DemoChannel, *, path: Path | None = None,
                    extra: str = "", **settings: str) -> Path:
    """Write a site config whose envs, package cache, registry and state live under ``root``.

    ``conda-forge`` is the channel, mirrored to the demo channel so specs that name it still
    solve offline; ``pip:`` sections install from the demo wheel dir; jobs run on the local
    executor.  ``settings`` add or replace top-level keys (values in YAML flow style, e.g.
    ``locks="{timeout: 1}"``); ``extra`` is appended verbatim, for block-style sections such as
    ``partitions:``.  The file is ``path``, by default ``root/site.yaml``.
    """
    root.mkdir(parents=True, exist_ok=True)
    entries = {
        "envs_dirs": f"[{root}/envs]",
        "pkgs_dirs": f"[{root}/pkgs]",
        "registry": f"{root}/registry",
        "state_dir": f"{root}/state",
        "channels": "[conda-forge]",
        "mirrors": f"{{conda-forge: {channel.path}}}",
        "scheduler": "local",
        "pip": f"{{wheel_dir: {channel.wheels}, no_index: true}}",
        **settings,
    }
    path = path or root / "site.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in entries.items()) + extra)
    return path
