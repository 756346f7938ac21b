"""Site config: what admins say about their cluster, validated with ``file:line`` errors.

A site file is YAML (see ``site_configs/example-cluster.yaml`` for every key, documented).
Every key is declared once, below, as a :func:`~hpcenv.site.schema.setting` field: its value kind,
default and help; reading, defaults, provenance, ``site show`` and the README's reference table
all come from those declarations (:mod:`hpcenv.site.schema`).
:func:`load_site` finds it (``--site``, ``$HPCENV_SITE``, ``~/.config/hpcenv/site.yaml``,
``/etc/hpcenv/site.yaml``, then the embedded ``local.yaml``), validates every key and records
where each value came from (:attr:`SiteConfig.provenance`).  Keys a file leaves out take the
declared defaults, which are also what the embedded ``local.yaml`` spells out.

Value rules: ``~`` and ``${VAR}`` / ``${VAR:-default}`` expand in paths and channels; relative
paths resolve against the directory of the file that names them; a channel that is a local path
becomes a ``file://`` URL, while names (``conda-forge``) and URLs stay as written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from hpcenv.errors import InvalidInput
from hpcenv.resources import data_dir
from hpcenv.scheduler.options import (
    extra_arg_problem,
    mem_problem,
    name_problem,
    time_problem,
)
from hpcenv.site.schema import (
    DEFAULT,
    Boolean,
    ChannelList,
    ChannelMap,
    Choice,
    Integer,
    Kind,
    ListOf,
    NamedSections,
    OctalMode,
    PathList,
    PathValue,
    Reader,
    Seconds,
    Section,
    Text,
    Url,
    dump_section,
    expand_home,
    read_section,
    setting,
    settings_of,
)
from hpcenv.spec.drivers import CudaCompat, driver_problem, max_cuda_problem
from hpcenv.yamlio import YNode, load_yaml_file

SITE_ENV = "HPCENV_SITE"
SYSTEM_SITE = Path("/etc/hpcenv/site.yaml")

ChannelPriority = Literal["strict", "flexible"]
Engine = Literal["rattler", "conda"]
Launcher = Literal["auto", "conda-run", "activate"]
# slurm: pyslurm when it matches the cluster's release, else the CLI; slurm-cli/pyslurm: that one.
Scheduler = Literal["slurm", "slurm-cli", "pyslurm", "local"]
LockMethod = Literal["flock", "mkdir"]


_DEFAULT_DATA = "${XDG_DATA_HOME:-~/.local/share}/hpcenv"
_DEFAULT_STATE = "${XDG_STATE_HOME:-~/.local/state}/hpcenv"

_SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_FEATURE = re.compile(r"[A-Za-z0-9._-]+")
_ADMIN = re.compile(r"@?[A-Za-z0-9_][A-Za-z0-9._-]*")
# host names, IPv6 literals, user names and ProxyJump chains ("user@gw:22,gw2"): no spaces or
# shell metacharacters, since these reach ssh command lines.
_SSH_WORD = re.compile(r"[A-Za-z0-9._:%@,\[\]-]+")


def _sbatch_value(problem_of: Callable[[str], str | None]) -> Callable[[str], str | None]:
    def check(text: str) -> str | None:
        problem = problem_of(text)
        return None if problem is None else f"{text!r} is not a valid sbatch value: {problem}"
    return check


def _extra_arg(arg: str) -> str | None:
    # Checked as submit checks --sbatch-arg: a value it refuses would pass 'site check' here
    # and then fail every submission.
    problem = extra_arg_problem(arg)
    return None if problem is None else (f"{arg!r} is not an sbatch option hpcenv can pass on: "
                                         f"{problem}")


def _node_feature(feature: str) -> str | None:
    if feature.count("{cuda}") == 1 and _FEATURE.fullmatch(feature.replace("{cuda}", "12.4")):
        return None
    return (f"{feature!r} must contain {{cuda}} once and otherwise only letters, digits, '.', "
            "'_' or '-'; write the feature pattern your nodes carry, e.g. \"cuda{cuda}\"")


# A path the job script expands on the node: literal path characters and $VAR / ${VAR}
# references only, so it can sit in double quotes without running anything.
_NODE_PATH = re.compile(r"(?:[A-Za-z0-9_./+@%,:=-]|\$[A-Za-z_][A-Za-z0-9_]*|\$\{[A-Za-z_][A-Za-z0-9_]*\})+")


def _stage_dir_problem(text: str) -> str | None:
    if _NODE_PATH.fullmatch(text) and text.startswith(("/", "$")):
        return None
    return (f"{text!r} is not a node-local path: use an absolute path with only letters, "
            "digits, ./_-+@%,:= and $VAR or ${VAR} (expanded on the node), e.g. "
            "\"/local/scratch/$USER\"")


def _name_pattern(text: str) -> str | None:
    try:
        env_name_regex(text)
    except re.error as exc:
        return (f"invalid regular expression ({exc}); fix the regex, or use a template like "
                "\"{type}-{purpose}-{stage}\"")
    return None


class _CondaExe(Kind):
    shape = "path or command name"

    def read(self, r: Reader, node: YNode, key: str) -> str | None:
        text = r.string(node, key)
        if text is None or not text.strip():
            return None
        text = r.expand(node, key, text)
        if not text:
            return None
        if "/" in text or text.startswith("~"):
            return str(r.path(node, key))
        if not _SLURM_NAME.fullmatch(text):
            raise r.fail(node, key, f"{text!r} is neither a path nor a command name",
                         "give the path of conda/mamba/micromamba or its name on PATH")
        return text


def _account_or_qos(what: str) -> Text:
    return Text(check=_sbatch_value(lambda t: name_problem(t, what)), shape="name")


@dataclass(frozen=True, kw_only=True)
class Partition:
    """One Slurm partition as the site describes it.

    A GPU partition has ``gpus_per_node > 0`` and exactly one CUDA source (driver / max_cuda /
    node_feature); validation refuses GPU fields on a partition without GPUs, so for a loaded
    site :attr:`is_gpu` is true exactly when any GPU field is set.
    """

    name: str = setting(Text(required=True), "the partition's name, as sinfo shows it",
                        required="add name: PARTITION (as sinfo shows it)")
    gpu_type: str | None = setting(
        Text(pattern=_FEATURE, mismatch="is not a GPU type", fix="use the gres type name, e.g. a100"),
        "GPU type of its nodes (gres type, e.g. a100)", default=None)
    gpus_per_node: int = setting(Integer(minimum=0), "GPUs per node; > 0 makes a GPU partition",
                                 default=0)
    driver: str | None = setting(Text(check=driver_problem, shape="driver version"),
                                 "NVIDIA driver of its nodes (nvidia-smi), e.g. \"550.54.15\"",
                                 default=None)
    max_cuda: str | None = setting(Text(check=max_cuda_problem, shape="CUDA version"),
                                   "newest CUDA its nodes run, when the driver is not known",
                                   default=None)
    node_feature: str | None = setting(
        Text(check=_node_feature, shape="feature pattern"),
        "per-node feature naming the CUDA each node runs (mixed drivers), e.g. \"cuda{cuda}\"",
        default=None)

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


def _check_partition(r: Reader, part: Partition, items: Mapping[str, YNode], node: YNode,
                     key: str) -> None:
    sources = [k for k in ("driver", "max_cuda", "node_feature") if getattr(part, k) is not None]
    if (sources or part.gpu_type) and not part.is_gpu:
        raise r.fail(node, key, "looks like a GPU partition but gpus_per_node is not > 0",
                     "set gpus_per_node to the number of GPUs per node")
    if part.is_gpu and len(sources) != 1:
        problem = ("gives none of driver / max_cuda / node_feature" if not sources
                   else f"gives {' and '.join(sources)}; exactly one is allowed")
        raise r.fail(node, key, f"GPU partition {problem}",
                     "give its nodes' driver, their max CUDA, or a node_feature pattern "
                     "for mixed-driver partitions")


@dataclass(frozen=True, kw_only=True)
class SlurmDefaults:
    """``slurm:``: sbatch options every job gets unless submit is told otherwise."""

    account: str | None = setting(_account_or_qos("an account name"),
                                  "sbatch --account for every job", default=None)
    qos: str | None = setting(_account_or_qos("a QOS name"), "sbatch --qos", default=None)
    time: str | None = setting(Text(check=_sbatch_value(time_problem), shape="Slurm time"),
                               "sbatch --time, any Slurm format: \"2:00:00\", \"1-00:00\"",
                               default=None)
    mem: str | None = setting(Text(check=_sbatch_value(mem_problem), shape="memory size"),
                              "sbatch --mem: \"16G\", \"4000M\"", default=None)
    cpus_per_task: int | None = setting(Integer(minimum=1, optional=True),
                                        "sbatch --cpus-per-task", default=None)
    extra_args: tuple[str, ...] = setting(ListOf(Text(check=_extra_arg), shape="list of options"),
                                          "extra sbatch options, one per item (\"--exclusive\")",
                                          default=())
    bin_dir: Path | None = setting(PathValue(optional=True), "where sbatch, scontrol, ... are "
                                   "(default: PATH): pick one Slurm release's tools", default=None)


@dataclass(frozen=True, kw_only=True)
class Permissions:
    """``permissions:``: who owns the shared dirs, who may change any env, how envs are named."""

    group: str | None = setting(
        Text(pattern=_SLURM_NAME, mismatch="is not a group name",
             fix="give the unix group that owns shared dirs", shape="group name"),
        "unix group given to everything hpcenv creates in shared dirs", default=None)
    dir_mode: int | None = setting(OctalMode(), "mode of shared dirs, e.g. \"2775\" (setgid, "
                                   "group-writable)", default=None)
    env_name_pattern: str | None = setting(
        Text(check=_name_pattern, shape="regex or template"),
        "naming policy for shared envs: a regex, or a template like \"{type}-{purpose}-{stage}\"",
        default=None)
    env_name_help: str | None = setting(Text(), "shown when a name breaks the policy",
                                        default=None)
    admins: tuple[str, ...] = setting(
        ListOf(Text(pattern=_ADMIN, mismatch="is not a user or @group name",
                    fix="list user names, and groups as @group"), shape="users, @groups"),
        "who may change or remove any shared env (an env's owner, its first builder, always may)",
        default=())


@dataclass(frozen=True, kw_only=True)
class LockSettings:
    """``locks:``: how builders of one key exclude each other across login nodes."""

    method: LockMethod = setting(Choice(("flock", "mkdir")),
                                 "flock: leases plus a same-node flock fast path; mkdir: leases "
                                 "only (where flock fails, e.g. Lustre noflock)",
                                 default="flock")
    timeout: float = setting(Seconds(), "seconds a builder waits for another's build",
                             default=3600.0)
    stale_after: float | None = setting(
        Seconds(optional=True), "seconds without a heartbeat after which a lock held from "
        "another host (whose pid cannot be checked) counts as abandoned; null = never",
        default=60.0)
    heartbeat: float = setting(Seconds(), "how often holders renew their lease (at most half "
                               "of stale_after)", default=10.0)


def _check_locks(r: Reader, locks: LockSettings, items: Mapping[str, YNode], node: YNode,
                 key: str) -> None:
    if locks.stale_after is not None and locks.heartbeat * 2 > locks.stale_after:
        culprit = "heartbeat" if "heartbeat" in items else "stale_after"
        raise r.fail(items.get(culprit, node), f"{key}.{culprit}",
                     f"heartbeat {locks.heartbeat:g}s is more than half of "
                     f"stale_after {locks.stale_after:g}s",
                     "holders renew their lease every heartbeat seconds; keep it well "
                     "below stale_after (e.g. heartbeat: 10, stale_after: 60)")


@dataclass(frozen=True, kw_only=True)
class PipSettings:
    """``pip:``: where the pip sections of env files install from."""

    wheel_dir: Path | None = setting(PathValue(optional=True), "local wheels (pip --find-links)",
                                     default=None)
    index_url: str | None = setting(Url(optional=True), "pip --index-url", default=None)
    extra_index_urls: tuple[str, ...] = setting(ListOf(Url(), shape="list of URLs"),
                                                "pip --extra-index-url, repeated", default=())
    no_index: bool = setting(Boolean(), "only wheel_dir, never an index (offline sites)",
                             default=False)


@dataclass(frozen=True, kw_only=True)
class Remote:
    """A login node ``--remote NAME`` runs commands on, over SSH."""

    name: str
    host: str = setting(Text(required=True, pattern=_SSH_WORD,
                             mismatch="contains spaces or shell characters",
                             fix="give a plain host or user name", shape="host"),
                        "login node host name (or a ~/.ssh/config alias)",
                        required="add host: login.example.org")
    port: int | None = setting(Integer(minimum=1, maximum=65535, optional=True),
                               "SSH port (default: ~/.ssh/config, else 22)", default=None)
    user: str | None = setting(Text(pattern=_SSH_WORD, mismatch="contains spaces or shell "
                                    "characters", fix="give a plain host or user name"),
                               "login name (default: ~/.ssh/config, else yours)", default=None)
    identity_file: Path | None = setting(PathValue(optional=True), "SSH private key",
                                         default=None)
    # A known_hosts file checked in addition to the system and user ones: a lab can ship the
    # login nodes' host keys next to the site config so first connections need no TOFU prompt.
    known_hosts: Path | None = setting(PathValue(optional=True),
                                       "extra known_hosts file with the login nodes' keys",
                                       default=None)
    proxy_jump: str | None = setting(Text(pattern=_SSH_WORD, mismatch="contains spaces or shell "
                                          "characters", fix="give a plain host or user name"),
                                     "ProxyJump chain, e.g. user@gateway", default=None)
    workdir: str | None = setting(Text(), "where uploads and synced trees go on the remote "
                                  "(kept as written)", default=None)
    hpcenv_command: str = setting(Text(required=True), "the hpcenv command on the remote",
                                  default="hpcenv")
    source: str = field(default=DEFAULT, compare=False)  # file:line that defined it


@dataclass(frozen=True, kw_only=True)
class SiteConfig:
    """The effective site config: every setting, where the file came from and where each
    value was given (``provenance``)."""

    envs_dirs: tuple[Path, ...] = setting(
        PathList(), "conda envs dirs; the first is where hpcenv builds",
        yaml_default=[f"{_DEFAULT_DATA}/envs"])
    pkgs_dirs: tuple[Path, ...] = setting(
        PathList(), "package caches; the first is the one hpcenv writes (shared, hardlinked)",
        yaml_default=[f"{_DEFAULT_DATA}/pkgs"])
    registry: Path = setting(PathValue(own_dir=True), "the lab registry: env records, lockfiles, current "
                             "versions", yaml_default=f"{_DEFAULT_DATA}/registry")
    channels: tuple[str, ...] = setting(ChannelList(), "channels for specs that name none "
                                        "(names, URLs or paths)", default=("conda-forge",))
    channel_priority: ChannelPriority = setting(Choice(("strict", "flexible")),
                                                "conda's channel_priority", default="strict")
    mirrors: Mapping[str, str] = setting(ChannelMap(), "channel name -> local path or URL "
                                         "(offline sites)",
                                         default_factory=lambda: MappingProxyType({}))
    engine: Engine = setting(Choice(("rattler", "conda")),
                             "solver/installer: embedded py-rattler, or conda_exe", default="rattler")
    conda_exe: str | None = setting(_CondaExe(), "conda, mamba or micromamba (path or name on "
                                    "PATH)", default=None)
    launcher: Launcher = setting(Choice(("auto", "conda-run", "activate")),
                                 "how jobs enter the env: conda run, or hpcenv's activation "
                                 "(auto: conda-run when conda_exe works)", default="auto")
    scheduler: Scheduler = setting(Choice(("slurm", "slurm-cli", "pyslurm", "local")),
                                   "slurm: pyslurm when it matches the cluster's release, else the "
                                   "Slurm CLI; slurm-cli or pyslurm: that backend; local: the "
                                   "local executor", default="local")
    slurm: SlurmDefaults = setting(Section(SlurmDefaults), "defaults for every job",
                                   default_factory=SlurmDefaults)
    cuda_compat: CudaCompat = setting(Choice(("strict", "minor")),
                                      "strict: the driver's own CUDA or older; minor: CUDA minor "
                                      "version compatibility", default="strict")
    partitions: tuple[Partition, ...] = setting(
        NamedSections(Partition, _SLURM_NAME, "partition", as_list=True,
                      check=_check_partition, omit_empty=True),
        "partitions jobs may be routed to, in order of preference", default=())
    permissions: Permissions = setting(Section(Permissions), "shared-dir ownership and naming",
                                       default_factory=Permissions)
    locks: LockSettings = setting(Section(LockSettings, check=_check_locks), "build locks",
                                  default_factory=LockSettings)
    pip: PipSettings = setting(Section(PipSettings), "pip sections of env files",
                               default_factory=PipSettings)
    templates_dir: Path | None = setting(PathValue(optional=True), "site job-script templates "
                                         "overriding the shipped ones", default=None)
    modules_dir: Path | None = setting(PathValue(optional=True), "Lmod module tree (on users' "
                                       "MODULEPATH): 'hpcenv env module' writes "
                                       "hpcenv/NAME/VERSION.lua there", default=None)
    modules_on_publish: bool = setting(Boolean(), "write the modulefile of every version that "
                                       "becomes current (needs modules_dir)", default=False)
    kernels_dir: Path | None = setting(PathValue(optional=True), "site Jupyter kernelspec dir "
                                       "for 'hpcenv env kernel --site-wide' (e.g. one on "
                                       "Open OnDemand's JUPYTER_PATH)", default=None)
    packs_dir: Path | None = setting(PathValue(optional=True), "where 'hpcenv env pack' writes "
                                     "env packs for submit --stage (default: envs_dirs[0]/"
                                     ".hpcenv/packs)", default=None)
    stage_dir: str | None = setting(
        Text(check=_stage_dir_problem, shape="node path"),
        "node-local dir submit --stage unpacks into, expanded on the node (\"/local/$USER\"; "
        "default: $TMPDIR, else /tmp)", default=None)
    state_dir: Path = setting(PathValue(own_dir=True), "per-user state: job records, scripts, logs",
                              yaml_default=_DEFAULT_STATE)
    remotes: Mapping[str, Remote] = setting(
        NamedSections(Remote, _SLURM_NAME, "remote", as_list=False),
        "login nodes for --remote NAME", default_factory=lambda: MappingProxyType({}))

    source: Path | None = None         # None for the embedded default
    origin: str = "embedded"           # which lookup step chose the file
    # "key" / "section.key" / "partitions.NAME" / "remotes.NAME" -> "file:line" or "default"
    provenance: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}),
                                          compare=False)

    def partition(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)


def _check_site(r: Reader, site: SiteConfig, items: Mapping[str, YNode], node: YNode,
                key: str) -> None:
    needs = [k for k, v in (("engine", site.engine == "conda"),
                            ("launcher", site.launcher == "conda-run")) if v]
    if needs and site.conda_exe is None:
        key = needs[0]
        at = items.get(key)
        raise r.fail(at.line if at else None, key, f"{getattr(site, key)} needs a conda executable",
                     "set conda_exe: /path/to/conda (or mamba/micromamba)")
    if site.modules_on_publish and site.modules_dir is None:
        at = items.get("modules_on_publish")
        raise r.fail(at.line if at else None, "modules_on_publish", "true needs a module tree",
                     "set modules_dir: /path/to/modulefiles")


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


def load_site(path: Path | None = None, *, environ: Mapping[str, str] | None = None,
              yaml_cache: Path | None = None) -> SiteConfig:
    """Find, read and validate the effective site config.

    Raises InvalidInput (``file:line: key: problem; fix``) for anything malformed, and for an
    explicit ``path`` or ``$HPCENV_SITE`` that does not exist.  ``yaml_cache``: where parsed
    YAML is kept by its text (:func:`hpcenv.yamlio.load_yaml_text`); the values are read and
    validated, with the environment of now, every time.
    """
    env = os.environ if environ is None else environ
    for origin, candidate, required in site_candidates(path, env):
        problem = _site_file_problem(candidate)
        if problem is None:
            return parse_site_file(candidate, origin=origin, environ=env, yaml_cache=yaml_cache)
        message, missing = problem
        # Only a missing optional file moves on down the lookup order: one that exists but
        # cannot be read must not silently hand users the next (usually per-user) config.
        if required or not missing:
            raise InvalidInput(f"site config {candidate} (from {origin}) {message}")
    return parse_site_file(embedded_site_path(), origin="embedded", environ=env, embedded=True,
                           yaml_cache=yaml_cache)


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
                    embedded: bool = False, yaml_cache: Path | None = None) -> SiteConfig:
    """Validate one site file; keys it omits take the built-in defaults."""
    env = os.environ if environ is None else environ
    root = load_yaml_file(path, "site config", cache=yaml_cache)
    if root is None:
        # A truncated or touched file would otherwise silently shadow the files after it in
        # the lookup order (a user's empty site.yaml hiding /etc/hpcenv/site.yaml).
        raise InvalidInput(f"{path}: empty site config; add settings (see "
                           "site_configs/example-cluster.yaml), write '{}' to take every "
                           "default, or delete the file")
    reader = Reader(path, env)
    site = read_section(reader, SiteConfig, root, "", check=_check_site,
                        given={"source": None if embedded else path, "origin": origin})
    return replace(site, provenance=MappingProxyType(dict(reader.provenance)))


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
            merged.update(_REMOTES.read(Reader(user_file, env), root, "remotes"))
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

_REMOTES: Kind = settings_of(SiteConfig)["remotes"].metadata["kind"]


def site_to_dict(site: SiteConfig) -> dict[str, Any]:
    """The effective config as JSON-able data (paths as strings, dir_mode as octal text)."""
    return dump_section(site)


def remote_to_dict(remote: Remote) -> dict[str, Any]:
    return dump_section(remote)


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


def _home_path(text: str, env: Mapping[str, str]) -> Path:
    return Path(os.path.normpath(expand_home(text, env)))


if __name__ == "__main__":
    # `python -m hpcenv.site.config`: the README's reference table, from the declarations.
    from hpcenv.site.reference import reference_table

    print(reference_table(SiteConfig))
