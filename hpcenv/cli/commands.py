"""The command tree: every command and action, its one-line help, and where its options are
built.

``hpcenv --help`` and ``hpcenv env --help`` list the lines from here alone.  A command line
builds the options of the one command (and action) it names and nothing else: building every
parser (submit's options alone are some fifty) and importing every ``*_cmd`` module to do it
costs more than listing or showing an env takes.
"""

from __future__ import annotations


class Command:
    """One command (or action of a command group) as ``--help`` lists it.

    A plain class: a dataclass or NamedTuple is built by generated code (dataclasses also
    imports inspect), a millisecond or more that ``hpcenv --help`` would pay before printing
    this table.
    """

    __slots__ = ("help", "builder", "aliases", "actions", "dest")

    def __init__(self, help: str, builder: str, *, aliases: tuple[str, ...] = (),
                 actions: dict[str, Command] | None = None, dest: str = "") -> None:
        self.help = help
        # "module:function" under hpcenv.cli that fills in the command's parser (description,
        # options, handler); imported only when the command line names this command.
        self.builder = builder
        self.aliases = aliases
        # A command group's actions and the argparse dest that receives the one chosen.
        self.actions = actions
        self.dest = dest


SITE_ACTIONS: dict[str, Command] = {
    "show": Command("effective config and its sources", "site_cmd:register_show"),
    "check": Command("probe dirs, channels, tools", "site_cmd:register_check"),
    "condarc": Command("print a matching .condarc", "site_cmd:register_condarc"),
}

ENV_ACTIONS: dict[str, Command] = {
    "inspect": Command("show the parsed spec, its hash and the CUDA it needs",
                       "env_spec_cmd:register_inspect"),
    "build": Command("build an env once and publish it to the registry (alias: create)",
                     "env_build_cmd:register_build", aliases=("create",)),
    "list": Command("list the registry's environments", "env_build_cmd:register_list"),
    "show": Command("show one env version in detail", "env_build_cmd:register_show"),
    "history": Command("list every version of an env", "env_build_cmd:register_history"),
    "export": Command("print an env as environment.yml, lock or @EXPLICIT list",
                      "env_build_cmd:register_export"),
    "rollback": Command("make an earlier version current", "env_build_cmd:register_rollback"),
    "rm": Command("retire an env version (or the whole env) (alias: remove)",
                  "env_build_cmd:register_rm", aliases=("remove",)),
    "gc": Command("free unreferenced builds and cache entries", "env_build_cmd:register_gc"),
    "module": Command("write an Lmod modulefile for an env", "env_access_cmd:register_module"),
    "kernel": Command("register a Jupyter kernel for an env", "env_access_cmd:register_kernel"),
    "pack": Command("pack an env into one file for node-local staging",
                    "env_access_cmd:register_pack"),
}

COMMANDS: dict[str, Command] = {
    "site": Command("show and check the site config", "site_cmd:register",
                    actions=SITE_ACTIONS, dest="site_command"),
    "env": Command("inspect, build, share and retire environments", "env_cmd:register",
                   actions=ENV_ACTIONS, dest="env_command"),
    "run": Command("run a command inside an environment", "run_cmd:register"),
    "submit": Command("submit a script to run in an env", "job_cmd:register_submit"),
    "jobs": Command("list my jobs with their env and partition", "job_cmd:register_jobs"),
    "status": Command("state, reason, exit code, node, elapsed", "job_cmd:register_status"),
    "logs": Command("print (or follow) a job's output", "job_cmd:register_logs"),
    "cancel": Command("cancel a job or send its program a signal", "job_cmd:register_cancel"),
    "demo": Command("write an offline demo (channel, spec, site, train.py)",
                    "demo_cmd:register"),
}


def named(table: dict[str, Command], word: str) -> str | None:
    """The command of ``table`` that ``word`` names (itself or one of its aliases), or None."""
    if word in table:
        return word
    return next((name for name, command in table.items() if word in command.aliases), None)
