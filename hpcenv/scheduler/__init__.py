"""Scheduler backends behind one protocol (``hpcenv.scheduler.base.Scheduler``).

``get_scheduler(kind, **opts)`` picks the backend:

* ``"slurm"``: pyslurm when it imports and was built for the Slurm release the cluster runs
  (``sinfo --version``), else the Slurm command-line tools;
* ``"slurm-cli"``, ``"pyslurm"``: that backend, no fallback;
* ``"local"``: the local executor (bash, no Slurm).

Options: ``timeout`` and ``env`` for the Slurm backends, ``state_dir`` for the local executor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.scheduler.base import JobInfo, NodeState, PartitionState, Scheduler
from hpcenv.scheduler.local import LocalExecutor
from hpcenv.scheduler.pyslurm_backend import (
    PyslurmScheduler,
    pyslurm_version,
    same_release,
)
from hpcenv.scheduler.slurm_cli import SlurmCLI

__all__ = ["JobInfo", "NodeState", "PartitionState", "Scheduler", "get_scheduler", "KINDS"]

KINDS = ("slurm", "slurm-cli", "pyslurm", "local")


def get_scheduler(kind: str, **opts: Any) -> Scheduler:
    if kind == "local":
        state_dir = opts.get("state_dir")
        if state_dir is None:
            raise InvalidInput("the local executor needs a state_dir (the site's state_dir)")
        return LocalExecutor(Path(state_dir))
    if kind not in KINDS:
        raise InvalidInput(f"unknown scheduler {kind!r}; choose one of {', '.join(KINDS)}")


    cli = SlurmCLI(timeout=opts.get("timeout", 60.0), env=opts.get("env"))
    if kind == "slurm-cli":
        return cli


    if kind == "pyslurm":
        backend = PyslurmScheduler.create()
        if backend is None:
            raise HpcenvError("scheduler 'pyslurm' asked for, but the pyslurm module does not "
                              "import; install pyslurm built for this cluster's Slurm or use 'slurm'")
        return backend
    # "slurm": pyslurm only when it was built for the very release the cluster runs; a
    # mismatched pyslurm talks a different RPC protocol and fails in obscure ways.
    built_for = pyslurm_version()
    if built_for is not None and same_release(built_for, cli.version()):
        backend = PyslurmScheduler.create()
        if backend is not None:
            return backend
    return cli

