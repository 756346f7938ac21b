"""``submit --stage``: what the job script's staging part (``slurm_templates/stage.sh.j2``) needs.

The job unpacks the env's pack (:mod:`hpcenv.store.pack`) once per node into
``STAGE_DIR/hpcenv-UID/BUILD`` and runs from there; ``STAGE_DIR`` is the site's ``stage_dir``,
expanded on the node, else ``$TMPDIR``, else ``/tmp``.  Everything known on the login node is
settled here: the pack's path, its decompressor, its unpacked size (for the free-space check)
and the python that relocates it.  What only the node knows (free space, whether the pack is
still there, a copy another job staged already) is checked by the script, which falls back to
the shared prefix with one warning line on stderr.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcenv.errors import InvalidInput

if TYPE_CHECKING:
    from hpcenv.site.config import SiteConfig
    from hpcenv.store.registry import EnvRecord

# Where a staged copy goes when the site names no stage_dir: the job's TMPDIR (Slurm sites
# often make it a per-job node-local dir), else /tmp.
DEFAULT_STAGE_ROOT = "${TMPDIR:-/tmp}"
# The shell variable the activation and the program's path use: the staged copy, or the shared
# prefix when staging was impossible.
PREFIX_VAR = "hpcenv_prefix"
_DECOMPRESSORS = {"zstd": "zstd", "gzip": "gzip"}
# The staging part's first line: a site job.sh.j2 that leaves out the include would make
# --stage do nothing, silently.
STAGE_MARK = "# --- hpcenv: node-local staging (submit --stage) ---"


@dataclass(frozen=True)
class StagePlan:
    """The staging part of one job script."""

    pack: Path
    exists: bool                      # False: the job will say so and run from the shared prefix
    context: dict[str, Any]           # the template's ``stage`` value
    warning: str | None               # said at submit time (no pack yet)


def plan_staging(site: SiteConfig, record: EnvRecord) -> StagePlan:
    """The staging of ``record``'s build for a job; reads the pack's manifest if it exists."""
    # Imported here: every submit imports this module, only --stage reads packs (tarfile).
    from hpcenv.store import store_for
    from hpcenv.store.pack import (
        compression_of,
        default_compression,
        find_pack,
        pack_path,
        read_manifest,
    )

    prefix = Path(record.prefix)
    store = store_for(site)
    found = find_pack(store, record)
    pack = found or pack_path(store, record, default_compression())
    bytes_needed, python, warning = 0, "bin/python3", None
    if found is not None:
        manifest = read_manifest(found)
        bytes_needed = manifest.unpacked_bytes
        python = manifest.python or ""
    else:
        warning = (f"no pack of {record.name} v{record.version} in {pack.parent}: the job will "
                   f"run from the shared prefix; make one with 'hpcenv env pack {record.name} "
                   f"--version {record.version}'")
    context = {
        "shared_prefix": str(prefix), "pack": str(pack), "build": prefix.name,
        "bytes": str(bytes_needed), "python": python,
        "decompress": _DECOMPRESSORS[compression_of(pack)],
        "root": site.stage_dir or DEFAULT_STAGE_ROOT,
    }
    return StagePlan(pack=pack, exists=found is not None, context=context, warning=warning)


def check_staged_script(text: str, site: SiteConfig) -> None:
    """Refuse a rendered job script that lost the staging part (a site's own ``job.sh.j2``
    written before staging existed)."""
    if STAGE_MARK not in text:
        where = site.templates_dir or "the site's templates_dir"
        raise InvalidInput(f"--stage: the job template in {where} does not include "
                           "stage.sh.j2; add '{% if stage is defined and stage %}{% include "
                           "\"stage.sh.j2\" %}{% endif %}' before the launcher, as the shipped "
                           "job.sh.j2 does, or submit without --stage")
