"""What ``env list`` and ``env history`` print of the registry.

The registry's index keeps these lines (:mod:`hpcenv.store.registry_index`), so listing 10,000
environments or versions prints stored text instead of formatting 10,000 rows, which would
cost more than the rest of the command.  Index files carry :data:`TEXT_VERSION` and are made
anew when it differs: **a change of what these functions print must bump it**, or the lines
already stored in a registry's index keep being printed as they were.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hpcenv.text_table import human_size

TEXT_VERSION = 1

LIST_HEADER = (f"{'NAME':<24} {'CURRENT':>7} {'VERSIONS':>8} {'CUDA':<6} {'UNIQUE':>9} "
               f"{'SHARED':>9}  CREATED BY")
HISTORY_HEADER = f"  {'VERSION':>7} {'STATUS':<9} {'CUDA':<6} {'KEY':<12}  CREATED BY"


def env_line(summary: Mapping[str, Any]) -> str:
    """The ``env list`` row of an environment (``EnvSummary.to_dict()``)."""
    current = str(summary["current"]) if summary["current"] is not None else "-"
    # UNIQUE: what only this env holds (removing it frees that); SHARED: hardlinks into the
    # package cache, paid once however many envs use them.
    unique = human_size(summary["unique_bytes"]) if summary["unique_bytes"] is not None else "-"
    shared = human_size(summary["shared_bytes"]) if summary["shared_bytes"] is not None else "-"
    return (f"{summary['name']:<24} {current:>7} {summary['versions']:>8} "
            f"{summary['cuda'] or '-':<6} {unique:>9} {shared:>9}  {summary['created'] or '-'} "
            f"{summary['creator'] or ''}").rstrip()


def unfinished_lines(name: str, pending: Sequence[Mapping[str, Any]]) -> str:
    """The ``env list`` hint of a name whose builds never finished, which is no environment
    (``pending``: its failed and building versions, ``VersionEntry.to_dict()``, oldest first)."""
    states = ", ".join(f"v{p['version']} {p['status']}" for p in pending)
    text = (f"{name}: no ready version ({states}); see 'hpcenv env history {name}', "
            f"clear with 'hpcenv env rm {name}'")
    if pending[-1]["error"]:
        text += f"\n  last error: {pending[-1]['error']}"
    return text


def list_text(env_lines: Sequence[str], hints: Sequence[str]) -> str:
    """``env list``: the environments' rows under a header, then the hints; "" when both are
    empty."""
    return "\n".join([LIST_HEADER, *env_lines, *hints] if env_lines else hints)


def history_line(entry: Mapping[str, Any]) -> str:
    """The ``env history`` row of a version (``HistoryEntry.to_dict()``)."""
    mark = "*" if entry["current"] else " "
    return (f"{mark} {entry['version']:>7} {entry['status']:<9} {entry['cuda'] or '-':<6} "
            f"{entry['key'][:12]:<12}  {entry['created']} {entry['creator']}")


def history_text(entries: Sequence[Mapping[str, Any]]) -> str:
    """``env history``: every version's row under a header."""
    return "\n".join([HISTORY_HEADER, *map(history_line, entries)])
