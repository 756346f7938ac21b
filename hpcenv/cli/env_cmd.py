"""The ``hpcenv env`` command group; its actions live in env_spec_cmd, env_build_cmd and
env_access_cmd (see ENV_ACTIONS in :mod:`hpcenv.cli.commands`)."""

from __future__ import annotations

import argparse


def register(parser: argparse.ArgumentParser) -> None:
    parser.description = "Inspect, build, share and retire conda environments."
