"""Jupyter kernelspecs for published envs: a kernel that runs the env's python, activated.

A kernelspec is a directory Jupyter finds on its data path (``kernels/NAME/kernel.json``).  hpcenv
writes ``hpcenv-NAME/`` with two files:

* ``launch.sh``: hpcenv's activation of the build prefix as bash text
  (:func:`hpcenv.store.activation.activation_script`: PATH, the conda variables, the env's
  ``variables:`` and activate.d scripts), then ``exec python -m ipykernel_launcher``, so the
  kernel process is the env's python itself and Jupyter's interrupt signal reaches it;
* ``kernel.json``: runs ``launch.sh`` with the connection file.

The kernel is pinned to one build (the current version when registered, or ``--version V``),
like a job: a rebuild or rollback does not change a running notebook's packages under it.
Registering again after a new version moves the kernel on; a kernel whose build was removed
says so and how to fix it instead of failing obscurely.  Nodes need neither conda nor hpcenv.

Where: the user's Jupyter data dir (``$JUPYTER_DATA_DIR``, else
``${XDG_DATA_HOME:-~/.local/share}/jupyter``, as jupyter_core computes it on Linux), or the
site's ``kernels_dir`` for everyone (e.g. a directory on Open OnDemand's ``JUPYTER_PATH``).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.fsutil import atomic_write_text, ensure_shared_dir
from hpcenv.store import store_for
from hpcenv.store.activation import activation_env, activation_script
from hpcenv.store.layout import is_complete
from hpcenv.store.registry import EnvRecord

if TYPE_CHECKING:
    from hpcenv.site.config import SiteConfig

KERNEL_PREFIX = "hpcenv-"


@dataclass(frozen=True)
class KernelSpec:
    """A kernelspec hpcenv wrote."""

    kernel_name: str     # what `jupyter kernelspec list` and KernelManager(kernel_name=) use
    directory: Path
    display_name: str
    env: str
    version: int
    prefix: str


def user_kernels_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The user's kernelspec dir, as jupyter_core finds it on Linux."""
    env = os.environ if environ is None else environ
    if env.get("JUPYTER_DATA_DIR"):
        return Path(env["JUPYTER_DATA_DIR"]).expanduser() / "kernels"
    data_home = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "~")) / ".local" / "share")
    return Path(data_home).expanduser() / "jupyter" / "kernels"


def site_kernels_dir(site: SiteConfig) -> Path:
    """The site's ``kernels_dir``; InvalidInput naming the key when it sets none."""
    if site.kernels_dir is None:
        where = site.source or "the site config"
        raise InvalidInput(f"{where}: no kernels_dir is set; add 'kernels_dir: /path/to/kernels' "
                           "(a 'kernels' dir on Jupyter's JUPYTER_PATH), or register the kernel "
                           "for yourself without --site-wide")
    return site.kernels_dir


def install_kernel(site: SiteConfig, name: str, *, version: int | None = None,
                   kernels_dir: Path | None = None, site_wide: bool = False) -> KernelSpec:
    """Write the kernelspec ``hpcenv-NAME`` for NAME's current version (or ``version``) into
    ``kernels_dir`` (default: the site's when ``site_wide``, else the user's).  Refuses an env
    whose python cannot import ipykernel, naming what to add."""
    record = store_for(site).registry().resolve(name, version)
    if record.status != "ready" or not is_complete(record.prefix):
        raise HpcenvError(f"{name} version {record.version} is {record.status}, not a ready "
                          f"build; pick another with 'hpcenv env history {name}'")
    _require_ipykernel(record)
    if kernels_dir is None:
        kernels_dir = site_kernels_dir(site) if site_wide else user_kernels_dir()
    spec = KernelSpec(kernel_name=f"{KERNEL_PREFIX}{name}", directory=kernels_dir /
                      f"{KERNEL_PREFIX}{name}", display_name=f"{name} (hpcenv v{record.version})",
                      env=str(name), version=record.version, prefix=record.prefix)
    group = site.permissions.group if site_wide else None
    mode = 0o664 if group is not None else 0o644
    try:
        ensure_shared_dir(spec.directory, mode=site.permissions.dir_mode if site_wide else None,
                          group=group)
        launcher = spec.directory / "launch.sh"
        atomic_write_text(launcher, _launcher_text(record), mode=mode | 0o111, group=group)
        atomic_write_text(spec.directory / "kernel.json", json.dumps({
            "argv": ["/bin/bash", str(launcher), "-f", "{connection_file}"],
            "display_name": spec.display_name,
            "language": "python",
            "interrupt_mode": "signal",
            "metadata": {"hpcenv": {"env": spec.env, "version": spec.version,
                                    "prefix": spec.prefix}},
        }, indent=2) + "\n", mode=mode, group=group)
    except OSError as exc:
        raise HpcenvError(f"{spec.directory}: cannot write the kernelspec ({exc.strerror}); pick "
                          "a writable kernels dir") from None
    return spec


def _require_ipykernel(record: EnvRecord) -> None:
    """The env's own python, activated, must find ipykernel (a kernel without it dies at start
    with an ImportError only visible in Jupyter's server log)."""
    python = Path(record.prefix) / "bin" / "python"
    add = (f"add 'ipykernel' to the env's dependencies (or its pip: section) and rebuild "
           f"'{record.name}'")
    if not python.exists():
        raise HpcenvError(f"{record.name} version {record.version} has no python "
                          f"({python}); {add}")
    env = activation_env(Path(record.prefix), os.environ, name=record.name)
    proc = subprocess.run([str(python), "-c", "import importlib.util, sys; "
                           "sys.exit(importlib.util.find_spec('ipykernel') is None)"],
                          env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise HpcenvError(f"{record.name} version {record.version} lacks ipykernel, which a "
                          f"Jupyter kernel needs; {add}")


def _launcher_text(record: EnvRecord) -> str:
    prefix = Path(record.prefix)
    q = shlex.quote
    gone = (f"hpcenv: kernel {KERNEL_PREFIX}{record.name}: version {record.version} of "
            f"{record.name} ({prefix}) no longer exists; register the kernel again with "
            f"'hpcenv env kernel {record.name}'")
    return "".join([
        "#!/bin/bash\n",
        f"# Jupyter kernel of hpcenv env {record.name} version {record.version}, written by "
        "'hpcenv env kernel'.\n",
        f"if [ ! -d {q(str(prefix / 'conda-meta'))} ]; then\n",
        f"    echo {q(gone)} >&2\n",
        "    exit 1\n",
        "fi\n",
        activation_script(prefix, name=record.name),
        f"exec {q(str(prefix / 'bin' / 'python'))} -m ipykernel_launcher \"$@\"\n",
    ])
