"""Export of a real installed env (made from the demo channel) and its round trip."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest

from hpcenv.build.export import (
    export_environment_yml,
    export_explicit,
    export_lock,
    installed_packages,
    pip_installed,
)
from hpcenv.engine.base import current_platform
from hpcenv.engine.rattler_engine import RattlerEngine
from hpcenv.errors import HpcenvError, NotFound
from hpcenv.spec.cuda_target import CudaTarget
from hpcenv.spec.environment import parse_spec

SPECS = ["python", "hpcdemo-kernels", "hpcdemo-tools"]


def package_set(prefix: Path) -> set[tuple[str, str, str]]:
    return {(p.name, p.version, p.build) for p in installed_packages(prefix)}


@pytest.fixture(scope="module")
def env(demo_channel, tmp_path_factory) -> Path:
    """A CUDA 12.4 env with a pip-installed wheel and an env variable, built outside hpcenv."""
    root = tmp_path_factory.mktemp("export")
    engine = RattlerEngine(repodata_cache=root / "repodata")
    packages = engine.solve(SPECS, channels=[str(demo_channel.path)], platform=current_platform(),
                            cuda=CudaTarget.of("12.4"))
    prefix = root / "envs" / "src"
    engine.install(prefix, packages, pkgs_dir=root / "pkgs")
    subprocess.run([prefix / "bin" / "python", "-m", "pip", "install", "-q", "--no-index",
                    "--find-links", str(demo_channel.wheels), "hpcdemo_extra"],
                   check=True, capture_output=True)
    (prefix / "conda-meta" / "state").write_text(json.dumps({"env_vars": {"OMP_NUM_THREADS": "2"}}))
    return prefix


def test_yml_pins_every_package_and_lists_pip_dists(env: Path, demo_channel) -> None:
    text = export_environment_yml(env, name="demo", channels=[str(demo_channel.path)])
    spec = parse_spec(text)
    assert spec.name == "demo"
    assert spec.channels == (str(demo_channel.path),)
    assert set(spec.conda) == {f"{n}={v}={b}" for n, v, b in package_set(env)}
    assert any(s.startswith("hpcdemo-kernels=1.2.0=cuda124") for s in spec.conda)
    # pip itself is a conda package here: only the wheel pip installed is in the pip section
    assert spec.pip == ("hpcdemo_extra==0.1.0",)
    assert dict(spec.variables) == {"OMP_NUM_THREADS": "2"}
    assert "prefix:" not in text


def test_no_builds(env: Path) -> None:
    spec = parse_spec(export_environment_yml(env, no_builds=True))
    assert set(spec.conda) == {f"{n}={v}" for n, v, _ in package_set(env)}
    assert spec.name == "src"


def test_channels_default_to_those_of_the_packages(env: Path, demo_channel) -> None:
    spec = parse_spec(export_environment_yml(env))
    assert spec.channels == (demo_channel.url,)


def test_exported_yml_solves_to_the_same_package_set(env: Path, demo_channel, tmp_path: Path) -> None:
    spec = parse_spec(export_environment_yml(env, channels=[str(demo_channel.path)]))
    engine = RattlerEngine(repodata_cache=tmp_path / "repodata")
    packages = engine.solve(list(spec.conda), channels=list(spec.channels),
                            platform=current_platform(), cuda=CudaTarget.of("12.4"))
    assert {(p.name, p.version, p.build) for p in packages} == package_set(env)


def test_explicit_lists_every_archive_with_its_sha256(env: Path) -> None:
    lines = export_explicit(env).splitlines()
    assert "@EXPLICIT" in lines
    assert f"# platform: {current_platform()}" in lines
    entries = [line for line in lines[lines.index("@EXPLICIT") + 1:] if not line.startswith("#")]
    assert len(entries) == len(package_set(env))
    for entry in entries:
        url, _, checksum = entry.partition("#")
        archive = Path(urlparse(url).path)
        assert hashlib.sha256(archive.read_bytes()).hexdigest() == checksum
    assert "# pip: hpcdemo_extra==0.1.0 (not installable from an explicit list)" in lines


def test_pip_installed_ignores_conda_owned_dists(env: Path) -> None:
    names = {d.name for d in pip_installed(env)}
    assert names == {"hpcdemo_extra"}
    assert (next(env.glob("lib/python*/site-packages/hpcdemo_tools-*.dist-info"))).is_dir()


def test_export_lock_and_missing_lock(tmp_path: Path) -> None:
    lock = tmp_path / "env.lock"
    lock.write_text("version: 6\n")
    assert export_lock(lock) == "version: 6\n"
    with pytest.raises(NotFound, match="rebuild"):
        export_lock(tmp_path / "missing.lock")


def test_not_an_env(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="conda-meta"):
        export_environment_yml(tmp_path)


def test_export_record_and_lock_omissions(env: Path, tmp_path: Path) -> None:
    from hpcenv.build.export import export_record, lock_omissions
    from hpcenv.store.registry import EnvRecord

    lock = tmp_path / "1.lock.yml"
    lock.write_text("version: 6\n")
    record = EnvRecord(name="demo", version=1, key="k", spec={}, spec_hash="", lock_path=str(lock),
                       prefix=str(env), cuda=CudaTarget.of("12.4"), cuda_override=None, channels=[],
                       platform=current_platform(), status="ready", creator="u@h",
                       created="2024-05-01T10:00:00+00:00", source="/x/environment.yml")
    assert export_record(record, "lock") == "version: 6\n"
    assert export_record(record, "explicit") == export_explicit(env, name="demo")
    # The header's command names the env: a list has no 'name:' to fall back on.
    assert "# $ hpcenv env build --from-lock <this file> --name demo\n" in \
        export_record(record, "explicit")
    assert export_record(record, no_builds=True) == export_environment_yml(
        env, name="demo", no_builds=True)
    # "version: 6" has no hpcenv: section, so it may lack pip packages and variables.
    assert lock_omissions(record) == (
        "demo also has pip packages (hpcdemo_extra) and variables, which this (older) lockfile "
        "does not hold; rebuild with 'hpcenv env build /x/environment.yml --from-lock LOCK', or export "
        "environment.yml instead")
    gone = EnvRecord(**{**record.to_dict(), "prefix": str(tmp_path / "gone"), "status": "retired"})
    assert lock_omissions(gone) is None
    assert export_record(gone, "lock") == "version: 6\n"
    with pytest.raises(HpcenvError, match=r"demo version 1 is retired and its prefix is gone; "
                                          r"export its lockfile instead \(--lock\)"):
        export_record(gone, "explicit")
