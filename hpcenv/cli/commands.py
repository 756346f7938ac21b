"""The top-level commands and their one-line help, as ``hpcenv --help`` lists them.

Each command's module registers it with its line from here (and its options and sub-commands);
when no command is named, ``main()`` lists them from here alone, without building any
command's options (argparse then reads none of them).
"""

from __future__ import annotations

COMMAND_HELP: dict[str, str] = {
    "site": "show and check the site config",
    "env": "inspect, build, share and retire environments",
    "run": "run a command inside an environment",
    "submit": "submit a script to run in an env",
    "jobs": "list my jobs with their env and partition",
    "status": "state, reason, exit code, node, elapsed",
    "logs": "print (or follow) a job's output",
    "cancel": "cancel a job or send its program a signal",
    "demo": "write an offline demo (channel, spec, site, train.py)",
}

# The commands one register function adds, in the order of COMMAND_HELP (see build_parser).
COMMAND_GROUPS = (("site",), ("env",), ("run",), ("submit",), ("jobs", "status", "logs", "cancel"),
                  ("demo",))
