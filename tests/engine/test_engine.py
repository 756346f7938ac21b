"""Engines: rattler engine against the demo channel (real solves, installs, lockfiles), and the
conda CLI engine's command lines (no conda/mamba/micromamba binary exists on these machines)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcenv.engine.base import LockedPackage, channel_url, current_platform
from hpcenv.engine.conda_cli import CondaCliEngine, explicit_text, parse_dry_run
from hpcenv.engine.lockfile import read_lock, write_lock
from hpcenv.engine.rattler_engine import RattlerEngine
from hpcenv.errors import HpcenvError, InvalidInput
from hpcenv.spec.cuda_target import DETECT_CUDA, NO_CUDA, CudaTarget

SPECS = ["python 3.11.*", "hpcdemo-kernels", "hpcdemo-tools"]


@pytest.fixture(scope="module")
def engine() -> RattlerEngine:
    return RattlerEngine()


def builds(packages: list[LockedPackage]) -> dict[str, str]:
    return {p.name: p.build for p in packages}


def test_solve_honours_cuda_override(engine: RattlerEngine, demo_channel) -> None:
    kw = dict(channels=[str(demo_channel.path)], platform=current_platform())
    gpu = builds(engine.solve(SPECS, cuda=CudaTarget.of("12.4"), **kw))
    assert gpu["hpcdemo-kernels"].startswith("cuda124_")
    old = builds(engine.solve(SPECS, cuda=CudaTarget.of("11.8"), **kw))
    assert old["hpcdemo-kernels"].startswith("cuda118_")
    assert builds(engine.solve(SPECS, cuda=NO_CUDA, **kw))["hpcdemo-kernels"].startswith("cpu_")
    # This machine has no GPU: detection gives the CPU build, silently.
    assert builds(engine.solve(SPECS, cuda=DETECT_CUDA, **kw))["hpcdemo-kernels"].startswith("cpu_")


def test_solved_packages_are_exact(engine: RattlerEngine, demo_channel) -> None:
    pkgs = engine.solve(SPECS, channels=[demo_channel.url], platform=current_platform(), cuda=NO_CUDA)
    by_name = {p.name: p for p in pkgs}
    assert {"python", "pip", "hpcdemo-kernels", "hpcdemo-tools"} <= set(by_name)
    tools = by_name["hpcdemo-tools"]
    assert tools.noarch == "python" and tools.subdir == "noarch"
    assert tools.url.startswith("file://") and tools.url.endswith(tools.file_name)
    assert len(tools.sha256 or "") == 64 and len(tools.md5 or "") == 32
    assert tools.explicit_line == f"{tools.url}#{tools.md5}"
    assert LockedPackage.from_dict(json.loads(json.dumps(tools.to_dict()))) == tools


def test_a_child_never_asked_anything_is_killed_not_waited_for() -> None:
    # A builder starts its child on taking the lock; if the build turned up meanwhile it
    # closes the child unused, which must not wait for `import rattler` to finish.
    import signal

    from hpcenv.engine.rattler_engine import RattlerChild

    child = RattlerChild()
    child.start()
    proc = child._proc
    child.close()
    assert proc is not None and proc.returncode == -signal.SIGKILL


def test_a_serving_child_told_no_request_follows_exits_on_its_own(engine: RattlerEngine,
                                                                  demo_channel) -> None:
    # A build's last engine request answered, the child exits while the build walks its
    # prefix, so the end of the serving block finds it gone instead of waiting for its exit.
    with engine.serving():
        engine.solve(SPECS, channels=[demo_channel.url], platform=current_platform(),
                     cuda=NO_CUDA)
        child = engine._child
        assert child is not None and child._proc is not None
        engine.no_more_requests()
        assert child._proc.wait(timeout=60) == 0


def test_the_childs_package_dicts_are_locked_packages(engine: RattlerEngine,
                                                      demo_channel) -> None:
    # The child builds its replies without importing hpcenv (its start is on a build's
    # critical path): each must be exactly what LockedPackage writes, every field present.
    reply = engine.call({"op": "solve", "specs": SPECS, "channels": [demo_channel.url],
                         "platform": current_platform(), "cuda": "", "cache_dir": None,
                         "channel_priority": "strict"})
    assert reply["packages"]
    for data in reply["packages"]:
        assert LockedPackage.from_dict(data).to_dict() == data


def test_unsolvable_is_one_line_error(engine: RattlerEngine, demo_channel) -> None:
    with pytest.raises(HpcenvError, match="cannot solve environment") as err:
        engine.solve(["hpcdemo-kernels 9.9"], channels=[demo_channel.url],
                     platform=current_platform(), cuda=NO_CUDA)
    assert "\n" not in str(err.value)


def test_lock_roundtrip_and_install(engine: RattlerEngine, demo_channel, tmp_path: Path) -> None:
    pkgs = engine.solve(SPECS, channels=[demo_channel.url], platform=current_platform(),
                        cuda=CudaTarget.of("12.4"))
    lock = tmp_path / "env.lock.yml"
    write_lock(lock, "demo", pkgs, [demo_channel.url], current_platform())
    text = lock.read_text()
    assert "environments:" in text and "demo:" in text and "sha256:" in text
    back = read_lock(lock)
    assert {(p.name, p.version, p.build, p.sha256) for p in back} == \
        {(p.name, p.version, p.build, p.sha256) for p in pkgs}
    assert read_lock(lock, "demo", current_platform()) == back
    with pytest.raises(InvalidInput, match="no environment 'other'"):
        read_lock(lock, "other")
    with pytest.raises(InvalidInput, match="no packages for platform osx-arm64"):
        read_lock(lock, platform="osx-arm64")
    with pytest.raises(InvalidInput, match="lockfile not found"):
        read_lock(tmp_path / "missing.yml")

    prefix = tmp_path / "env"
    engine.install(prefix, back, pkgs_dir=tmp_path / "pkgs")
    names = {json.loads(p.read_text())["name"] for p in (prefix / "conda-meta").glob("*.json")}
    assert names == {p.name for p in pkgs}
    assert (prefix / "bin" / "hpcdemo-info").exists()


def test_engine_child_failure_is_reported(tmp_path: Path) -> None:
    broken = RattlerEngine(python=str(tmp_path / "no-python-here"))
    with pytest.raises(HpcenvError, match="cannot start the rattler engine with .*no-python-here"):
        broken.solve(["x"], channels=["/nowhere"], platform="linux-64", cuda=NO_CUDA)
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    crashing.chmod(0o755)
    with pytest.raises(HpcenvError, match=r"rattler engine \(solve\) died with exit code 3: boom"):
        RattlerEngine(python=str(crashing)).solve(["x"], channels=["/c"], platform="linux-64",
                                                  cuda=NO_CUDA)
    # A child dying before it reads a large request is the same failure, not a BrokenPipeError.
    with pytest.raises(HpcenvError, match=r"died with exit code 3: boom"):
        RattlerEngine(python=str(crashing)).solve(["x" * 1_000_000], channels=["/c"],
                                                  platform="linux-64", cuda=NO_CUDA)


def test_channel_url() -> None:
    assert channel_url("/srv/chan/") == "file:///srv/chan"
    assert channel_url("conda-forge") == "conda-forge"
    assert channel_url("file:///srv/chan") == "file:///srv/chan"


# --- conda CLI engine: command construction only ---------------------------------------------

def test_conda_solve_command() -> None:
    cmd = CondaCliEngine("/opt/conda/bin/conda").solve_command(
        ["python 3.11.*", "hpcdemo-kernels"], channels=["/srv/chan", "conda-forge"],
        platform="linux-64", cuda=CudaTarget.of("12.4"), channel_priority="strict",
        scratch_prefix=Path("/tmp/x/env"))
    assert cmd.argv == ("/opt/conda/bin/conda", "create", "--dry-run", "--json", "--yes",
                        "--prefix", "/tmp/x/env", "--override-channels", "--platform",
                        "linux-64", "--channel", "file:///srv/chan", "--channel", "conda-forge",
                        "--strict-channel-priority", "python 3.11.*", "hpcdemo-kernels")
    assert cmd.env["CONDA_OVERRIDE_CUDA"] == "12.4"
    assert cmd.env["CONDA_CHANNEL_PRIORITY"] == "strict"
    no_cuda = CondaCliEngine("mamba").solve_command(
        ["x"], channels=["c"], platform="linux-64", cuda=NO_CUDA, channel_priority="flexible",
        scratch_prefix=Path("/p"))
    assert no_cuda.env["CONDA_OVERRIDE_CUDA"] == ""
    assert "--strict-channel-priority" not in no_cuda.argv
    detect = CondaCliEngine().solve_command(["x"], channels=["c"], platform="linux-64", cuda=DETECT_CUDA,
                                            channel_priority="strict", scratch_prefix=Path("/p"))
    assert "CONDA_OVERRIDE_CUDA" not in detect.env


def test_conda_install_command_and_explicit_file() -> None:
    mm = CondaCliEngine("/usr/bin/micromamba")
    assert mm.flavor == "micromamba"
    cmd = mm.install_command(Path("/envs/x"), Path("/tmp/explicit.txt"), pkgs_dir=Path("/pkgs"))
    assert cmd.argv == ("/usr/bin/micromamba", "create", "--yes", "--json", "--prefix",
                        "/envs/x", "--file", "/tmp/explicit.txt")
    assert cmd.env == {"CONDA_PKGS_DIRS": "/pkgs", "MAMBA_PKGS_DIRS": "/pkgs",
                       "CONDA_REGISTER_ENVS": "false"}
    pkg = LockedPackage(name="a", version="1", build="0", build_number=0, subdir="noarch",
                        url="file:///c/noarch/a-1-0.conda", channel="file:///c",
                        file_name="a-1-0.conda", md5="f" * 32, sha256="e" * 64)
    assert explicit_text([pkg]) == f"@EXPLICIT\nfile:///c/noarch/a-1-0.conda#{'f' * 32}\n"


def test_parse_dry_run() -> None:
    reply = {"success": True, "actions": {"LINK": [
        {"name": "python", "version": "3.11.7", "build_string": "h0_cpython", "build_number": 0,
         "base_url": "file:///c", "platform": "linux-64", "dist_name": "python-3.11.7-h0_cpython"},
        {"name": "pip", "version": "23.2", "build": "pyh_0", "build_number": 0,
         "channel": "file:///c", "subdir": "noarch", "fn": "pip-23.2-pyh_0.tar.bz2",
         "url": "file:///c/noarch/pip-23.2-pyh_0.tar.bz2", "md5": "a" * 32,
         "depends": ["python"]}]}}
    python, pip = parse_dry_run(json.dumps(reply), "linux-64")
    assert python.url == "file:///c/linux-64/python-3.11.7-h0_cpython.conda"
    assert (python.build, python.subdir) == ("h0_cpython", "linux-64")
    assert (pip.url, pip.md5, pip.depends) == ("file:///c/noarch/pip-23.2-pyh_0.tar.bz2",
                                               "a" * 32, ("python",))
    with pytest.raises(HpcenvError, match="cannot solve environment: nothing provides foo"):
        parse_dry_run(json.dumps({"success": False, "message": "nothing\n provides foo"}),
                      "linux-64")


def test_conda_missing_executable_is_clear() -> None:
    with pytest.raises(HpcenvError, match="conda executable '/no/such/conda' not found"):
        CondaCliEngine("/no/such/conda").solve(["x"], channels=["c"], platform="linux-64",
                                               cuda=NO_CUDA)


def test_conda_export_spec_forms_are_accepted(engine: RattlerEngine, demo_channel) -> None:
    """``conda env export`` writes ``name=version=build``; the solve must take it."""
    exact = engine.solve(SPECS, channels=[demo_channel.url], platform=current_platform(),
                         cuda=CudaTarget.of("12.4"))
    pinned = [f"{p.name}={p.version}={p.build}" for p in exact]
    again = engine.solve(pinned, channels=[demo_channel.url], platform=current_platform(),
                         cuda=CudaTarget.of("12.4"))
    assert {p.sha256 for p in again} == {p.sha256 for p in exact}
    with pytest.raises(InvalidInput, match="invalid match spec 'python >>= 3'"):
        engine.solve(["python >>= 3"], channels=[demo_channel.url], platform=current_platform(),
                     cuda=NO_CUDA)


def test_unreachable_channel_is_one_line_with_the_chain_kept_as_cause(
        engine: RattlerEngine, tmp_path: Path) -> None:
    from hpcenv.engine.base import ChannelUnreachable, EngineErrorChain

    with pytest.raises(ChannelUnreachable) as caught:
        engine.solve(["python"], channels=["http://127.0.0.1:9/ch"],
                     platform=current_platform(), cuda=NO_CUDA)
    message = str(caught.value)
    assert message.startswith("cannot fetch repodata for channel http://127.0.0.1:9/ch: "
                              "connection refused")
    assert message.endswith("use local channels or site mirrors (see 'hpcenv site show')")
    assert "Caused by" not in message and "\n" not in message
    assert isinstance(caught.value.__cause__, EngineErrorChain)
    assert "Caused by" in str(caught.value.__cause__)  # the whole story, for -v tracebacks


def test_local_channel_without_index_is_bad_input(engine: RattlerEngine, tmp_path: Path) -> None:
    from hpcenv.engine.base import ChannelMissing

    (tmp_path / "ch" / "linux-64").mkdir(parents=True)
    with pytest.raises(ChannelMissing) as caught:
        engine.solve(["python"], channels=[str(tmp_path / "ch")], platform=current_platform(),
                     cuda=NO_CUDA)
    assert str(caught.value) == (f"channel {(tmp_path / 'ch').as_uri()} has no "
                                 "noarch/repodata.json: build or index it first")
    assert caught.value.exit_code == 2
    with pytest.raises(ChannelMissing, match="does not exist"):
        engine.solve(["python"], channels=[str(tmp_path / "gone")],
                     platform=current_platform(), cuda=NO_CUDA)


def test_channel_errors_name_the_channel_as_written() -> None:
    from hpcenv.engine.rattler_child import _classify

    chain = ("error sending request for url (https://mirror.invalid/conda-forge/noarch/"
             "repodata_shards.msgpack.zst)\nCaused by: client error (Connect)\nCaused by: dns "
             "error\nCaused by: failed to lookup address information")
    kind, message = _classify(Exception(chain), ["conda-forge"])
    assert kind == "unreachable"
    assert message.startswith("cannot fetch repodata for channel conda-forge "
                              "(https://mirror.invalid/conda-forge): network unreachable (offline?")
    assert _classify(Exception("Cannot solve the request because of: nothing provides x"),
                     ["conda-forge"]) is None
