"""Scheduler backends behind one protocol (``hpcenv.scheduler.base.Scheduler``).

``select_scheduler(kind, ...)`` picks the backend and says why; ``get_scheduler`` returns it:

* ``"slurm"``: pyslurm when it imports and was built for the Slurm release the cluster runs
  (``sinfo --version``), else the Slurm command-line tools;
* ``"slurm-cli"``, ``"pyslurm"``: that backend, no fallback;
* ``"local"``: the local executor (bash, no Slurm).

Options: ``timeout``, ``env`` and ``bin_dir`` (where the Slurm client tools are) for the Slurm
backends, ``state_dir`` for the local executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcenv.errors import HpcenvError, InvalidInput

if TYPE_CHECKING:
    # The protocol and its records come with the backend that is chosen: the site config
    # imports this package for the option grammar (``scheduler.options``) in every command,
    # `env list` too, which never talks to a scheduler.
    from hpcenv.scheduler.base import Scheduler

__all__ = ["KINDS", "Selection", "get_scheduler", "pyslurm_installed", "select_scheduler"]

KINDS = ("slurm", "slurm-cli", "pyslurm", "local")


@dataclass(frozen=True)
class Selection:
    """The backend chosen for a site's ``scheduler`` setting, and why (for -v and site check)."""

    scheduler: Scheduler
    why: str


def select_scheduler(kind: str, **opts: Any) -> Selection:
    # Each backend module is imported when it is chosen: importing this package (every
    # ``hpcenv`` command does, for the job option table) must not pay for all three.
    if kind == "local":
        from hpcenv.scheduler.local import LocalExecutor

        state_dir = opts.get("state_dir")
        if state_dir is None:
            raise InvalidInput("the local executor needs a state_dir (the site's state_dir)")
        return Selection(LocalExecutor(Path(state_dir)), "scheduler: local")
    if kind not in KINDS:
        raise InvalidInput(f"unknown scheduler {kind!r}; choose one of {', '.join(KINDS)}")
    from hpcenv.scheduler.slurm_cli import SlurmCLI

    cli = SlurmCLI(timeout=opts.get("timeout", 60.0), env=opts.get("env"),
                   bin_dir=opts.get("bin_dir"))
    if kind == "slurm-cli":
        return Selection(cli, "scheduler: slurm-cli")
    if kind == "slurm" and not pyslurm_installed():
        return Selection(cli, "scheduler: slurm; pyslurm is not installed, so the Slurm CLI")
    from hpcenv.scheduler import pyslurm_backend
    from hpcenv.scheduler.pyslurm_backend import PyslurmScheduler, import_problem, same_release

    if kind == "pyslurm":
        backend = PyslurmScheduler.create(history=cli)
        if backend is None:
            why = import_problem() or "not installed"
            raise HpcenvError(f"scheduler 'pyslurm' asked for, but the pyslurm module does not "
                              f"import ({why}); install pyslurm built for this cluster's Slurm, "
                              "or use 'scheduler: slurm' (pyslurm when it fits, else the CLI)")
        return Selection(backend, "scheduler: pyslurm")
    # "slurm": pyslurm only when it was built for the very release the cluster runs; a
    # mismatched pyslurm talks a different RPC protocol and fails in obscure ways.
    built_for = pyslurm_backend.pyslurm_version()
    if built_for is None:
        return Selection(cli, "scheduler: slurm; pyslurm is not installed, so the Slurm CLI")
    try:
        release = cli.version()
    except HpcenvError as exc:
        return Selection(cli, f"scheduler: slurm; the Slurm release could not be read ({exc}), "
                              "so the Slurm CLI")
    if not same_release(built_for, release):
        return Selection(cli, f"scheduler: slurm; pyslurm {built_for} does not match Slurm "
                              f"{release or '(unknown)'}, so the Slurm CLI")
    backend = PyslurmScheduler.create(history=cli)
    if backend is None:
        return Selection(cli, f"scheduler: slurm; pyslurm {built_for} does not import "
                              f"({import_problem() or 'it failed in this process'}), so the Slurm CLI")
    return Selection(backend, f"scheduler: slurm; pyslurm {built_for} matches Slurm {release}")


def pyslurm_installed() -> bool:
    """Whether a pyslurm module is there to try, found without importing it (importing
    initialises libslurm) or reading package metadata: most sites have none, and then neither
    ``importlib.metadata`` nor the pyslurm backend's module is worth loading."""
    import importlib.util

    return importlib.util.find_spec("pyslurm") is not None


def get_scheduler(kind: str, **opts: Any) -> Scheduler:
    return select_scheduler(kind, **opts).scheduler
