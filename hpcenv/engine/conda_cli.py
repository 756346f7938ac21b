"""Engine driving a conda, mamba or micromamba executable instead of embedded py-rattler.

For sites that must use their own conda: the solve is ``create --dry-run --json`` into a
throw-away prefix path and the ``LINK`` actions become :class:`LockedPackage` s; the install is
``create --file EXPLICIT`` (an ``@EXPLICIT`` list of ``URL#md5``, so nothing is solved again) with
``CONDA_PKGS_DIRS`` pointing at the site's package cache.  ``__cuda`` is set through
``CONDA_OVERRIDE_CUDA`` (``""`` = no ``__cuda``, which conda and micromamba both honour); channel
priority through ``CONDA_CHANNEL_PRIORITY``/``MAMBA_CHANNEL_PRIORITY``.  Lockfiles are read and
written with rattler (same format whatever engine solved).

Tested against a real conda (26.7.1, classic solver: tests/engine/test_real_conda.py); mamba and
micromamba only through the command construction and the parsing of their JSON replies.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcenv.engine.base import ChannelPriority, LockedPackage, channel_url
from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.spec.cuda_target import CudaTarget


@dataclass(frozen=True)
class Command:
    """A command line plus the environment variables it needs on top of the caller's."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)


class CondaCliEngine:
    """Engine over a ``conda``/``mamba``/``micromamba`` executable (``exe``: name or path)."""

    name = "conda"

    def __init__(self, exe: str = "conda") -> None:
        self.exe = exe

    @property
    def flavor(self) -> str:
        base = Path(self.exe).name
        return "micromamba" if base.startswith("micromamba") else (
            "mamba" if base.startswith("mamba") else "conda")

    def _common_env(self, cuda: CudaTarget, channel_priority: ChannelPriority | None) -> dict[str, str]:
        # conda adds pip to every env with python (add_pip_as_python_dependency); py-rattler
        # does not.  Off, a spec gets the same packages from either engine, and a channel
        # without a pip package does not fail with a misleading "incompatible specs".
        env: dict[str, str] = {"CONDA_ADD_PIP_AS_PYTHON_DEPENDENCY": "0"}
        if cuda.kind != "detect":
            env["CONDA_OVERRIDE_CUDA"] = cuda.version or ""
        if channel_priority is not None:
            env["CONDA_CHANNEL_PRIORITY"] = channel_priority
            env["MAMBA_CHANNEL_PRIORITY"] = channel_priority
        return env

    def solve_command(self, specs: Sequence[str], *, channels: Sequence[str], platform: str,
                      cuda: CudaTarget, channel_priority: ChannelPriority,
                      scratch_prefix: Path) -> Command:
        argv = [self.exe, "create", "--dry-run", "--json", "--yes", "--prefix", str(scratch_prefix),
                "--override-channels", "--platform", platform]
        for channel in channels:
            argv += ["--channel", channel_url(channel)]
        if channel_priority == "strict":
            argv.append("--strict-channel-priority")
        argv += list(specs)
        return Command(tuple(argv), self._common_env(cuda, channel_priority))

    def install_command(self, prefix: Path, explicit_file: Path, *, pkgs_dir: Path) -> Command:
        argv = [self.exe, "create", "--yes", "--json", "--prefix", str(prefix),
                "--file", str(explicit_file)]
        # Not in ~/.conda/environments.txt: build prefixes are internal, conda finds the
        # published envs_dir/NAME by scanning envs_dirs (and root's conda lists every user's file).
        env = {"CONDA_PKGS_DIRS": str(pkgs_dir), "CONDA_REGISTER_ENVS": "false"}
        if self.flavor == "micromamba":
            env["MAMBA_PKGS_DIRS"] = str(pkgs_dir)
        return Command(tuple(argv), env)

    def solve(self, specs: Sequence[str], *, channels: Sequence[str], platform: str,
              cuda: CudaTarget, channel_priority: ChannelPriority = "strict") -> list[LockedPackage]:
        with tempfile.TemporaryDirectory(prefix="hpcenv-solve-") as scratch:
            cmd = self.solve_command(specs, channels=channels, platform=platform, cuda=cuda,
                                     channel_priority=channel_priority,
                                     scratch_prefix=Path(scratch) / "env")
            out = self._run(cmd)
        return parse_dry_run(out, platform)

    def install(self, prefix: Path, packages: Sequence[LockedPackage], *, pkgs_dir: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="hpcenv-explicit-") as scratch:
            explicit = Path(scratch) / "explicit.txt"
            explicit.write_text(explicit_text(packages))
            self._run(self.install_command(prefix, explicit, pkgs_dir=pkgs_dir))

    def _run(self, cmd: Command) -> str:
        try:
            proc = subprocess.run(cmd.argv, env={**os.environ, **cmd.env}, capture_output=True,
                                  text=True, check=False)
        except FileNotFoundError:
            raise HpcenvError(f"conda executable {self.exe!r} not found: set conda_exe in the "
                              "site config or use engine: rattler") from None
        if proc.returncode != 0:
            detail = _error_text(proc.stdout) or " / ".join(proc.stderr.strip().splitlines()[-3:])
            # Specs no channel satisfies are the user's input (exit 2), as with py-rattler.
            error = InvalidInput if _exception_name(proc.stdout) in _SPEC_ERRORS else HpcenvError
            raise error(f"{' '.join(cmd.argv[:2])} failed (exit {proc.returncode}): {detail}")
        return proc.stdout


def explicit_text(packages: Sequence[LockedPackage]) -> str:
    """An ``@EXPLICIT`` file conda, mamba and micromamba install without solving."""
    return "@EXPLICIT\n" + "".join(f"{p.explicit_line}\n" for p in packages)


def parse_dry_run(output: str, platform: str) -> list[LockedPackage]:
    """Packages from ``create --dry-run --json`` (conda 23+ and micromamba field names)."""
    try:
        data = json.loads(output)
    except ValueError:
        raise HpcenvError(f"conda --dry-run --json printed no JSON: {output[:200]!r}") from None
    if not data.get("success", True) or "error" in data:
        raise HpcenvError(f"cannot solve environment: {_error_text(output)}")
    links: list[dict[str, Any]] = (data.get("actions") or {}).get("LINK") or []
    packages = []
    for entry in links:
        subdir = entry.get("subdir") or entry.get("platform") or platform
        file_name = entry.get("fn") or f"{entry['dist_name']}.conda"
        channel = entry.get("base_url") or entry.get("channel") or ""
        url = entry.get("url") or f"{channel.rstrip('/')}/{subdir}/{file_name}"
        packages.append(LockedPackage(
            name=entry["name"], version=str(entry["version"]),
            build=entry.get("build_string") or entry.get("build") or "",
            build_number=int(entry.get("build_number", 0)), subdir=subdir, url=url,
            channel=channel, file_name=file_name, sha256=entry.get("sha256"),
            md5=entry.get("md5"), size=entry.get("size"),
            depends=tuple(entry.get("depends") or ()),
            constrains=tuple(entry.get("constrains") or ()),
            noarch=entry.get("noarch"), timestamp=entry.get("timestamp"),
            license=entry.get("license")))
    return packages


# conda's ``exception_name`` (in its --json error reply) for specs that cannot be satisfied.
_SPEC_ERRORS = frozenset({"PackagesNotFoundError", "PackagesNotFoundInChannelsError", "UnsatisfiableError", "ResolvePackageNotFound",
                          "SpecsConfigurationConflictError", "InvalidMatchSpec",
                          "InvalidSpec"})


def _exception_name(output: str) -> str:
    try:
        data = json.loads(output)
    except ValueError:
        return ""
    return str(data.get("exception_name", "")) if isinstance(data, dict) else ""


def _error_text(output: str) -> str:
    try:
        data = json.loads(output)
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    message = data.get("message") or data.get("error") or ""
    # conda's advice to search a web index does not apply to the site's channels.
    message = str(message).split("To search for alternate channels")[0]
    return " ".join(str(message).split())
