"""The ``hpcenv env`` command group; its sub-commands live in env_spec_cmd, env_build_cmd and
env_access_cmd."""

from __future__ import annotations

import argparse

from hpcenv.cli.commands import COMMAND_HELP


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from hpcenv.cli import env_access_cmd, env_build_cmd, env_spec_cmd

    env = sub.add_parser("env", parents=[common], help=COMMAND_HELP["env"],
                         description="Inspect, build, share and retire conda environments.")
    env_sub = env.add_subparsers(dest="env_command", metavar="ACTION", parser_class=type(env))
    env_spec_cmd.register(env_sub, common)
    env_build_cmd.register(env_sub, common)
    env_access_cmd.register(env_sub, common)
