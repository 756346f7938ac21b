"""``conda hpcenv ...``: hpcenv as a conda subcommand plugin.

conda loads plugins from the ``conda`` entry-point group (declared in pyproject.toml), so
installing hpcenv into conda's own environment is the whole set-up: ``conda hpcenv submit
train.py --env llm-finetune`` runs ``hpcenv submit train.py --env llm-finetune``.  The
subcommand declares no parser of its own; conda hands over the remaining words untouched and
hpcenv parses them, so every command, option, ``--help`` and exit code is hpcenv's.

Only conda imports this module (``conda.plugins`` exists nowhere else).
"""

from __future__ import annotations

from collections.abc import Iterator

from conda import plugins
from conda.plugins.types import CondaSubcommand


def run_hpcenv(argv: tuple[str, ...]) -> int:
    """The subcommand's action: hpcenv's CLI on the words after ``conda hpcenv``."""
    from hpcenv.cli import main

    return main(list(argv), prog="conda hpcenv")


@plugins.hookimpl
def conda_subcommands() -> Iterator[CondaSubcommand]:
    yield CondaSubcommand(
        name="hpcenv",
        summary="Conda environments for Slurm clusters: build shared envs, submit jobs into "
                "them (hpcenv)",
        action=run_hpcenv,
    )
