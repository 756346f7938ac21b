"""Site config: what admins say about their cluster, validated with ``file:line`` errors.

A site file is YAML (see ``site_configs/example-cluster.yaml`` for every key, documented).
:func:`load_site` finds it (``--site``, ``$HPCENV_SITE``, ``~/.config/hpcenv/site.yaml``,
``/etc/hpcenv/site.yaml``, then the embedded ``local.yaml``), validates every key and records
where each value came from (:attr:`SiteConfig.provenance`).  Keys a file leaves out take the
built-in defaults below, which are also what the embedded ``local.yaml`` spells out.

Value rules: ``~`` and ``${VAR}`` / ``${VAR:-default}`` expand in paths and channels; relative
paths resolve against the directory of the file that names them; a channel that is a local path
becomes a ``file://`` URL, while names (``conda-forge``) and URLs stay as written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from hpcenv.errors import InvalidInput, where
from hpcenv.resources import data_dir
from hpcenv.scheduler.options import (
    extra_arg_problem,
    mem_problem,
    name_problem,
    time_problem,
)
from hpcenv.spec.drivers import CudaCompat, driver_problem, max_cuda_problem
from hpcenv.yamlio import YNode, closest, load_yaml_file

SITE_ENV = "HPCENV_SITE"
SYSTEM_SITE = Path("/etc/hpcenv/site.yaml")
DEFAULT = "default"  # provenance of a value no file set

ChannelPriority = Literal["strict", "flexible"]
Engine = Literal["rattler", "conda"]
Launcher = Literal["auto", "conda-run", "activate"]
# slurm: pyslurm when it matches the cluster's release, else the CLI; slurm-cli/pyslurm: that one.
Scheduler = Literal["slurm", "slurm-cli", "pyslurm", "local"]
LockMethod = Literal["flock", "mkdir"]


@dataclass(frozen=True)
class Partition:
    """One Slurm partition as the site describes it.

    A GPU partition has ``gpus_per_node > 0`` and exactly one CUDA source (driver / max_cuda /
    node_feature); validation refuses GPU fields on a partition without GPUs, so for a loaded
    site :attr:`is_gpu` is true exactly when any GPU field is set.
    """

    name: str
    gpu_type: str | None = None
    gpus_per_node: int = 0
    driver: str | None = None        # exactly one of driver / max_cuda / node_feature for GPUs
    max_cuda: str | None = None
    node_feature: str | None = None  # e.g. "cuda{cuda}": per-node feature read from sinfo

    @property
    def is_gpu(self) -> bool:
        """THE definition of a GPU partition, for routing, checks and output alike."""
        return self.gpus_per_node > 0

    def feature_cuda(self, feature: str) -> str | None:
        """The CUDA version a node feature names under this partition's ``node_feature``
        pattern (``"cuda{cuda}"``: ``"cuda12.4"`` -> ``"12.4"``), else None."""
        if self.node_feature is None:
            return None
        head, _, tail = self.node_feature.partition("{cuda}")
        match = re.fullmatch(f"{re.escape(head)}(\\d+(?:\\.\\d+)?){re.escape(tail)}", feature)
        return match.group(1) if match else None


@dataclass(frozen=True)
class SlurmDefaults:
    account: str | None = None
    qos: str | None = None
    time: str | None = None           # any sbatch --time format: "2:00:00", "1-00:00"
    mem: str | None = None            # sbatch --mem: "16G", "4000M"
    cpus_per_task: int | None = None
    extra_args: tuple[str, ...] = ()  # extra sbatch options, one per item ("--exclusive")
    bin_dir: Path | None = None       # where sbatch/scontrol/... are (default: PATH)


@dataclass(frozen=True)
class Permissions:
    group: str | None = None
    dir_mode: int | None = None            # written as an octal string ("2775"); 0o2775 here
    env_name_pattern: str | None = None    # see check_env_name
    env_name_help: str | None = None       # shown when a name is refused, e.g. an example name


@dataclass(frozen=True)
class LockSettings:
    method: LockMethod = "flock"
    timeout: float = 3600.0            # seconds a builder waits for another's build
    stale_after: float | None = None   # seconds after which a lock held from another host (whose
                                       # pid cannot be checked) counts as abandoned; None = never


@dataclass(frozen=True)
class PipSettings:
    wheel_dir: Path | None = None      # local wheels (pip --find-links)
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    no_index: bool = False             # True: only wheel_dir, never an index (offline sites)


@dataclass(frozen=True)
class Remote:
    name: str
    host: str
    port: int | None = None            # None: whatever ~/.ssh/config says (22 by default)
    user: str | None = None
    identity_file: Path | None = None
    # A known_hosts file checked in addition to the system and user ones: a lab can ship the
    # login nodes' host keys next to the site config so first connections need no TOFU prompt.
    known_hosts: Path | None = None
    proxy_jump: str | None = None
    workdir: str | None = None         # a path on the remote host, kept as written
    hpcenv_command: str = "hpcenv"
    source: str = field(default=DEFAULT, compare=False)  # file:line that defined it


@dataclass(frozen=True)
class SiteConfig:
    source: Path | None                # None for the embedded default
    envs_dirs: tuple[Path, ...]        # first is where hpcenv builds
    pkgs_dirs: tuple[Path, ...]        # first is the package cache hpcenv writes
    registry: Path
    channels: tuple[str, ...]          # names, URLs, or file:// URLs (local paths converted)
    channel_priority: ChannelPriority
    engine: Engine
    conda_exe: str | None
    launcher: Launcher
    scheduler: Scheduler
    slurm: SlurmDefaults
    cuda_compat: CudaCompat
    partitions: tuple[Partition, ...]  # list order = site preference
    permissions: Permissions
    locks: LockSettings
    pip: PipSettings
    templates_dir: Path | None
    state_dir: Path                    # per-user state: local executor job records, logs
    remotes: Mapping[str, Remote]
    mirrors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    origin: str = "embedded"           # which lookup step chose the file
    # "key" / "section.key" / "partitions.NAME" / "remotes.NAME" -> "file:line" or "default"
    provenance: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}),
                                          compare=False)

    def partition(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)


# --------------------------------------------------------------------------- lookup

def site_candidates(explicit: Path | None = None,
                    environ: Mapping[str, str] | None = None) -> list[tuple[str, Path, bool]]:
    """The lookup order as ``(origin, path, required)``; a required file must exist."""
    env = os.environ if environ is None else environ
    out: list[tuple[str, Path, bool]] = []
    if explicit is not None:
        out.append(("--site", Path(explicit), True))
    if env.get(SITE_ENV):
        out.append((f"${SITE_ENV}", Path(env[SITE_ENV]), True))
    out.append(("user config", _config_home(env) / "hpcenv" / "site.yaml", False))
    out.append(("system config", SYSTEM_SITE, False))
    return out


def embedded_site_path() -> Path:

    return data_dir("site_configs") / "local.yaml"


def load_site(path: Path | None = None, *, environ: Mapping[str, str] | None = None) -> SiteConfig:
    """Find, read and validate the effective site config.

    Raises InvalidInput (``file:line: key: problem; fix``) for anything malformed, and for an
    explicit ``path`` or ``$HPCENV_SITE`` that does not exist.
    """
    env = os.environ if environ is None else environ
    for origin, candidate, required in site_candidates(path, env):
        problem = _site_file_problem(candidate)
        if problem is None:
            return parse_site_file(candidate, origin=origin, environ=env)
        message, missing = problem
        # Only a missing optional file moves on down the lookup order: one that exists but
        # cannot be read must not silently hand users the next (usually per-user) config.
        if required or not missing:
            raise InvalidInput(f"site config {candidate} (from {origin}) {message}")
    return parse_site_file(embedded_site_path(), origin="embedded", environ=env, embedded=True)


def _site_file_problem(path: Path) -> tuple[str, bool] | None:
    """``None`` for a regular file, else (why it cannot be used and the fix, is it missing)."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist; fix the path or point it at a site YAML file", True
    except OSError as exc:
        return (f"cannot be reached ({exc.strerror}); check the permissions of the "
                "directories above it"), False
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory; give the path of a YAML file", False
    return "is not a regular file; give the path of a YAML file", False


def parse_site_file(path: Path, *, origin: str = "file", environ: Mapping[str, str] | None = None,
                    embedded: bool = False) -> SiteConfig:
    """Validate one site file; keys it omits take the built-in defaults."""
    env = os.environ if environ is None else environ
    root = load_yaml_file(path, "site config")
    if root is None:
        # A truncated or touched file would otherwise silently shadow the files after it in
        # the lookup order (a user's empty site.yaml hiding /etc/hpcenv/site.yaml).
        raise InvalidInput(f"{path}: empty site config; add settings (see "
                           "site_configs/example-cluster.yaml), write '{}' to take every "
                           "default, or delete the file")
    reader = _Reader(path, env)
    return reader.site(root, source=None if embedded else path, origin=origin)


def _config_home(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or "~").expanduser() / ".config")
    return Path(base)


def remotes_path(environ: Mapping[str, str] | None = None) -> Path:
    """The per-user remotes file: ``${XDG_CONFIG_HOME:-~/.config}/hpcenv/remotes.yaml``."""
    return _config_home(os.environ if environ is None else environ) / "hpcenv" / "remotes.yaml"


def load_remotes(site: SiteConfig, path: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> Mapping[str, Remote]:
    """Site remotes merged with the user's remotes file (a mapping ``NAME: {host: ...}``).

    A user entry replaces a site entry of the same name whole, so a user can swap in their own
    login name or key without repeating the site's idea of every other field.
    """
    env = os.environ if environ is None else environ
    user_file = path if path is not None else remotes_path(env)
    merged = dict(site.remotes)
    problem = _site_file_problem(user_file)
    if problem is not None and not problem[1]:
        raise InvalidInput(f"remotes file {user_file} {problem[0]}")
    if problem is None:
        root = load_yaml_file(user_file, "remotes file")
        if root is not None:
            merged.update(_Reader(user_file, env).remotes(root, "remotes"))
    return MappingProxyType(merged)


# --------------------------------------------------------------------------- naming policy

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def env_name_regex(pattern: str) -> re.Pattern[str]:
    """Compile a naming policy.

    A pattern with ``{word}`` placeholders is a template: each placeholder matches one or more
    letters/digits and everything else is literal (``{type}-{purpose}-{stage}`` accepts
    ``cv-resnet50-exp1``).  Any other pattern is a regular expression the whole name must match.
    """
    if _PLACEHOLDER.search(pattern):
        parts, last = [], 0
        for m in _PLACEHOLDER.finditer(pattern):
            parts.append(re.escape(pattern[last:m.start()]))
            parts.append("[A-Za-z0-9]+")
            last = m.end()
        parts.append(re.escape(pattern[last:]))
        return re.compile("".join(parts))
    return re.compile(pattern)


def check_env_name(site: SiteConfig, name: str) -> str:
    """Return ``name`` if it follows the site's shared-env naming policy, else InvalidInput."""
    pattern = site.permissions.env_name_pattern
    if pattern is None or env_name_regex(pattern).fullmatch(name):
        return name
    origin = site.provenance.get("permissions.env_name_pattern", DEFAULT)
    hint = site.permissions.env_name_help or "rename the env to match"
    raise InvalidInput(f"env name {name!r} breaks the site naming policy {pattern!r} "
                       f"({origin}); {hint}")


# --------------------------------------------------------------------------- channels

def resolve_channel(site: SiteConfig, channel: str) -> str:
    """Map a channel name through the site's mirrors (offline sites); others pass unchanged."""
    return site.mirrors.get(channel, channel)


def effective_channels(site: SiteConfig) -> tuple[str, ...]:
    return tuple(resolve_channel(site, c) for c in site.channels)


# --------------------------------------------------------------------------- output

def site_to_dict(site: SiteConfig) -> dict[str, Any]:
    """The effective config as JSON-able data (paths as strings, dir_mode as octal text)."""
    def mode(m: int | None) -> str | None:
        return None if m is None else format(m, "04o")

    def opt(p: Path | None) -> str | None:
        return None if p is None else str(p)

    return {
        "envs_dirs": [str(p) for p in site.envs_dirs],
        "pkgs_dirs": [str(p) for p in site.pkgs_dirs],
        "registry": str(site.registry),
        "channels": list(site.channels),
        "channel_priority": site.channel_priority,
        "mirrors": dict(site.mirrors),
        "engine": site.engine,
        "conda_exe": site.conda_exe,
        "launcher": site.launcher,
        "scheduler": site.scheduler,
        "slurm": {**_fields(site.slurm), "extra_args": list(site.slurm.extra_args),
                  "bin_dir": str(site.slurm.bin_dir) if site.slurm.bin_dir else None},
        "cuda_compat": site.cuda_compat,
        "partitions": [{k: v for k, v in _fields(p).items() if v not in (None, 0) or k == "name"}
                       for p in site.partitions],
        "permissions": {**_fields(site.permissions), "dir_mode": mode(site.permissions.dir_mode)},
        "locks": _fields(site.locks),
        "pip": {**_fields(site.pip), "wheel_dir": opt(site.pip.wheel_dir),
                "extra_index_urls": list(site.pip.extra_index_urls)},
        "templates_dir": opt(site.templates_dir),
        "state_dir": str(site.state_dir),
        "remotes": {name: remote_to_dict(r) for name, r in site.remotes.items()},
    }


def remote_to_dict(remote: Remote) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v)
            for k, v in _fields(remote).items() if k not in ("name", "source")}


def _fields(obj: Any) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def condarc_dict(site: SiteConfig) -> dict[str, Any]:
    """The ``.condarc`` settings that make plain conda see hpcenv's envs and caches."""
    return {
        "envs_dirs": [str(p) for p in site.envs_dirs],
        "pkgs_dirs": [str(p) for p in site.pkgs_dirs],
        "channels": list(effective_channels(site)),
        "channel_priority": site.channel_priority,
    }


def condarc_text(site: SiteConfig) -> str:
    import yaml

    origin = str(site.source) if site.source else "the embedded local.yaml"
    body = yaml.safe_dump(condarc_dict(site), sort_keys=False, default_flow_style=False)
    return f"# .condarc generated by `hpcenv site condarc` from {origin}\n{body}"


# --------------------------------------------------------------------------- validation

_TOP_KEYS = ("envs_dirs", "pkgs_dirs", "registry", "channels", "channel_priority", "mirrors",
             "engine", "conda_exe", "launcher", "scheduler", "slurm", "cuda_compat", "partitions",
             "permissions", "locks", "pip", "templates_dir", "state_dir", "remotes")
_PARTITION_KEYS = ("name", "gpu_type", "gpus_per_node", "driver", "max_cuda", "node_feature")
_REMOTE_KEYS = ("host", "port", "user", "identity_file", "known_hosts", "proxy_jump", "workdir",
                "hpcenv_command")

_CHANNEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*")
_SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")
_FEATURE = re.compile(r"[A-Za-z0-9._-]+")
# host names, IPv6 literals, user names and ProxyJump chains ("user@gw:22,gw2"): no spaces or
# shell metacharacters, since these reach ssh command lines.
_SSH_WORD = re.compile(r"[A-Za-z0-9._:%@,\[\]-]+")

_DEFAULT_DATA = "${XDG_DATA_HOME:-~/.local/share}/hpcenv"
_DEFAULT_STATE = "${XDG_STATE_HOME:-~/.local/state}/hpcenv"


class _Reader:
    """Validates the YAML tree of one file; every error names ``file:line: key``."""

    def __init__(self, path: Path, environ: Mapping[str, str]) -> None:
        self.file = path
        self.base = path.parent.absolute()
        self.env = environ
        self.provenance: dict[str, str] = {}

    # -- errors and small helpers

    def fail(self, node: YNode | int | None, key: str, problem: str, fix: str) -> InvalidInput:
        line = node.line if isinstance(node, YNode) else node
        prefix = f"{key}: " if key else ""
        return InvalidInput(f"{where(self.file, line)}: {prefix}{problem}; {fix}")

    def at(self, node: YNode) -> str:
        return f"{self.file}:{node.key_line}"

    def mapping(self, node: YNode, key: str, allowed: tuple[str, ...]) -> dict[str, YNode]:
        if not node.is_mapping:
            raise self.fail(node, key, f"expected a mapping of {', '.join(allowed[:3])}, ..., "
                            f"got {node.describe()}",
                            f"write it as '{key}:' followed by indented keys")
        for name, child in node.value.items():
            if name not in allowed:
                where_ = f" in {key}" if key else ""
                close = closest(name, allowed)
                hint = (f"did you mean {close!r}?" if close
                        else f"valid keys: {', '.join(allowed)}")
                raise InvalidInput(f"{where(self.file, child.key_line)}: unknown key "
                                   f"{name!r}{where_} ({hint})")
        items: dict[str, YNode] = node.value
        return items

    def expand(self, node: YNode, key: str, text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            name, has_default, default = m.group(1), m.group(2), m.group(3)
            value = self.env.get(name)
            if value:  # like the shell's :-, an empty variable takes the default too
                return value
            if has_default is not None:
                return default or ""
            raise self.fail(node, key, f"environment variable {name} is not set",
                            f"set it, or write ${{{name}:-fallback}}")
        expanded = _VAR.sub(repl, text)
        if "${" in expanded:
            raise self.fail(node, key, f"cannot expand {text!r}",
                            "write variables as ${NAME} or ${NAME:-default}")
        return expanded

    def string(self, node: YNode, key: str, *, allow_none: bool = True) -> str | None:
        if node.value is None and allow_none:
            return None
        if isinstance(node.value, (dict, list)) or node.value is None:
            raise self.fail(node, key, f"expected text, got {node.describe()}",
                            "write a single value")
        # Scalars keep their source spelling: `qos: 2024` stays "2024", `time: 1:00:00` is not
        # YAML 1.1's sexagesimal 3600.
        text = node.text if node.text is not None else str(node.value)
        if "\n" in text or "\x00" in text:
            raise self.fail(node, key, "contains a line break or NUL", "write it on one line")
        return text

    def required_string(self, node: YNode, key: str) -> str:
        text = self.string(node, key, allow_none=False)
        assert text is not None
        if not text.strip():
            raise self.fail(node, key, "is empty", "give it a value or remove the key")
        return text

    def integer(self, node: YNode, key: str, *, minimum: int, maximum: int | None = None) -> int:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(node, key, f"expected a whole number, got {node.describe()}",
                            f"write a number like {max(minimum, 1)}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self.fail(node, key, f"{value} is out of range", f"use a number {bound}")
        return value

    def seconds(self, node: YNode, key: str, *, allow_none: bool) -> float | None:
        value = node.value
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise self.fail(node, key, f"expected a positive number of seconds, got "
                            f"{node.text if node.text is not None else node.describe()!r}",
                            "write e.g. 3600" + (" (or null)" if allow_none else ""))
        return float(value)

    def boolean(self, node: YNode, key: str) -> bool:
        if not isinstance(node.value, bool):
            raise self.fail(node, key, f"expected true or false, got {node.describe()}",
                            "write true or false")
        return node.value

    def choice(self, node: YNode, key: str, options: tuple[str, ...]) -> str:
        value = node.value
        if not isinstance(value, str) or value not in options:
            shown = node.text if node.text is not None else node.describe()
            close = closest(str(shown), options)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise self.fail(node, key, f"{shown!r} is not one of {' | '.join(options)}{hint}",
                            f"use one of: {', '.join(options)}")
        return value

    def string_list(self, node: YNode, key: str) -> list[tuple[YNode, str]]:
        items = node.value if node.is_sequence else [node] if isinstance(node.value, str) else None
        if items is None:
            raise self.fail(node, key, f"expected a list, got {node.describe()}",
                            f"write '{key}: [a, b]' or one '- item' per line")
        return [(item, self.required_string(item, key)) for item in items]

    def path(self, node: YNode, key: str) -> Path:
        text = self.expand(node, key, self.required_string(node, key))
        if text.startswith("file://"):
            text = text[len("file://"):]
        elif "://" in text:
            raise self.fail(node, key, f"{text!r} is a URL, not a filesystem path",
                            "give a directory path (absolute, or relative to this file)")
        expanded = _expand_home(text, self.env)
        if expanded.startswith("~"):
            raise self.fail(node, key, f"cannot expand {text!r} (unknown user)",
                            "write an absolute path")
        if not expanded.strip():
            raise self.fail(node, key, "expands to an empty path",
                            "set the variables it uses or give a default with ${VAR:-path}")
        return Path(os.path.normpath(self.base / expanded))

    def path_list(self, node: YNode, key: str) -> tuple[Path, ...]:
        items = self.string_list(node, key)
        if not items:
            raise self.fail(node, key, "needs at least one directory",
                            "list one or more directories")
        return tuple(self.path(item, key) for item, _ in items)

    def channel(self, node: YNode, key: str) -> str:
        raw = self.required_string(node, key)
        text = self.expand(node, key, raw).strip()
        if text.startswith(("http://", "https://")):
            return text.rstrip("/")
        if text.startswith("file://") or text.startswith(("/", "./", "../", "~")) or text in (
                ".", ".."):
            return self.path(node, key).as_uri()
        if _CHANNEL_NAME.fullmatch(text):
            return text
        raise self.fail(node, key, f"{raw!r} is not a channel name (like conda-forge), a URL, "
                        "or a path", "write local channels as absolute paths, ./relative paths "
                        "or file:// URLs")

    def record(self, key: str, node: YNode) -> None:
        self.provenance[key] = self.at(node)

    # -- sections

    def site(self, root: YNode, *, source: Path | None, origin: str) -> SiteConfig:
        items = self.mapping(root, "", _TOP_KEYS)
        values: dict[str, Any] = {}
        for key, node in items.items():
            self.record(key, node)
            values[key] = self._PARSERS[key](self, node, key)
        for key in _TOP_KEYS:
            if key not in values:
                self.provenance[key] = DEFAULT
                values[key] = self._defaults(key)
        site = SiteConfig(source=source, origin=origin,
                          provenance=MappingProxyType(dict(self.provenance)), **values)
        self._cross_checks(site, items)
        return site

    def _defaults(self, key: str) -> Any:
        fake = YNode(None, 0, 0)
        data = self.expand(fake, key, _DEFAULT_DATA)
        state = self.expand(fake, key, _DEFAULT_STATE)
        defaults: dict[str, Callable[[], Any]] = {
            "envs_dirs": lambda: (_home_path(data, self.env) / "envs",),
            "pkgs_dirs": lambda: (_home_path(data, self.env) / "pkgs",),
            "registry": lambda: _home_path(data, self.env) / "registry",
            "channels": lambda: ("conda-forge",),
            "channel_priority": lambda: "strict",
            "mirrors": lambda: MappingProxyType({}),
            "engine": lambda: "rattler",
            "conda_exe": lambda: None,
            "launcher": lambda: "auto",
            "scheduler": lambda: "local",
            "slurm": SlurmDefaults,
            "cuda_compat": lambda: "strict",
            "partitions": tuple,
            "permissions": Permissions,
            "locks": LockSettings,
            "pip": PipSettings,
            "templates_dir": lambda: None,
            "state_dir": lambda: _home_path(state, self.env),
            "remotes": lambda: MappingProxyType({}),
        }
        return defaults[key]()

    def _cross_checks(self, site: SiteConfig, items: dict[str, YNode]) -> None:
        needs = [k for k, v in (("engine", site.engine == "conda"),
                                ("launcher", site.launcher == "conda-run")) if v]
        if needs and site.conda_exe is None:
            key = needs[0]
            node = items.get(key)
            raise self.fail(node.line if node else None, key,
                            f"{getattr(site, key)} needs a conda executable",
                            "set conda_exe: /path/to/conda (or mamba/micromamba)")

    def _channels(self, node: YNode, key: str) -> tuple[str, ...]:
        return tuple(self.channel(item, key) for item, _ in self.string_list(node, key))

    def _mirrors(self, node: YNode, key: str) -> Mapping[str, str]:
        out: dict[str, str] = {}
        for name, child in self.mapping_any(node, key).items():
            if not _CHANNEL_NAME.fullmatch(name):
                raise self.fail(child.key_line, key, f"{name!r} is not a channel name",
                                "map channel names (like conda-forge) to a path or URL")
            self.record(f"{key}.{name}", child)
            url = self.channel(child, f"{key}.{name}")
            if not url.startswith(("file://", "http://", "https://")):
                raise self.fail(child, f"{key}.{name}", f"{url!r} is not a path or URL",
                                "give the mirror's directory or URL")
            out[name] = url
        return MappingProxyType(out)

    def mapping_any(self, node: YNode, key: str) -> dict[str, YNode]:
        if node.value is None:
            return {}
        if not node.is_mapping:
            raise self.fail(node, key, f"expected a mapping, got {node.describe()}",
                            f"write '{key}:' followed by indented 'name: value' lines")
        items: dict[str, YNode] = node.value
        return items

    def _conda_exe(self, node: YNode, key: str) -> str | None:
        text = self.string(node, key)
        if text is None or not text.strip():
            return None
        text = self.expand(node, key, text)
        if not text:
            return None
        if "/" in text or text.startswith("~"):
            return str(self.path(node, key))
        if not _SLURM_NAME.fullmatch(text):
            raise self.fail(node, key, f"{text!r} is neither a path nor a command name",
                            "give the path of conda/mamba/micromamba or its name on PATH")
        return text

    def _slurm(self, node: YNode, key: str) -> SlurmDefaults:
        items = self.mapping(node, key, ("account", "qos", "time", "mem", "cpus_per_task",
                                         "extra_args", "bin_dir"))
        kw: dict[str, Any] = {}
        for name, child in items.items():
            full = f"{key}.{name}"
            self.record(full, child)
            if name == "cpus_per_task":
                kw[name] = None if child.value is None else self.integer(child, full, minimum=1)
            elif name == "bin_dir":
                kw[name] = None if child.value is None else self.path(child, full)
            elif name == "extra_args":
                # Checked as submit checks --sbatch-arg: a value it refuses would pass
                # 'site check' here and then fail every submission.
                entries = self.string_list(child, full)
                for item, arg in entries:
                    problem = extra_arg_problem(arg)
                    if problem is not None:
                        raise InvalidInput(f"{where(self.file, item.line)}: {full}: {arg!r} is "
                                           f"not an sbatch option hpcenv can pass on: {problem}")
                kw[name] = tuple(arg for _, arg in entries)
            else:
                text = self.string(child, full)
                what = "an account name" if name == "account" else "a QOS name"
                problem = None if text is None else (
                    time_problem(text) if name == "time" else mem_problem(text) if name == "mem"
                    else name_problem(text, what))
                if problem is not None:
                    raise InvalidInput(f"{where(self.file, child.line)}: {full}: {text!r} is not a "
                                       f"valid sbatch value: {problem}")
                kw[name] = text
        return SlurmDefaults(**kw)

    def _partitions(self, node: YNode, key: str) -> tuple[Partition, ...]:
        if not node.is_sequence:
            raise self.fail(node, key, f"expected a list, got {node.describe()}",
                            "write one '- {name: ...}' entry per partition")
        seen: dict[str, int] = {}
        out = []
        for index, item in enumerate(node.value):
            out.append(self._partition(item, f"{key}[{index}]", seen))
        return tuple(out)

    def _partition(self, node: YNode, key: str, seen: dict[str, int]) -> Partition:
        items = self.mapping(node, key, _PARTITION_KEYS)
        if "name" not in items:
            raise self.fail(node, key, "has no name", "add name: PARTITION (as sinfo shows it)")
        name = self.required_string(items["name"], f"{key}.name")
        if not _SLURM_NAME.fullmatch(name):
            raise self.fail(items["name"], f"{key}.name", f"{name!r} is not a partition name",
                            "use letters, digits, '.', '_' and '-'")
        if name in seen:
            raise self.fail(items["name"], f"{key}.name", f"duplicate partition {name!r} (first "
                            f"on line {seen[name]})", "list each partition once")
        seen[name] = items["name"].line
        self.provenance[f"partitions.{name}"] = self.at(node)
        key = f"partitions.{name}"
        kw: dict[str, Any] = {"name": name}
        if "gpus_per_node" in items:
            kw["gpus_per_node"] = self.integer(items["gpus_per_node"], f"{key}.gpus_per_node",
                                               minimum=0)
        for opt in ("gpu_type", "driver", "max_cuda", "node_feature"):
            if opt in items:
                kw[opt] = self.string(items[opt], f"{key}.{opt}")
        if kw.get("gpu_type") is not None and not _FEATURE.fullmatch(kw["gpu_type"]):
            raise self.fail(items["gpu_type"], f"{key}.gpu_type",
                            f"{kw['gpu_type']!r} is not a GPU type",
                            "use the gres type name, e.g. a100")
        # The same rules routing applies later, so a value it would choke on fails here, with
        # the line, instead of inside every job submission.
        for opt, problem_of in (("driver", driver_problem), ("max_cuda", max_cuda_problem)):
            problem = None if kw.get(opt) is None else problem_of(kw[opt])
            if problem is not None:
                raise InvalidInput(f"{where(self.file, items[opt].line)}: {key}.{opt}: "
                                   f"{problem}")
        feature = kw.get("node_feature")
        if feature is not None and (feature.count("{cuda}") != 1 or not _FEATURE.fullmatch(
                feature.replace("{cuda}", "12.4"))):
            raise self.fail(items["node_feature"], f"{key}.node_feature",
                            f"{feature!r} must contain {{cuda}} once and otherwise only "
                            "letters, digits, '.', '_' or '-'",
                            "write the feature pattern your nodes carry, e.g. \"cuda{cuda}\"")
        sources = [k for k in ("driver", "max_cuda", "node_feature") if kw.get(k) is not None]
        gpu = kw.get("gpus_per_node", 0) > 0
        if (sources or kw.get("gpu_type")) and not gpu:
            raise self.fail(node, key, "looks like a GPU partition but gpus_per_node is not > 0",
                            "set gpus_per_node to the number of GPUs per node")
        if gpu and len(sources) != 1:
            problem = ("gives none of driver / max_cuda / node_feature" if not sources
                       else f"gives {' and '.join(sources)}; exactly one is allowed")
            raise self.fail(node, key, f"GPU partition {problem}",
                            "give its nodes' driver, their max CUDA, or a node_feature pattern "
                            "for mixed-driver partitions")
        return Partition(**kw)

    def _permissions(self, node: YNode, key: str) -> Permissions:
        items = self.mapping(node, key, ("group", "dir_mode", "env_name_pattern",
                                         "env_name_help"))
        kw: dict[str, Any] = {}
        for name, child in items.items():
            full = f"{key}.{name}"
            self.record(full, child)
            text = self.string(child, full)
            if name == "group" and text is not None and not _SLURM_NAME.fullmatch(text):
                raise self.fail(child, full, f"{text!r} is not a group name",
                                "give the unix group that owns shared dirs")
            if name == "dir_mode" and text is not None:
                # The source text is read as octal whether or not it was quoted: YAML would
                # turn an unquoted 2775 into decimal and 02775 into 1533.
                if not re.fullmatch(r"0?[0-7]{3,4}", text):
                    raise self.fail(child, full, f"{text!r} is not an octal mode",
                                    "write it like \"2775\" (setgid, group-writable)")
                kw[name] = int(text, 8)
                continue
            if name == "env_name_pattern" and text is not None:
                try:
                    env_name_regex(text)
                except re.error as exc:
                    raise self.fail(child, full, f"invalid regular expression ({exc})",
                                    "fix the regex, or use a template like "
                                    "\"{type}-{purpose}-{stage}\"") from None
            kw[name] = text
        return Permissions(**kw)

    def _locks(self, node: YNode, key: str) -> LockSettings:
        items = self.mapping(node, key, ("method", "timeout", "stale_after"))
        kw: dict[str, Any] = {}
        for name, child in items.items():
            full = f"{key}.{name}"
            self.record(full, child)
            if name == "method":
                kw[name] = self.choice(child, full, ("flock", "mkdir"))
            else:
                kw[name] = self.seconds(child, full, allow_none=name == "stale_after")
        return LockSettings(**kw)

    def _pip(self, node: YNode, key: str) -> PipSettings:
        items = self.mapping(node, key, ("wheel_dir", "index_url", "extra_index_urls", "no_index"))
        kw: dict[str, Any] = {}
        for name, child in items.items():
            full = f"{key}.{name}"
            self.record(full, child)
            if name == "wheel_dir":
                kw[name] = None if child.value is None else self.path(child, full)
            elif name == "no_index":
                kw[name] = self.boolean(child, full)
            elif name == "index_url":
                kw[name] = None if child.value is None else self._url(child, full)
            else:
                kw[name] = tuple(self._url(item, full) for item, _ in self.string_list(child, full))
        return PipSettings(**kw)

    def _url(self, node: YNode, key: str) -> str:
        text = self.expand(node, key, self.required_string(node, key)).strip()
        if text.startswith(("http://", "https://")):
            return text
        if text.startswith("file://") or text.startswith(("/", ".", "~")):
            return self.path(node, key).as_uri()
        raise self.fail(node, key, f"{text!r} is not a URL or path",
                        "write an http(s):// URL, a file:// URL or a directory path")

    def remotes(self, node: YNode, key: str) -> Mapping[str, Remote]:
        out: dict[str, Remote] = {}
        for name, child in self.mapping_any(node, key).items():
            if not _SLURM_NAME.fullmatch(name):
                raise self.fail(child.key_line, key, f"{name!r} is not a remote name",
                                "use letters, digits, '.', '_' and '-'")
            full = f"{key}.{name}"
            self.record(full, child)
            items = self.mapping(child, full, _REMOTE_KEYS)
            if "host" not in items:
                raise self.fail(child, full, "has no host", "add host: login.example.org")
            kw: dict[str, Any] = {"name": name, "source": self.at(child)}
            for opt, value in items.items():
                sub = f"{full}.{opt}"
                if opt == "port":
                    kw[opt] = None if value.value is None else self.integer(
                        value, sub, minimum=1, maximum=65535)
                elif opt in ("identity_file", "known_hosts"):
                    kw[opt] = None if value.value is None else self.path(value, sub)
                elif opt in ("host", "hpcenv_command"):
                    kw[opt] = self.required_string(value, sub)
                else:
                    kw[opt] = self.string(value, sub)
                if opt in ("host", "proxy_jump", "user") and kw[opt] is not None and not \
                        _SSH_WORD.fullmatch(kw[opt]):
                    raise self.fail(value, sub, f"{kw[opt]!r} contains spaces or shell "
                                    "characters", "give a plain host or user name")
            out[name] = Remote(**kw)
        return MappingProxyType(out)

    _PARSERS: dict[str, Callable[[_Reader, YNode, str], Any]] = {
        "envs_dirs": path_list,
        "pkgs_dirs": path_list,
        "registry": path,
        "channels": _channels,
        "channel_priority": lambda self, n, k: self.choice(n, k, ("strict", "flexible")),
        "mirrors": _mirrors,
        "engine": lambda self, n, k: self.choice(n, k, ("rattler", "conda")),
        "conda_exe": _conda_exe,
        "launcher": lambda self, n, k: self.choice(n, k, ("auto", "conda-run", "activate")),
        "scheduler": lambda self, n, k: self.choice(n, k, ("slurm", "slurm-cli", "pyslurm", "local")),
        "slurm": _slurm,
        "cuda_compat": lambda self, n, k: self.choice(n, k, ("strict", "minor")),
        "partitions": _partitions,
        "permissions": _permissions,
        "locks": _locks,
        "pip": _pip,
        "templates_dir": lambda self, n, k: None if n.value is None else self.path(n, k),
        "state_dir": path,
        "remotes": remotes,
    }


def _expand_home(text: str, env: Mapping[str, str]) -> str:
    # $HOME from the environment the config is read under (tests pass their own), then pwd.
    if text == "~" or text.startswith("~/"):
        home = env.get("HOME")
        if home:
            return home + text[1:]
    return os.path.expanduser(text)


def _home_path(text: str, env: Mapping[str, str]) -> Path:
    return Path(os.path.normpath(_expand_home(text, env)))
