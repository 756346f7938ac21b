"""Site config API: lookup order, validation with file:line, expansion, provenance, checks."""

from __future__ import annotations

import grp
import os
import re
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from hpcenv.admin.site_check import Check, check_site
from hpcenv.errors import InvalidInput
from hpcenv.resources import data_dir
from hpcenv.site.config import (
    SYSTEM_SITE,
    Partition,
    Permissions,
    SiteConfig,
    check_env_name,
    condarc_dict,
    condarc_text,
    effective_channels,
    load_remotes,
    load_site,
    parse_site_file,
    site_candidates,
    site_to_dict,
)

SHIPPED = data_dir("site_configs")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    """A clean environment: no $HPCENV_SITE, no XDG overrides, HOME in tmp."""
    return {"HOME": str(home), "PATH": os.environ.get("PATH", "")}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str]) -> SiteConfig:
    return parse_site_file(write(tmp_path / "cfg" / "site.yaml", text), environ=env)


# --------------------------------------------------------------------------- shipped configs

def test_embedded_local_config_validates(env: dict[str, str], home: Path) -> None:
    site = parse_site_file(SHIPPED / "local.yaml", environ=env, embedded=True)
    assert site.source is None
    assert site.envs_dirs == (home / ".local/share/hpcenv/envs",)
    assert site.pkgs_dirs == (home / ".local/share/hpcenv/pkgs",)
    assert site.registry == home / ".local/share/hpcenv/registry"
    assert site.state_dir == home / ".local/state/hpcenv"
    assert (site.scheduler, site.engine, site.launcher) == ("local", "rattler", "auto")
    assert site.channels == ("conda-forge",) and site.channel_priority == "strict"
    assert site.partitions == ()


def test_example_cluster_config_validates(env: dict[str, str], home: Path) -> None:
    site = parse_site_file(SHIPPED / "example-cluster.yaml", environ=env)
    by_name = {p.name: p for p in site.partitions}
    assert list(by_name) == ["cpu", "gpu-v100", "gpu-a100", "gpu-l40s", "gpu-h100"]
    assert not by_name["cpu"].is_gpu
    assert by_name["gpu-v100"].driver == "520.61.05"
    assert by_name["gpu-a100"].node_feature == "cuda{cuda}"
    assert by_name["gpu-h100"].max_cuda == "12.8"
    assert site.scheduler == "slurm" and site.slurm.account == "ml-lab"
    assert site.slurm.time == "4:00:00" and site.slurm.cpus_per_task == 8
    assert site.permissions.dir_mode == 0o2775 and site.permissions.group == "mlusers"
    assert site.envs_dirs == (Path("/shared/conda/envs"), home / ".conda/envs")
    assert "file:///shared/conda/channels/lab" in site.channels
    assert effective_channels(site)[0] == "file:///shared/mirror/conda-forge"
    remote = site.remotes["cluster"]
    assert remote.host == "login.cluster.example.org" and remote.port == 22
    assert remote.identity_file == home / ".ssh/id_ed25519"
    assert remote.known_hosts == Path("/shared/hpcenv/ssh_known_hosts")
    assert remote.workdir == "hpcenv-jobs"  # remote paths are not resolved locally


# --------------------------------------------------------------------------- lookup order

def test_lookup_falls_back_to_embedded(env: dict[str, str]) -> None:
    if SYSTEM_SITE.exists():
        pytest.fail(f"{SYSTEM_SITE} exists on this machine; the fallback cannot be tested")
    site = load_site(environ=env)
    assert site.source is None and site.origin == "embedded"


def test_lookup_order(tmp_path: Path, env: dict[str, str], home: Path) -> None:
    user = write(home / ".config/hpcenv/site.yaml", "channels: [user]\n")
    assert load_site(environ=env).channels == ("user",)
    assert load_site(environ=env).source == user

    from_env = write(tmp_path / "env.yaml", "channels: [from-env]\n")
    env["HPCENV_SITE"] = str(from_env)
    assert load_site(environ=env).channels == ("from-env",)
    assert load_site(environ=env).origin == "$HPCENV_SITE"

    explicit = write(tmp_path / "explicit.yaml", "channels: [explicit]\n")
    site = load_site(explicit, environ=env)
    assert site.channels == ("explicit",) and site.origin == "--site"


def test_lookup_honours_xdg_config_home(tmp_path: Path, env: dict[str, str]) -> None:
    write(tmp_path / "xdg/hpcenv/site.yaml", "channels: [xdg]\n")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    assert load_site(environ=env).channels == ("xdg",)


def test_lookup_system_config_comes_after_user_config(env: dict[str, str], home: Path) -> None:
    origins = [(origin, path) for origin, path, _ in site_candidates(None, env)]
    assert origins == [("user config", home / ".config/hpcenv/site.yaml"),
                       ("system config", Path("/etc/hpcenv/site.yaml"))]


@pytest.mark.parametrize("via_env", [True, False])
def test_missing_explicit_or_env_site_is_an_error(tmp_path: Path, env: dict[str, str],
                                                  via_env: bool) -> None:
    missing = tmp_path / "nope.yaml"
    if via_env:
        env["HPCENV_SITE"] = str(missing)
    with pytest.raises(InvalidInput, match=r"nope\.yaml .*does not exist"):
        load_site(None if via_env else missing, environ=env)


# --------------------------------------------------------------------------- values

def test_paths_expand_home_vars_and_relative(tmp_path: Path, env: dict[str, str],
                                              home: Path) -> None:
    env["SCRATCH"] = "/scratch/me"
    env["EMPTY"] = ""
    site = load_text(tmp_path, """
        envs_dirs: [~/envs, "${SCRATCH}/envs", "${UNSET_VAR:-/fallback}/envs", ../rel/envs]
        pkgs_dirs: ["${EMPTY:-~/pkgs}"]
        registry: ./registry
        state_dir: ${SCRATCH}/state
    """, env)
    assert site.envs_dirs == (home / "envs", Path("/scratch/me/envs"), Path("/fallback/envs"),
                              tmp_path / "rel/envs")
    assert site.pkgs_dirs == (home / "pkgs",)
    assert site.registry == tmp_path / "cfg/registry"
    assert site.state_dir == Path("/scratch/me/state")


def test_defaults_follow_xdg_dirs(tmp_path: Path, env: dict[str, str]) -> None:
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    site = load_text(tmp_path, "channels: [conda-forge]\n", env)
    assert site.envs_dirs == (tmp_path / "data/hpcenv/envs",)
    assert site.registry == tmp_path / "data/hpcenv/registry"
    assert site.state_dir == tmp_path / "state/hpcenv"


def test_channels_names_urls_and_paths(tmp_path: Path, env: dict[str, str]) -> None:
    env["CHANROOT"] = "/srv/channels"
    site = load_text(tmp_path, """
        channels:
          - conda-forge
          - conda-forge/label/broken
          - ./../.hpcenv-demo/channel
          - /abs/channel
          - ${CHANROOT}/lab
          - file:///already/url
          - https://mirror.example.org/conda-forge/
        mirrors:
          conda-forge: ~/mirror/cf
    """, env)
    assert site.channels == (
        "conda-forge",
        "conda-forge/label/broken",
        (tmp_path / ".hpcenv-demo/channel").as_uri(),
        "file:///abs/channel",
        "file:///srv/channels/lab",
        "file:///already/url",
        "https://mirror.example.org/conda-forge",
    )
    mirror = Path(env["HOME"], "mirror/cf").as_uri()
    assert site.mirrors == {"conda-forge": mirror}
    assert effective_channels(site)[0] == mirror


def test_scalars_keep_their_spelling(tmp_path: Path, env: dict[str, str]) -> None:
    # YAML 1.1 would read 1:00:00 as 3600, 13.10 as 13.1 and 2775 as decimal.
    site = load_text(tmp_path, """
        scheduler: slurm
        slurm: {time: 1:00:00, qos: 2024}
        partitions:
          - {name: g, gpus_per_node: 1, max_cuda: 13.10}
        permissions: {dir_mode: 2775}
    """, env)
    assert site.slurm.time == "1:00:00" and site.slurm.qos == "2024"
    assert site.partitions[0].max_cuda == "13.10"  # not the float 13.1
    assert site.permissions.dir_mode == 0o2775


def test_site_paths_that_are_not_files(tmp_path: Path, env: dict[str, str]) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    with pytest.raises(InvalidInput, match=r"conf \(from --site\) is a directory; give the"):
        load_site(folder, environ=env)
    with pytest.raises(InvalidInput, match=r"/dev/null \(from --site\) is not a regular file"):
        load_site(Path("/dev/null"), environ=env)
    # An optional location that exists but is not a file is an error too, never skipped:
    # skipping would hand users the next config in the lookup order without a word.
    (Path(env["HOME"]) / ".config" / "hpcenv" / "site.yaml").mkdir(parents=True)
    with pytest.raises(InvalidInput, match=r"site.yaml \(from user config\) is a directory"):
        load_site(environ=env)
    (Path(env["HOME"]) / ".config" / "hpcenv" / "remotes.yaml").mkdir()
    site = load_site(SHIPPED / "local.yaml", environ=env)
    with pytest.raises(InvalidInput, match=r"remotes file .*remotes.yaml is a directory"):
        load_remotes(site, environ=env)


def test_explicit_empty_mapping_means_all_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    site = load_text(tmp_path, "# every default\n{}\n", env)
    assert site.channels == ("conda-forge",) and site.locks.method == "flock"
    assert set(site.provenance.values()) == {"default"}


def test_empty_file_is_an_error_not_a_silent_default(tmp_path: Path,
                                                    env: dict[str, str]) -> None:
    path = write(tmp_path / "site.yaml", "# nothing but a comment\n")
    with pytest.raises(InvalidInput) as info:
        load_site(path, environ=env)
    assert str(info.value).startswith(f"{path}: empty site config; ")
    assert "'{}'" in str(info.value)


def test_provenance_records_file_and_line(tmp_path: Path, env: dict[str, str]) -> None:
    site = load_text(tmp_path, """
        # comment
        channels: [conda-forge]

        slurm:
          account: lab
        partitions:
          - {name: cpu}
          - name: gpu
            gpus_per_node: 2
            driver: "550.54.14"
    """, env)
    cfg = tmp_path / "cfg/site.yaml"
    assert site.provenance["channels"] == f"{cfg}:2"
    assert site.provenance["slurm"] == f"{cfg}:4"
    assert site.provenance["slurm.account"] == f"{cfg}:5"
    assert site.provenance["partitions.cpu"] == f"{cfg}:7"
    assert site.provenance["partitions.gpu"] == f"{cfg}:8"
    assert site.provenance["engine"] == "default"
    assert "slurm.qos" not in site.provenance


# --------------------------------------------------------------------------- errors

ERRORS = [
    # (yaml, line, message fragment)
    ("channels: [a]\nenvs_dir: [/x]\n", 2, "unknown key 'envs_dir' (did you mean 'envs_dirs'?)"),
    ("slurm:\n  acount: lab\n", 2, "unknown key 'acount' in slurm (did you mean 'account'?)"),
    ("frobnicate: 1\n", 1, "unknown key 'frobnicate' (valid keys: envs_dirs,"),
    ("envs_dirs: 5\n", 1, "envs_dirs: expected a list, got the number 5"),
    ("envs_dirs: []\n", 1, "envs_dirs: needs at least one directory"),
    ("slurm:\n  cpus_per_task: yes\n", 2, "slurm.cpus_per_task: expected a whole number"),
    ("locks: {timeout: -5}\n", 1, "locks.timeout: expected a positive number of seconds"),
    ("locks: {timeout: .nan}\n", 1, "locks.timeout: expected a positive number of seconds"),
    ("locks: {timeout: .inf}\n", 1, "locks.timeout: expected a positive number of seconds"),
    ("partitions:\n  - {name: g, gpus_per_node: 1e24, max_cuda: '12.4'}\n", 2,
     "gpus_per_node: expected a whole number"),
    ("registry: 5\n", 1, "registry: expected a path, got the number 5"),
    ("envs_dirs: [/srv/envs, 7]\n", 1, "envs_dirs: expected a path, got the number 7"),
    ("envs_dirs: [/]\n", 1, "envs_dirs: / is the filesystem root"),
    ("pkgs_dirs:\n  - /pkgs\n  - /\n", 3, "pkgs_dirs: / is the filesystem root"),
    ("state_dir: /\n", 1, "state_dir: / is the filesystem root"),
    ("permissions: {admins: [carol, \"a b\"]}\n", 1,
     "permissions.admins: 'a b' is not a user or @group name; list user names, and groups as "
     "@group"),
    ("pip: {no_index: maybe}\n", 1, "pip.no_index: expected true or false"),
    ("engine: mamba\n", 1, "engine: 'mamba' is not one of rattler | conda"),
    ("channel_priority: strcit\n", 1, "(did you mean 'strict'?)"),
    ("locks: {method: fcntl}\n", 1, "locks.method: 'fcntl' is not one of flock | mkdir"),
    ("partitions:\n  - {name: g, gpus_per_node: 2}\n", 2,
     "GPU partition gives none of driver / max_cuda / node_feature"),
    ("partitions:\n  - {name: g, gpus_per_node: 2, driver: '550.54.14', max_cuda: '12.4'}\n", 2,
     "gives driver and max_cuda; exactly one is allowed"),
    ("partitions:\n  - {name: g, gpu_type: a100, driver: '550.54.14'}\n", 2,
     "gpus_per_node is not > 0"),
    ("partitions:\n  - name: g\n    gpus_per_node: 2\n    node_feature: cuda\n", 4,
     "must contain {cuda} once"),
    ("partitions:\n  - {name: g, gpus_per_node: 2, driver: 'latest'}\n", 2,
     "'latest' is not a driver version"),
    ("partitions:\n  - {name: g, gpus_per_node: 2, max_cuda: 'twelve'}\n", 2,
     "'twelve' is not a CUDA version"),
    ("partitions:\n  - name: g\n    gpus_per_node: 2\n    max_cuda: '12.7'\n", 4,
     "partitions.g.max_cuda: CUDA 12.7 was never released (known versions: "),
    ("partitions:\n  - {name: g, gpus_per_node: 2, max_cuda: '6.5'}\n", 2,
     "partitions.g.max_cuda: CUDA 6.5 is older than every toolkit hpcenv knows"),
    ("partitions:\n  - {name: g, gpus_per_node: 2, max_cuda: 12}\n", 2,
     "partitions.g.max_cuda: '12' is not a CUDA version"),
    ("partitions:\n  - name: g\n    gpus_per_node: 2\n    driver: '340.29'\n", 4,
     "partitions.g.driver: NVIDIA driver 340.29 is older than every CUDA toolkit"),
    ("partitions:\n  - {name: g, gpus_per_node: 0, max_cuda: '12.4'}\n", 2,
     "looks like a GPU partition but gpus_per_node is not > 0"),
    ("partitions:\n  - {name: g, node_feature: 'cuda{cuda}'}\n", 2,
     "looks like a GPU partition but gpus_per_node is not > 0"),
    ("partitions:\n  - {name: cpu}\n  - {name: gpu}\n  - {name: cpu}\n", 4,
     "duplicate partition 'cpu' (first on line 2)"),
    ("partitions:\n  - {gpu_type: a100}\n", 2, "has no name"),
    ("partitions:\n  - {name: 'bad name'}\n", 2, "'bad name' is not a partition name"),
    ("partitions:\n  - {name: g, gpus: 2}\n", 2, "unknown key 'gpus' in partitions[0]"),
    ("partitions: {name: cpu}\n", 1, "partitions: expected a list"),
    ("registry: ''\n", 1, "registry: is empty"),
    ("registry: [a, b]\n", 1, "registry: expected text, got a list"),
    ("registry: http://example.org/reg\n", 1, "is a URL, not a filesystem path"),
    ("registry: \"/a\\0b\"\n", 1, "contains a line break or NUL"),
    ("state_dir: ${NOT_SET_ANYWHERE}/x\n", 1, "environment variable NOT_SET_ANYWHERE is not set"),
    ("channels: ['conda forge!']\n", 1, "is not a channel name (like conda-forge), a URL"),
    ("permissions: {dir_mode: '999'}\n", 1, "'999' is not an octal mode"),
    ("permissions: {dir_mode: '2777'}\n", 1, "'2777' lets everyone write the shared dirs"),
    ("permissions: {env_name_pattern: '(unclosed'}\n", 1, "invalid regular expression"),
    ("engine: conda\n", 1, "engine: conda needs a conda executable"),
    ("slurm: {time: forever}\n", 1, "slurm.time: 'forever' is not a valid sbatch value"),
    ("slurm: {extra_args: [exclusive]}\n", 1, "'exclusive' is not an sbatch option"),
    ("remotes:\n  c: {port: 22}\n", 2, "remotes.c: has no host"),
    ("remotes:\n  c: {host: h, port: 70000}\n", 2, "remotes.c.port: 70000 is out of range"),
    ("remotes:\n  c: {host: 'h; rm -rf ~'}\n", 2, "contains spaces or shell characters"),
    ("channels: [a]\nchannels: [b]\n", 2, "duplicate key 'channels' (first on line 1)"),
    ("channels: [a\nengine: rattler\n", 2, "invalid YAML: expected ',' or ']'"),
    ("- just\n- a list\n", 1, "expected a mapping"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), ERRORS,
                         ids=[e[2][:40] for e in ERRORS])
def test_invalid_configs_name_file_line_and_key(tmp_path: Path, env: dict[str, str], text: str,
                                                line: int, fragment: str) -> None:
    path = write(tmp_path / "site.yaml", text)
    with pytest.raises(InvalidInput) as info:
        load_site(path, environ=env)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message
    assert info.value.exit_code == 2


def test_unknown_key_message_matches_the_documented_form(tmp_path: Path,
                                                         env: dict[str, str]) -> None:
    path = write(tmp_path / "site.yaml", "# c\n" * 6 + "envs_dir: [/x]\n")
    with pytest.raises(InvalidInput) as info:
        load_site(path, environ=env)
    assert str(info.value) == f"{path}:7: unknown key 'envs_dir' (did you mean 'envs_dirs'?)"


# --------------------------------------------------------------------------- naming policy

@pytest.mark.parametrize(("pattern", "good", "bad"), [
    ("{type}-{purpose}-{stage}", "cv-resnet50-exp1", "cv-resnet50"),
    ("{type}-{purpose}-{stage}", "nlp-bert-prod", "cv_resnet50_exp1"),
    ("(cv|nlp)-[a-z0-9]+-(exp[0-9]+|prod)", "cv-resnet50-exp12", "llm-x-exp1"),
    ("lab\\.[a-z]+", "lab.shared", "lab.shared.extra"),
])
def test_check_env_name(tmp_path: Path, env: dict[str, str], pattern: str, good: str,
                        bad: str) -> None:
    site = load_text(tmp_path, f"permissions:\n  env_name_pattern: '{pattern}'\n"
                               "  env_name_help: 'e.g. cv-resnet50-exp1'\n", env)
    assert check_env_name(site, good) == good
    with pytest.raises(InvalidInput) as info:
        check_env_name(site, bad)
    assert f"'{bad}'" in str(info.value) and "site.yaml:2" in str(info.value)
    assert str(info.value).endswith("e.g. cv-resnet50-exp1")


def test_no_naming_policy_accepts_any_name(tmp_path: Path, env: dict[str, str]) -> None:
    site = load_text(tmp_path, "channels: [conda-forge]\n", env)
    assert site.permissions == Permissions()
    assert check_env_name(site, "Whatever_1") == "Whatever_1"


# --------------------------------------------------------------------------- condarc, remotes

def test_condarc_round_trips_through_yaml(tmp_path: Path, env: dict[str, str]) -> None:
    site = load_text(tmp_path, """
        envs_dirs: [/shared/envs, /other/envs]
        pkgs_dirs: [/shared/pkgs]
        channels: [conda-forge, ./chan]
        mirrors: {conda-forge: /mirror/cf}
        channel_priority: flexible
    """, env)
    text = condarc_text(site)
    assert text.startswith("# ")
    loaded = yaml.safe_load(text)
    assert loaded == condarc_dict(site)
    assert loaded == {
        "envs_dirs": ["/shared/envs", "/other/envs"],
        "pkgs_dirs": ["/shared/pkgs"],
        "channels": ["file:///mirror/cf", (tmp_path / "cfg/chan").as_uri()],
        "channel_priority": "flexible",
    }


def test_site_to_dict_is_json_serialisable(tmp_path: Path, env: dict[str, str]) -> None:
    import json

    site = parse_site_file(SHIPPED / "example-cluster.yaml", environ=env)
    data = json.loads(json.dumps(site_to_dict(site)))
    assert data["permissions"]["dir_mode"] == "2775"
    assert data["partitions"][2] == {"name": "gpu-a100", "gpu_type": "a100", "gpus_per_node": 4,
                                     "node_feature": "cuda{cuda}"}


def test_load_remotes_merges_user_file_over_site(tmp_path: Path, env: dict[str, str],
                                                 home: Path) -> None:
    site = load_text(tmp_path, """
        remotes:
          cluster: {host: login.example.org, user: siteuser}
          other: {host: other.example.org}
    """, env)
    write(home / ".config/hpcenv/remotes.yaml", """
        cluster:
          host: login.example.org
          user: me
          port: 2222
          identity_file: ~/.ssh/key
        mine: {host: 127.0.0.1, hpcenv_command: /opt/hpcenv/bin/hpcenv}
    """)
    remotes = load_remotes(site, environ=env)
    assert set(remotes) == {"cluster", "other", "mine"}
    assert remotes["cluster"].user == "me" and remotes["cluster"].port == 2222
    assert remotes["cluster"].identity_file == home / ".ssh/key"
    assert remotes["cluster"].source == f"{home}/.config/hpcenv/remotes.yaml:1"
    assert remotes["other"].host == "other.example.org"
    assert remotes["mine"].hpcenv_command == "/opt/hpcenv/bin/hpcenv"


def test_remote_known_hosts_expands_and_resolves_like_identity_file(
        tmp_path: Path, env: dict[str, str], home: Path) -> None:
    site = load_text(tmp_path, """
        remotes:
          rel: {host: a.example.org, known_hosts: keys/known_hosts}
          tilde: {host: b.example.org, known_hosts: ~/.ssh/lab_hosts}
          var: {host: c.example.org, known_hosts: "${LAB:-/opt/lab}/hosts"}
          none: {host: d.example.org, known_hosts: null}
    """, env)
    remotes = site.remotes
    # Relative to the file that names it, so a lab ships host keys next to its site config.
    assert remotes["rel"].known_hosts == tmp_path / "cfg/keys/known_hosts"
    assert remotes["tilde"].known_hosts == home / ".ssh/lab_hosts"
    assert remotes["var"].known_hosts == Path("/opt/lab/hosts")
    assert remotes["none"].known_hosts is None
    shown = site_to_dict(site)["remotes"]["rel"]["known_hosts"]
    assert shown == str(tmp_path / "cfg/keys/known_hosts")
    write(home / ".config/hpcenv/remotes.yaml", "mine: {host: e.example.org, known_hosts: kh}\n")
    mine = load_remotes(site, environ=env)["mine"]
    assert mine.known_hosts == home / ".config/hpcenv/kh"


@pytest.mark.parametrize("value, problem", [
    ("[a, b]", "expected text, got a list"),
    ("''", "is empty"),
    ("https://example.org/hosts", "'https://example.org/hosts' is a URL, not a filesystem path"),
    ("${NO_SUCH_VAR_HPCENV}/hosts", "environment variable NO_SUCH_VAR_HPCENV is not set"),
])
def test_remote_known_hosts_bad_values_name_file_and_line(
        tmp_path: Path, env: dict[str, str], value: str, problem: str) -> None:
    path = write(tmp_path / "site.yaml", f"remotes:\n  c:\n    host: h\n    known_hosts: {value}\n")
    with pytest.raises(InvalidInput, match=rf"^{path}:4: remotes\.c\.known_hosts: "
                                           rf"{re.escape(problem)}"):
        parse_site_file(path, environ=env)


def test_load_remotes_reports_errors_in_the_user_file(tmp_path: Path, env: dict[str, str],
                                                      home: Path) -> None:
    site = load_text(tmp_path, "channels: [conda-forge]\n", env)
    user = write(home / ".config/hpcenv/remotes.yaml", "c:\n  host: h\n  prot: 22\n")
    with pytest.raises(InvalidInput, match=rf"^{user}:3: unknown key 'prot' in remotes.c "
                                           r"\(did you mean 'port'\?\)$"):
        load_remotes(site, environ=env)


# --------------------------------------------------------------------------- site check

def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def with_status(checks: dict[str, Check], status: str) -> list[str]:
    return [name for name, c in checks.items() if c.status == status]


def test_check_passes_on_writable_dirs_and_local_channel(tmp_path: Path,
                                                         env: dict[str, str]) -> None:
    chan = tmp_path / "chan"
    (chan / "noarch").mkdir(parents=True)
    (chan / "noarch/repodata.json").write_text("{}")
    (tmp_path / "envs").mkdir()
    site = load_text(tmp_path, f"""
        envs_dirs: [{tmp_path}/envs]
        pkgs_dirs: [{tmp_path}/pkgs]
        registry: {tmp_path}/registry
        state_dir: {tmp_path}/state
        channels: [{chan}]
        permissions: {{group: {grp.getgrgid(os.getgid()).gr_name}}}
    """, env)
    checks = by_name(check_site(site))
    assert checks["envs_dirs[0]"].status == "pass" and "writable" in checks["envs_dirs[0]"].detail
    assert "will be created" in checks["pkgs_dirs[0]"].detail
    assert checks["hardlinks"].status == "pass"
    assert checks[f"channel {chan.as_uri()}"].status == "pass"
    assert "noarch" in checks[f"channel {chan.as_uri()}"].detail
    assert checks["permissions.group"].status == "pass"
    assert with_status(checks, "fail") == []


def test_check_reports_failures_and_warnings(tmp_path: Path, env: dict[str, str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    (tmp_path / "empty-chan").mkdir()
    site = load_text(tmp_path, f"""
        envs_dirs: [{tmp_path}/envs]
        pkgs_dirs: [/proc/hpcenv-test/pkgs]
        registry: {blocker}/registry
        state_dir: {blocker}
        channels: [{tmp_path}/missing-chan, {tmp_path}/empty-chan]
        engine: conda
        conda_exe: {tmp_path}/no/conda
        permissions: {{group: no-such-group-hpcenv}}
        templates_dir: {tmp_path}/no-templates
        remotes:
          c: {{host: h, known_hosts: {tmp_path}/no-known-hosts}}
    """, env)
    checks = by_name(check_site(site))
    assert checks["remotes.c.known_hosts"].status == "warn"
    assert checks["remotes.c.known_hosts"].detail == f"{tmp_path}/no-known-hosts is not a file"
    assert checks["registry"].status == "fail" and "cannot be created" in checks["registry"].detail
    assert checks["state_dir"].status == "fail" and "not a directory" in checks["state_dir"].detail
    # /proc is its own filesystem, so pkgs and envs cannot share hardlinks.
    assert checks["hardlinks"].status == "warn" and "copied" in checks["hardlinks"].detail
    assert checks[f"channel file://{tmp_path}/missing-chan"].status == "fail"
    assert checks[f"channel file://{tmp_path}/empty-chan"].status == "warn"
    assert checks["conda_exe"].status == "fail"
    assert checks["permissions.group"].status == "fail"
    assert checks["templates_dir"].status == "fail"


def test_cuda_newer_than_the_driver_table_is_accepted_and_check_warns(
        tmp_path: Path, env: dict[str, str]) -> None:
    site = load_text(tmp_path, """
        partitions:
          - {name: next, gpu_type: b200, gpus_per_node: 8, max_cuda: "13.6"}
          - {name: far, gpus_per_node: 8, max_cuda: "14.0"}
          - {name: now, gpus_per_node: 8, max_cuda: "13.0"}
          - {name: new-driver, gpus_per_node: 8, driver: "590.44.01"}
    """, env)
    assert [p.max_cuda for p in site.partitions[:3]] == ["13.6", "14.0", "13.0"]
    assert all(p.is_gpu for p in site.partitions)
    checks = by_name(check_site(site))
    assert checks["partition next"].status == "warn"
    assert checks["partition next"].detail.startswith("8x b200, CUDA <= 13.6: newer than "
                                                      "hpcenv's driver table (newest 13.5)")
    assert checks["partition far"].status == "warn"
    assert checks["partition now"].status == "pass"
    assert checks["partition new-driver"].status == "pass"
    assert "CUDA <= 13.1" in checks["partition new-driver"].detail


def test_gpu_fields_imply_gpus_per_node_so_is_gpu_is_the_one_definition(
        tmp_path: Path, env: dict[str, str]) -> None:
    # Every partition that carries any GPU field is a GPU partition by Partition.is_gpu, and
    # every partition without one is not: routing relies on this one definition.
    site = parse_site_file(SHIPPED / "example-cluster.yaml", environ=env)
    for p in site.partitions:
        gpu_fields = any((p.gpu_type, p.driver, p.max_cuda, p.node_feature))
        assert p.is_gpu == gpu_fields == (p.gpus_per_node > 0), p
    for field in ("gpu_type: a100", "driver: '550.54.14'", "max_cuda: '12.4'",
                  "node_feature: 'cuda{cuda}'"):
        path = write(tmp_path / "site.yaml", f"partitions:\n  - name: p\n    {field}\n")
        with pytest.raises(InvalidInput, match=rf"^{path}:2: partitions.p: looks like a GPU "
                                               "partition but gpus_per_node is not > 0"):
            parse_site_file(path, environ=env)


@pytest.mark.parametrize(("pattern", "feature", "cuda"), [
    ("cuda{cuda}", "cuda12.4", "12.4"),
    ("cuda{cuda}", "cuda13.1", "13.1"),
    ("cuda{cuda}", "cuda12", "12"),
    ("cuda{cuda}", "xcuda12.4", None),
    ("cuda{cuda}", "cuda12.4a", None),
    ("cuda{cuda}", "cuda", None),
    ("drv-{cuda}.max", "drv-12.8.max", "12.8"),
    ("drv-{cuda}.max", "drv-12.8xmax", None),   # '.' in the pattern is literal
])
def test_partition_feature_cuda(pattern: str, feature: str, cuda: str | None) -> None:
    part = Partition(name="g", gpus_per_node=1, node_feature=pattern)
    assert part.feature_cuda(feature) == cuda
    assert Partition(name="c").feature_cuda("cuda12.4") is None


def _my_group() -> str:
    import grp

    return grp.getgrgid(os.getegid()).gr_name


def test_check_warns_when_the_shared_cache_would_lock_out_other_users(
        tmp_path: Path, env: dict[str, str]) -> None:
    cache = tmp_path / "shared/pkgs"
    cache.mkdir(parents=True)
    cache.chmod(0o755)
    group = _my_group()
    site = load_text(tmp_path, f"pkgs_dirs: [{cache}]\npermissions: {{group: {group}}}\n", env)
    check = by_name(check_site(site, umask=0o022))["pkgs_dirs[0] sharing"]
    assert check.status == "warn"
    assert check.detail.startswith(f"your umask 022 makes the cache entries plain conda runs "
                                   f"create unwritable for the rest of group {group} (hpcenv "
                                   f"builds use 002); {cache} is not group-writable; {cache} is "
                                   f"not setgid")
    assert f"{cache} is open to users outside group {group}" in check.detail
    assert "umask 002" in check.detail and f"chmod 2770 {cache}" in check.detail
    assert "one service account owns the cache" in check.detail

    # The right umask alone is not enough while the directory itself is not shared.
    check = by_name(check_site(site, umask=0o002))["pkgs_dirs[0] sharing"]
    assert check.status == "warn" and check.detail.startswith(f"{cache} is not group-writable")

    # Group-shared but open to everyone: outsiders could stall the lab through its lock files.
    cache.chmod(0o2775)
    check = by_name(check_site(site, umask=0o002))["pkgs_dirs[0] sharing"]
    assert check.status == "warn" and check.detail.startswith(f"{cache} is open to users outside")

    cache.chmod(0o2770)
    check = by_name(check_site(site, umask=0o002))["pkgs_dirs[0] sharing"]
    assert check.status == "pass", check.detail
    check = by_name(check_site(site, umask=0o022))["pkgs_dirs[0] sharing"]
    assert check.status == "warn" and check.detail.startswith("your umask 022")

    # Not created yet: only the umask can be judged.
    later = load_text(tmp_path, f"pkgs_dirs: [{tmp_path}/later]\npermissions: {{group: "
                      f"{group}}}\n", env)
    assert by_name(check_site(later, umask=0o002))["pkgs_dirs[0] sharing"].status == "pass"
    assert by_name(check_site(later, umask=0o027))["pkgs_dirs[0] sharing"].status == "warn"


def test_check_names_a_cache_of_the_wrong_group(tmp_path: Path, env: dict[str, str]) -> None:
    import grp

    mine = os.getegid()
    other = next((g for g in grp.getgrall() if g.gr_gid != mine), None)
    if other is None:
        pytest.fail("this host has a single group; cannot test a foreign group")
    cache = tmp_path / "pkgs"
    cache.mkdir()
    cache.chmod(0o2770)
    site = load_text(tmp_path, f"pkgs_dirs: [{cache}]\npermissions: {{group: {other.gr_name}}}\n",
                     env)
    check = by_name(check_site(site, umask=0o002))["pkgs_dirs[0] sharing"]
    assert check.status == "warn"
    assert f"{cache} belongs to group {_my_group()}, not {other.gr_name}" in check.detail


def test_check_skips_cache_sharing_without_a_group_or_for_a_home_cache(
        tmp_path: Path, env: dict[str, str]) -> None:
    site = load_text(tmp_path, f"pkgs_dirs: [{tmp_path}/pkgs]\n", env)
    assert "pkgs_dirs[0] sharing" not in by_name(check_site(site, umask=0o022))
    home_cache = Path.home() / ".cache/hpcenv-test-never-created/pkgs"
    site = load_text(tmp_path, f"pkgs_dirs: [{home_cache}]\npermissions: {{group: "
                     f"{_my_group()}}}\n", env)
    check = by_name(check_site(site, umask=0o022))["pkgs_dirs[0] sharing"]
    assert check.status == "pass" and "per-user cache" in check.detail
    assert not home_cache.parent.exists()


def test_check_partitions_describe_gpu_capability(env: dict[str, str]) -> None:
    site = parse_site_file(SHIPPED / "example-cluster.yaml", environ=env)
    checks = by_name(check_site(site))
    assert checks["partition cpu"].detail == "CPU"
    assert "node feature 'cuda{cuda}'" in checks["partition gpu-a100"].detail
    assert "12.8" in checks["partition gpu-h100"].detail
    assert "520.61.05" in checks["partition gpu-v100"].detail


def test_check_compares_partitions_with_slurm(env: dict[str, str]) -> None:
    from hpcenv.scheduler.base import NodeState, PartitionState

    def node(name: str, part: str, features: tuple[str, ...] = (), gpu: str | None = None,
             gpus: int = 0) -> NodeState:
        return NodeState(name=name, partitions=(part,), features=features, state="idle",
                         gpu_type=gpu, gpus=gpus)

    live = [
        PartitionState("cpu", (node("c1", "cpu"),)),
        PartitionState("gpu-v100", (node("v1", "gpu-v100", gpu="v100", gpus=4),)),
        PartitionState("gpu-a100", (node("a1", "gpu-a100", ("cuda12.4",), "a100", 4),
                                    node("a2", "gpu-a100", ("ib",), "a100", 4))),
        PartitionState("gpu-h100", (node("h1", "gpu-h100", gpu="a100", gpus=4),)),
    ]
    site = parse_site_file(SHIPPED / "example-cluster.yaml", environ=env)
    checks = by_name(check_site(site, live=live))
    assert checks["slurm partition cpu"].status == "pass"
    assert checks["slurm partition gpu-v100"].status == "pass"
    a100 = checks["slurm partition gpu-a100"]
    assert a100.status == "warn" and "nodes a2 have no feature matching 'cuda{cuda}'" in a100.detail
    assert checks["slurm partition gpu-l40s"].status == "fail"
    assert "gpu_type h100 but its nodes have a100" in checks["slurm partition gpu-h100"].detail


def test_check_probes_lock_support_per_envs_dir(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "a").mkdir()
    site = load_text(tmp_path, f"envs_dirs: [{tmp_path}/a, {tmp_path}/b/c]\n", env)
    checks = by_name(check_site(site))
    assert checks["locks envs_dirs[0]"].status == "pass"
    detail = checks["locks envs_dirs[0]"].detail
    assert "lease locks work" in detail and "detected 60s after its last heartbeat" in detail
    assert str(tmp_path) in checks["locks envs_dirs[1]"].detail
    assert {"locks pkgs_dirs[0]", "locks registry"} <= set(checks)
    assert list((tmp_path / "a").iterdir()) == []  # the probe leaves nothing behind
    never = load_text(tmp_path, f"envs_dirs: [{tmp_path}/a]\nlocks: {{stale_after: null}}\n", env)
    assert by_name(check_site(never))["locks envs_dirs[0]"].status == "warn"


def test_lock_timings_validated(tmp_path: Path, env: dict[str, str]) -> None:
    site = load_text(tmp_path, "locks: {stale_after: 6, heartbeat: 1}\n", env)
    assert (site.locks.stale_after, site.locks.heartbeat) == (6.0, 1.0)
    with pytest.raises(InvalidInput, match=r"site.yaml:1: locks.heartbeat: heartbeat 4s is more "
                       r"than half of stale_after 6s"):
        load_text(tmp_path, "locks: {stale_after: 6, heartbeat: 4}\n", env)


def test_readme_reference_table_is_generated_from_the_declarations() -> None:
    from hpcenv.site.config import SiteConfig
    from hpcenv.site.reference import reference_table

    readme = (REPO / "README.md").read_text()
    start, end = "<!-- site-reference:start -->\n", "\n<!-- site-reference:end -->"
    shown = readme[readme.index(start) + len(start):readme.index(end)]
    assert shown == reference_table(SiteConfig), \
        "README's site reference is stale: paste the output of `python -m hpcenv.site.config`"


def test_permissions_admins_reads_users_and_groups(tmp_path: Path, env: dict[str, str]) -> None:
    site = load_text(tmp_path, "permissions:\n  admins: [carol, \"@labadmin\"]\n", env)
    assert site.permissions.admins == ("carol", "@labadmin")
    assert site.provenance["permissions.admins"].endswith("site.yaml:2")
    assert load_text(tmp_path, "{}\n", env).permissions.admins == ()


def test_a_kept_parse_still_reads_the_environment_of_now(tmp_path: Path, env: dict[str, str]) -> None:
    # The YAML cache keeps the parsed text only: ${VAR} and ~ are expanded on every load, so a
    # changed variable (or HOME) changes the config even when the file did not.
    cache = tmp_path / "yaml-cache"
    site = write(tmp_path / "cfg" / "site.yaml", """
        envs_dirs: ["${LAB}/envs"]
        pkgs_dirs: [~/pkgs]
    """)
    first = load_site(site, environ={**env, "LAB": "/one"}, yaml_cache=cache)
    assert list(cache.glob("*.json"))
    second = load_site(site, environ={**env, "LAB": "/two", "HOME": "/elsewhere"},
                       yaml_cache=cache)
    assert (first.envs_dirs, second.envs_dirs) == ((Path("/one/envs"),), (Path("/two/envs"),))
    assert second.pkgs_dirs == (Path("/elsewhere/pkgs"),)
    with pytest.raises(InvalidInput, match="environment variable LAB is not set"):
        load_site(site, environ=env, yaml_cache=cache)
