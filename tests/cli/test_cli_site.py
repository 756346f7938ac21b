"""``hpcenv site show|check|condarc`` and site-config errors, through the installed CLI."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import HPCENV, hpcenv, isolated_environ

from hpcenv.resources import data_dir

EXAMPLE = data_dir("site_configs") / "example-cluster.yaml"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return isolated_environ(tmp_path / "home")


# One config per error class: unknown key, wrong type, bad enum, bad partition, duplicate
# partition, garbage path, bad YAML.
BAD = [
    ("# admin notes\n" * 6 + "envs_dir: [/x]\n", 7,
     "unknown key 'envs_dir' (did you mean 'envs_dirs'?)"),
    ("slurm:\n  cpus_per_task: many\n", 2, "slurm.cpus_per_task: expected a whole number"),
    ("launcher: srun\n", 1, "launcher: 'srun' is not one of auto | conda-run | activate"),
    ("partitions:\n  - {name: g, gpus_per_node: 4}\n", 2, "none of driver / max_cuda"),
    ("partitions:\n  - {name: a}\n  - {name: a}\n", 3, "duplicate partition 'a'"),
    ("registry: ''\n", 1, "registry: is empty"),
    ("channels: [a\nengine: x\n", 2, "invalid YAML"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), BAD, ids=[b[2][:30] for b in BAD])
def test_bad_site_exits_2_with_one_line(tmp_path: Path, env: dict[str, str], text: str,
                                        line: int, fragment: str) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(text)
    result = hpcenv("--site", str(site), "site", "check", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"hpcenv: error: {site}:{line}: ")
    assert fragment in lines[0]


def test_missing_site_file_exits_2(tmp_path: Path, env: dict[str, str]) -> None:
    result = hpcenv("site", "show", "--site", str(tmp_path / "absent.yaml"), env=env)
    assert result.returncode == 2
    assert "absent.yaml (from --site) does not exist" in result.stderr


def test_show_json_gives_values_and_sources(env: dict[str, str]) -> None:
    result = hpcenv("--site", str(EXAMPLE), "site", "show", "--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["source"] == str(EXAMPLE) and data["origin"] == "--site"
    assert data["config"]["scheduler"] == "slurm"
    assert [p["name"] for p in data["config"]["partitions"]][:2] == ["cpu", "gpu-v100"]
    lines = EXAMPLE.read_text().splitlines()
    for key in ("registry", "partitions.gpu-h100", "slurm.account"):
        file, line = data["provenance"][key].rsplit(":", 1)
        assert file == str(EXAMPLE)
        assert key.split(".")[-1].removeprefix("gpu-") in lines[int(line) - 1]


def test_show_human_marks_defaults(tmp_path: Path, env: dict[str, str]) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("channels: [conda-forge]\nslurm: {account: lab}\n")
    result = hpcenv("--site", str(site), "site", "show", env=env)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:]}
    assert rows["channels"].endswith(f"{site}:1")
    assert rows["slurm.account"].endswith(f"{site}:2")
    assert rows["slurm.qos"].endswith("default")
    assert rows["engine"].split() == ["engine", "rattler", "default"]


def test_show_uses_hpcenv_site_env(tmp_path: Path, env: dict[str, str]) -> None:
    site = tmp_path / "from-env.yaml"
    site.write_text("channels: [from-env]\n")
    env["HPCENV_SITE"] = str(site)
    data = json.loads(hpcenv("site", "show", "--json", env=env).stdout)
    assert data["config"]["channels"] == ["from-env"] and data["origin"] == "$HPCENV_SITE"


def test_embedded_default_when_nothing_configured(env: dict[str, str]) -> None:
    data = json.loads(hpcenv("site", "show", "--json", env=env).stdout)
    assert data["origin"] == "embedded"
    assert data["config"]["envs_dirs"] == [f"{env['HOME']}/.local/share/hpcenv/envs"]


def local_channel(root: Path) -> Path:
    """An (empty) indexed local channel: site checks pass on it without any network."""
    channel = root / "local-channel"
    (channel / "noarch").mkdir(parents=True, exist_ok=True)
    (channel / "noarch" / "repodata.json").write_text("{}")
    return channel


def test_check_passes_and_fails(tmp_path: Path, env: dict[str, str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(f"envs_dirs: [{tmp_path}/envs]\npkgs_dirs: [{tmp_path}/pkgs]\n"
                    f"channels: [{local_channel(tmp_path)}]\n")
    result = hpcenv("--site", str(good), "site", "check", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  envs_dirs[0]" in result.stdout and "0 failed" in result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"channels: [{tmp_path}/no-channel]\n")
    result = hpcenv("--site", str(bad), "site", "check", "--json", env=env)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    failed = [c for c in data["checks"] if c["status"] == "fail"]
    assert [c["name"] for c in failed] == [f"channel file://{tmp_path}/no-channel"]


@pytest.mark.parametrize(("umask", "status"), [(0o022, "warn"), (0o002, "pass")])
def test_check_reads_the_users_umask_for_the_shared_cache(tmp_path: Path, env: dict[str, str],
                                                          umask: int, status: str) -> None:
    import grp

    group = grp.getgrgid(os.getegid()).gr_name
    cache = tmp_path / "pkgs"
    cache.mkdir()
    cache.chmod(0o2770)
    site = tmp_path / "site.yaml"
    site.write_text(f"envs_dirs: [{tmp_path}/envs]\npkgs_dirs: [{cache}]\n"
                    f"permissions: {{group: {group}}}\nchannels: [{local_channel(tmp_path)}]\n")
    result = subprocess.run([str(HPCENV), "--site", str(site), "site", "check", "--json"],
                            capture_output=True, text=True, env=env, timeout=60,
                            preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    check = next(c for c in json.loads(result.stdout)["checks"]
                 if c["name"] == "pkgs_dirs[0] sharing")
    assert check["status"] == status, check
    assert ("your umask 022" in check["detail"]) == (umask == 0o022)


def test_max_cuda_beyond_and_inside_the_driver_table_through_the_cli(tmp_path: Path, env: dict[str, str]) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(f"channels: [{local_channel(tmp_path)}]\n"
                    "partitions:\n  - name: next\n    gpus_per_node: 4\n    max_cuda: '13.6'\n")
    result = hpcenv("--site", str(site), "site", "check", env=env)
    assert result.returncode == 0, result.stderr
    assert "WARN  partition next" in result.stdout and "newer than hpcenv's driver table" in \
        result.stdout
    site.write_text("partitions:\n  - name: gap\n    gpus_per_node: 4\n    max_cuda: '12.7'\n")
    result = hpcenv("--site", str(site), "site", "show", env=env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(f"hpcenv: error: {site}:4: partitions.gap.max_cuda: CUDA "
                                    "12.7 was never released")


def test_condarc_round_trips(tmp_path: Path, env: dict[str, str]) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("envs_dirs: [/shared/envs]\npkgs_dirs: [/shared/pkgs]\n"
                    "channels: [conda-forge, ./chan]\n")
    result = hpcenv("--site", str(site), "site", "condarc", env=env)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {
        "envs_dirs": ["/shared/envs"],
        "pkgs_dirs": ["/shared/pkgs"],
        "channels": ["conda-forge", (tmp_path / "chan").as_uri()],
        "channel_priority": "strict",
    }
    as_json = json.loads(hpcenv("--site", str(site), "site", "condarc", "--json", env=env).stdout)
    assert as_json == yaml.safe_load(result.stdout)


def test_site_without_action_prints_usage(env: dict[str, str]) -> None:
    result = hpcenv("site", env=env)
    assert result.returncode == 2
    assert "show" in result.stderr and "condarc" in result.stderr


def test_show_includes_user_remotes(tmp_path: Path, env: dict[str, str]) -> None:
    remotes = Path(env["HOME"], ".config/hpcenv/remotes.yaml")
    remotes.parent.mkdir(parents=True)
    remotes.write_text("laptop-to-lab: {host: 127.0.0.1, port: 2222, known_hosts: lab_hosts}\n")
    result = hpcenv("--site", str(EXAMPLE), "site", "show", "--json", env=env)
    data = json.loads(result.stdout)
    assert set(data["config"]["remotes"]) == {"cluster", "laptop-to-lab"}
    assert data["config"]["remotes"]["laptop-to-lab"]["port"] == 2222
    assert data["config"]["remotes"]["laptop-to-lab"]["known_hosts"] == str(
        remotes.parent / "lab_hosts")
    assert data["config"]["remotes"]["cluster"]["known_hosts"] == "/shared/hpcenv/ssh_known_hosts"
    assert data["provenance"]["remotes.laptop-to-lab"] == f"{remotes}:1"
    human = hpcenv("--site", str(EXAMPLE), "site", "show", env=env).stdout
    assert f"known_hosts={remotes.parent / 'lab_hosts'}" in human


@pytest.fixture
def http_channels(tmp_path: Path) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving one conda channel, ``/chan``."""
    import functools
    import http.server
    import threading

    (tmp_path / "www" / "chan" / "noarch").mkdir(parents=True)
    (tmp_path / "www" / "chan" / "noarch" / "repodata.json").write_text("{}")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_check_probes_remote_channels_and_says_what_works(tmp_path: Path, env: dict[str, str],
                                                          http_channels: str) -> None:
    import socket
    import time

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_url = f"http://127.0.0.1:{closed.getsockname()[1]}/chan"
    closed.close()  # nothing listens there: connection refused
    silent = socket.socket()  # listens, never answers: the probe must give up on time
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/chan"
    site = tmp_path / "site.yaml"
    site.write_text(f"envs_dirs: [{tmp_path}/envs]\npkgs_dirs: [{tmp_path}/pkgs]\nchannels: "
                    f"[{http_channels}/chan, {http_channels}/nochan, {closed_url}, {silent_url}]\n")
    try:
        started = time.monotonic()
        result = hpcenv("--site", str(site), "site", "check", "--json", "--timeout", "1", env=env)
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert result.returncode == 1, result.stderr
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    good = checks[f"channel {http_channels}/chan"]
    assert good["status"] == "pass" and "reachable (HTTP 200" in good["detail"]
    missing = checks[f"channel {http_channels}/nochan"]
    assert missing["status"] == "fail" and "HTTP 404" in missing["detail"]
    refused = checks[f"channel {closed_url}"]
    assert refused["status"] == "fail" and "unreachable" in refused["detail"]
    timed_out = checks[f"channel {silent_url}"]
    assert timed_out["status"] == "fail" and "no answer within 1 s" in timed_out["detail"]
    assert elapsed < 15  # probes run in parallel, each bounded by --timeout
