"""Lmod modulefiles for published envs: ``module load hpcenv/NAME`` activates the env.

The module tree is a view of the registry, like the ``envs_dir/NAME`` symlink::

    MODULES_DIR/hpcenv/NAME/3.lua      one modulefile per version written (``env module``)
    MODULES_DIR/hpcenv/NAME/default    symlink to the current version's modulefile

A modulefile sets what hpcenv's activation sets (:mod:`hpcenv.store.activation`): ``PATH``
(the prefix's ``bin`` first), ``CONDA_PREFIX``, ``CONDA_DEFAULT_ENV``, ``CONDA_PROMPT_MODIFIER``,
``CONDA_SHLVL``, the env's ``variables:`` (``conda-meta/state``), then its
``etc/conda/activate.d`` scripts through Lmod's ``source_sh``, which records what a script
changed so ``module unload`` undoes it.  Variables use ``pushenv`` so unloading restores a
value the user had before, and ``family("hpcenv")`` makes loading a second hpcenv env swap the
first out, as conda's activation replaces the active env instead of stacking on it.  One
difference remains: an env activated by conda before ``module load`` keeps its ``bin`` on PATH
(after the module's); Lmod could remove it but not put it back on unload.

The tree lives here, in the store layer, because :mod:`hpcenv.store.lifecycle` keeps it in step
whenever ``current`` changes (:func:`sync_env_modules`): ``default`` follows rollbacks, retired
versions lose their modulefile, and an env without versions loses its directory.  With the site's
``modules_on_publish`` every newly current version gets its modulefile; otherwise only envs an
admin wrote a module for (``hpcenv env module NAME``) are kept in the tree.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.fsutil import atomic_write_text, ensure_shared_dir, shared_file_mode
from hpcenv.store.activation import activate_scripts, env_state_vars
from hpcenv.store.layout import is_complete
from hpcenv.store.registry import EnvRecord, Registry

if TYPE_CHECKING:
    from hpcenv.store.layout import Store

# The category every hpcenv module lives under: ``module load hpcenv/NAME``.
MODULE_CATEGORY = "hpcenv"
DEFAULT_LINK = "default"


def modules_dir(store: Store) -> Path:
    """The site's module tree; InvalidInput naming the key when the site sets none."""
    if store.modules_dir is None:
        where = store.source
        raise InvalidInput(f"{where}: no modules_dir is set; add 'modules_dir: /path/to/modulefiles' "
                           "(a directory on the MODULEPATH of your users) to write Lmod modules")
    return store.modules_dir


def env_module_dir(store: Store, name: str) -> Path:
    """``MODULES_DIR/hpcenv/NAME``: the versions of one env."""
    return modules_dir(store) / MODULE_CATEGORY / name


def modulefile_text(record: EnvRecord) -> str:
    """The Lua modulefile of ``record``'s build prefix (read now: a published prefix is
    immutable, so its variables and activate.d scripts cannot change afterwards)."""
    prefix = Path(record.prefix)
    q = _lua_string
    about = f"conda environment {record.name} version {record.version}, managed by hpcenv"
    lines = [
        f"-- hpcenv: environment {record.name}, version {record.version} (written by hpcenv; "
        "regenerate with 'hpcenv env module', do not edit)",
        f"whatis({q(f'Name: {record.name}')})",
        f"whatis({q(f'Version: {record.version}')})",
        f"whatis({q(f'Prefix: {prefix}')})",
        f"help({q(about)})",
        'family("hpcenv")',
        f"prepend_path(\"PATH\", {q(str(prefix / 'bin'))})",
        # The increment conda's activation does; pushenv gives the old value back on unload.
        'pushenv("CONDA_SHLVL", tostring((tonumber(os.getenv("CONDA_SHLVL") or "0") or 0) + 1))',
        f"pushenv(\"CONDA_PREFIX\", {q(str(prefix))})",
        f"pushenv(\"CONDA_DEFAULT_ENV\", {q(record.name)})",
        f"pushenv(\"CONDA_PROMPT_MODIFIER\", {q(f'({record.name}) ')})",
    ]
    lines += [f"pushenv({q(key)}, {q(value)})" for key, value in env_state_vars(prefix).items()]
    lines += [f"source_sh(\"bash\", {q(str(script))})" for script in activate_scripts(prefix)]
    return "\n".join(lines) + "\n"


def write_env_module(store: Store, record: EnvRecord) -> Path:
    """Write ``record``'s modulefile into the site tree and point ``default`` at the env's
    current version; returns the modulefile's path."""
    if record.status != "ready" or not is_complete(record.prefix):
        raise HpcenvError(f"{record.name} version {record.version} is {record.status}, not a "
                          "ready build; pick another with 'hpcenv env history "
                          f"{record.name}'")
    path = env_module_dir(store, record.name) / f"{record.version}.lua"
    registry = store.registry()
    with registry.name_lock(record.name):
        _write(store, path, modulefile_text(record))
        _point_default(store, registry, record.name)
    return path


def sync_env_modules(store: Store, registry: Registry, name: str) -> None:
    """Bring ``NAME``'s modules in step with the registry after ``current`` changed; the caller
    holds the registry's name lock.  Nothing happens without ``modules_dir``, or when the env
    has no modules and the site does not write them on publish."""
    if store.modules_dir is None:
        return
    directory = env_module_dir(store, name)
    if not directory.is_dir() and not store.modules_on_publish:
        return
    try:
        current = registry.current(name)
        if current is not None and (store.modules_on_publish or directory.is_dir()):
            path = directory / f"{current.version}.lua"
            if not path.is_file():
                _write(store, path, modulefile_text(current))
        usable = {r.version for r in registry.versions(name)
                  if r.status == "ready" and is_complete(r.prefix)}
        for modulefile in directory.glob("*.lua") if directory.is_dir() else ():
            if not modulefile.stem.isdigit() or int(modulefile.stem) not in usable:
                modulefile.unlink()
        _point_default(store, registry, name)
    except OSError as exc:
        raise HpcenvError(f"{directory}: cannot update the env's modules ({exc.strerror}); fix "
                          f"the directory's permissions, then run 'hpcenv env module {name}'"
                          ) from None


def _point_default(store: Store, registry: Registry, name: str) -> None:
    """``default`` -> the current version's modulefile; the env's dir goes once it holds no
    modulefile (its last version retired)."""
    directory = env_module_dir(store, name)
    if not directory.is_dir():
        return
    current = registry.current_version(name)
    default = directory / DEFAULT_LINK
    target = f"{current}.lua" if current is not None else None
    if target is not None and (directory / target).is_file():
        tmp = directory / f".{DEFAULT_LINK}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, default)
    elif default.is_symlink():
        default.unlink()
    if not any(directory.glob("*.lua")):
        shutil.rmtree(directory)


def _write(store: Store, path: Path, text: str) -> None:
    group = store.group
    ensure_shared_dir(path.parent, mode=store.dir_mode, group=group)
    atomic_write_text(path, text, mode=shared_file_mode(group), group=group)


def _lua_string(text: str) -> str:
    """``text`` as a double-quoted Lua string literal (any byte a Lua lexer would misread is
    escaped as ``\\ddd``), so values from the env's state cannot break out of the modulefile."""
    out = ['"']
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\' or byte < 0x20 or byte == 0x7F:
            out.append(f"\\{byte:03d}")
        else:
            out.append(char if byte < 0x80 else f"\\{byte:03d}")
    out.append('"')
    return "".join(out)
