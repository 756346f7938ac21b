"""``hpcenv demo DIR``: everything a pip-installed hpcenv needs to try the whole flow offline.

DIR gets the demo conda channel and wheel dir (:mod:`hpcenv.demo.channel`, built from this
interpreter), ``environment.yml`` (the example GPU fine-tuning spec), ``train.py`` (a small
preemptible training job) and ``site.yaml`` (envs, package cache, registry and job state under
DIR; the demo channel instead of conda-forge; the local executor instead of Slurm).  Existing
files are kept, so the command is safe to run again; the channel is rebuilt only when stale.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hpcenv.demo.channel import DemoChannel, build_demo_channel
from hpcenv.errors import HpcenvError
from hpcenv.fsutil import atomic_write_text
from hpcenv.resources import data_dir

DEMO_ENV = "llm-finetune"

_SITE = """\
# Site config written by `hpcenv demo`: everything on this machine, offline.
# Relative paths resolve against this file's directory.

envs_dirs: [./envs]
pkgs_dirs: [./pkgs]           # beside envs_dirs: packages are hardlinked into envs
registry: ./registry
state_dir: ./state

# The demo channel: real conda packages (python, pip, cuda-version, hpcdemo-*) built from the
# python that ran `hpcenv demo`.  Specs naming conda-forge get it too.
channels: [./channel/channel]
mirrors: {conda-forge: ./channel/channel}
channel_priority: strict

# pip: sections install from the demo wheel dir only; no index is contacted.
pip: {wheel_dir: ./channel/wheels, no_index: true}

scheduler: local              # jobs run here (SLURM_* variables emulated); a cluster's site
partitions: []                # config lists its GPU partitions instead
"""


@dataclass(frozen=True)
class DemoWorkspace:
    """What ``hpcenv demo`` wrote (``created``: the files new this time) and what to run."""

    root: Path
    site: Path
    spec: Path
    script: Path
    channel: DemoChannel
    created: tuple[Path, ...] = field(default=())

    def next_commands(self) -> list[str]:
        return [f"export HPCENV_SITE={self.site}",
                f"hpcenv env build {self.spec}",
                f"hpcenv submit {self.script} --env {DEMO_ENV} --wait"]


def write_demo(dest: Path) -> DemoWorkspace:
    """Write the demo channel, ``environment.yml``, ``train.py`` and ``site.yaml`` into ``dest``."""
    dest = Path(dest).expanduser().absolute()
    missing = [m for m in ("conda_package_handling",) if importlib.util.find_spec(m) is None]
    if missing:
        raise HpcenvError("building the demo channel needs hpcenv's demo extra "
                          f"({', '.join(missing)} is missing): pip install 'hpcenv[demo]'")
    if dest.exists() and not dest.is_dir():
        raise HpcenvError(f"{dest} exists and is not a directory; pick another DIR")
    dest.mkdir(parents=True, exist_ok=True)
    channel = build_demo_channel(dest / "channel")
    examples = data_dir("examples")
    created = []
    for target, source in ((dest / "environment.yml", examples / f"{DEMO_ENV}.yml"),
                           (dest / "train.py", examples / "train.py")):
        if not target.exists():
            shutil.copyfile(source, target)
            created.append(target)
    site = dest / "site.yaml"
    if not site.exists():
        atomic_write_text(site, _SITE)
        created.append(site)
    return DemoWorkspace(root=dest, site=site, spec=dest / "environment.yml",
                         script=dest / "train.py", channel=channel, created=tuple(created))
