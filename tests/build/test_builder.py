"""The locked builder on real prefixes from the demo channel (no mocks of rattler)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from builders import KERNELS_CPU, KERNELS_CUDA
from conftest import other_group

from hpcenv.build.builder import BuildEvent, build_env
from hpcenv.build.plan import plan_build
from hpcenv.demo.site import write_demo_site
from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.fsutil import current_user
from hpcenv.site.config import load_site
from hpcenv.spec.cuda_target import NO_CUDA, CudaTarget
from hpcenv.spec.environment import parse_spec
from hpcenv.store import store_for
from hpcenv.store.debris import clean_debris, find_debris
from hpcenv.store.layout import MARKER, builds_dir, env_link
from hpcenv.store.lifecycle import remove_version, rollback
from hpcenv.store.registry import Registry


def spec(text: str, tmp_path: Path | None = None):
    source = None
    if tmp_path is not None:
        source = tmp_path / "environment.yml"
        source.write_text(text)
    return parse_spec(text, source=source)


def run_py(prefix: Path, code: str) -> str:
    out = subprocess.run([str(prefix / "bin" / "python"), "-c", code], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


def installed(prefix: Path) -> set[tuple[str, str, str]]:
    out = set()
    for path in (prefix / "conda-meta").glob("*.json"):
        rec = json.loads(path.read_text())
        out.add((rec["name"], rec["version"], rec["build"]))
    return out




def test_build_then_reuse(site, tmp_path: Path) -> None:
    progress: list[BuildEvent] = []
    first = build_env(spec(KERNELS_CPU), site, on_progress=progress.append)
    assert first.status == "built"
    rec = first.record
    assert (rec.name, rec.version, rec.status) == ("kern", 1, "ready")
    prefix = Path(rec.prefix)
    assert prefix.parent == builds_dir(store_for(site))
    assert (prefix / MARKER).is_file()
    assert run_py(prefix, "import sys; print(sys.prefix)") == str(prefix)
    # The noarch entry point works and the link points at the build.
    assert env_link(store_for(site), "kern").resolve() == prefix.resolve()
    assert subprocess.run([str(env_link(store_for(site), "kern") / "bin" / "hpcdemo-info")],
                          capture_output=True, check=False).returncode == 0
    assert Path(rec.lock_path).is_file() and rec.packages >= 4 and rec.file_count > 100
    steps = [e.text for e in progress if e.kind == "step"]
    assert any(text.startswith("installing ") for text in steps)
    # The caller reports the result once; progress does not announce it a second time.
    assert not any(text.startswith("built ") for text in steps)
    assert not [e for e in progress if e.kind != "step"]  # nothing to wait for or warn about

    second = build_env(spec(KERNELS_CPU), site)
    assert second.status == "reused"
    assert second.record == rec
    assert second.to_dict()["prefix"] == rec.prefix

    reg = Registry(site.registry)
    assert [r.version for r in reg.versions("kern")] == [1]
    assert reg.current(name="kern") == rec


def test_cuda_build_chosen_on_gpu_less_machine(site) -> None:
    cuda = build_env(spec(KERNELS_CUDA), site, name="gpu")
    assert cuda.record.cuda == CudaTarget.of("12.4") and cuda.record.cuda_override is None
    assert ("hpcdemo-kernels", "1.2.0") in {(n, v) for n, v, _ in installed(cuda.prefix)}
    assert run_py(cuda.prefix, "import hpcdemo_kernels; print(hpcdemo_kernels.VARIANT)") == "cuda124"

    cpu = build_env(spec(KERNELS_CPU), site, name="cpu")
    assert cpu.record.cuda == NO_CUDA
    assert run_py(cpu.prefix, "import hpcdemo_kernels; print(hpcdemo_kernels.VARIANT)") == "cpu"

    forced = build_env(spec(KERNELS_CUDA.replace("  - cuda-version=12.4\n", "")), site,
                       name="forced", cuda_override=NO_CUDA)
    assert forced.record.cuda == NO_CUDA and forced.record.cuda_override == NO_CUDA
    assert run_py(forced.prefix, "import hpcdemo_kernels; print(hpcdemo_kernels.VARIANT)") == "cpu"

    override = build_env(spec(KERNELS_CPU), site, name="ovr", cuda_override=CudaTarget.of("11.8"))
    assert override.record.cuda == CudaTarget.of("11.8")
    assert run_py(override.prefix,
                  "import hpcdemo_kernels; print(hpcdemo_kernels.VARIANT)") == "cuda118"


def test_envs_share_files_by_hardlink(site) -> None:
    a = build_env(spec(KERNELS_CPU), site, name="a").prefix
    b = build_env(spec(KERNELS_CPU), site, name="b").prefix
    assert a != b
    os_a, os_b = a / "lib/python3.11/os.py", b / "lib/python3.11/os.py"
    assert os_a.stat().st_ino == os_b.stat().st_ino
    assert os_a.stat().st_nlink >= 3  # the cache + two envs


def test_shared_env_hygiene(site) -> None:
    prefix = build_env(spec(KERNELS_CPU), site).prefix
    for path in [prefix, prefix / "conda-meta", *(prefix / "conda-meta").iterdir(),
                 prefix / "bin" / "python3.11"]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o444 == 0o444, f"{path} not readable by all: {oct(mode)}"
        assert mode & 0o222 == 0, f"{path} writable: {oct(mode)}"
    assert stat.S_IMODE((prefix / "bin" / "python3.11").stat().st_mode) & 0o111 == 0o111


def test_pip_section_and_variables(site, tmp_path: Path) -> None:
    text = KERNELS_CPU + "  - pip\n  - pip:\n    - hpcdemo_extra\nvariables:\n  HPCDEMO_MODE: fast\n"
    res = build_env(spec(text, tmp_path), site, name="withpip")
    assert run_py(res.prefix, "import hpcdemo_extra; print('ok')") == "ok"
    state = json.loads((res.prefix / "conda-meta" / "state").read_text())
    assert state == {"env_vars": {"HPCDEMO_MODE": "fast"}}


def test_a_pip_section_leaves_the_same_env_whatever_the_builders_bytecode_setting(
        site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A shell without PYTHONDONTWRITEBYTECODE (most users') must not get pip's own bytecode
    # into the env: unique bytes on the shared filesystem, and an env that depends on who built.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    text = KERNELS_CPU + "  - pip\n  - pip:\n    - hpcdemo_extra\n"
    res = build_env(spec(text, tmp_path), site, name="pipbytecode")
    site_packages = next(res.prefix.glob("lib/python3*/site-packages"))
    assert not list((site_packages / "pip").rglob("*.pyc"))
    # What pip installs is compiled all the same.
    assert list((site_packages / "hpcdemo_extra").rglob("*.pyc"))


def test_pip_failure_is_reported_and_nothing_published(site, tmp_path: Path) -> None:
    text = KERNELS_CPU + "  - pip:\n    - no-such-package-anywhere==9.9\n"
    with pytest.raises(HpcenvError, match=r"environment.yml:\d+: pip install failed: .*no-such"):
        build_env(spec(text, tmp_path), site, name="badpip")
    reg = Registry(site.registry)
    assert [r.status for r in reg.versions("badpip")] == ["failed"]
    assert reg.current("badpip") is None
    # The record keeps the one-line reason and the build log: steps, pip's output, the error.
    (failed,) = reg.versions("badpip")
    assert failed.error is not None and "pip install failed" in failed.error
    assert "no-such-package-anywhere" in failed.error and "\n" not in failed.error
    log = Path(failed.log_path or "").read_text()
    assert "installing" in log and "$ " in log and "-m pip install" in log
    assert log.rstrip().endswith(f"error: {failed.error}")
    assert not env_link(store_for(site), "badpip").exists()
    assert list(builds_dir(store_for(site)).iterdir()) == []


def test_pip_section_without_pip_or_python_gets_them_as_with_conda(site, tmp_path: Path) -> None:
    # conda adds `pip` to the solve for a pip: section; pip brings python.
    text = "name: nopy\ndependencies:\n  - hpcdemo-tools\n  - pip:\n    - hpcdemo_extra\n"
    res = build_env(spec(text, tmp_path), site, name="nopy")
    assert run_py(res.prefix, "import hpcdemo_extra; print('ok')") == "ok"


def test_bad_names_rejected(site) -> None:
    with pytest.raises(InvalidInput):
        build_env(spec(KERNELS_CPU), site, name="../evil")
    with pytest.raises(InvalidInput, match="no 'name:'"):
        build_env(spec("dependencies: [python]\n"), site)
    with pytest.raises(InvalidInput, match="--cuda twelve: 'twelve' is not a CUDA version"):
        plan_build(spec(KERNELS_CPU), site, cuda_override=CudaTarget.parse("twelve"))


# ("hpcdemo-kernels >=" is refused by load_spec itself since spec.py checks match specs.)
@pytest.mark.parametrize("dependency", ["doesnotexist", "hpcdemo-tools=9.9"])
def test_unsolvable_spec_fails_cleanly(site, tmp_path: Path, dependency: str) -> None:
    """The user's input is at fault (exit 2); the error names file:line and the channels, and
    nothing is left behind: no record (not even a failed one), no prefix, no symlink."""
    env = spec(f"name: x\ndependencies:\n  - python=3.11\n  - {dependency}\n", tmp_path)
    with pytest.raises(InvalidInput) as caught:
        build_env(env, site)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'environment.yml'}:4: ")
    assert f"channels searched: {site.mirrors['conda-forge']}" in message
    assert "\n" not in message
    assert Registry(site.registry).versions("x") == []
    assert not (Path(site.registry) / "x").exists()
    assert not builds_dir(store_for(site)).exists() or list(builds_dir(store_for(site)).iterdir()) == []
    assert not os.path.lexists(env_link(store_for(site), "x"))


def test_cuda_of_packages() -> None:
    from hpcenv.build.plan import cuda_of_packages
    from hpcenv.engine.base import LockedPackage

    def pkg(name: str, version: str = "1.0", depends: tuple[str, ...] = ()) -> LockedPackage:
        return LockedPackage(name=name, version=version, build="0", build_number=0,
                             subdir="linux-64", url=f"file:///c/{name}", channel="file:///c",
                             file_name=f"{name}.conda", depends=depends)

    kernels = pkg("kernels", depends=("cuda-version >=12.4,<13", "__cuda"))
    assert cuda_of_packages([pkg("python"), pkg("cuda-version", "12.4"), kernels]).version == "12.4"
    assert cuda_of_packages([pkg("cuda-version", "11.8.0"), kernels]).version == "11.8"
    # cuda-version alone constrains __cuda only where there is one: a CPU build needs no CUDA.
    assert cuda_of_packages([pkg("python"), pkg("cuda-version", "12.4"), pkg("kernels")]) == NO_CUDA
    assert cuda_of_packages([pkg("lib", depends=("__cuda_foo",)), pkg("cuda-version", "12.4")]) \
        == NO_CUDA
    assert cuda_of_packages([pkg("lib", depends=("__cuda >=12.2",)),
                             pkg("other", depends=("__cuda >=11.8", "python"))]).version == "12.2"
    assert cuda_of_packages([pkg("lib", depends=("__cuda",))]) == NO_CUDA
    assert cuda_of_packages([pkg("python", depends=("__glibc >=2.17",))]) == NO_CUDA


def test_from_lock_gives_same_packages(site) -> None:
    first = build_env(spec(KERNELS_CUDA), site)
    again = build_env(None, site, name="copy", from_lock=Path(first.record.lock_path))
    assert again.status == "built"
    assert installed(again.prefix) == installed(first.prefix)
    # No solve, so the CUDA comes from the locked packages: routing must see a CUDA env.
    assert again.record.cuda == first.record.cuda == CudaTarget.of("12.4")
    assert Registry(site.registry).get("copy", 1).cuda == CudaTarget.of("12.4")
    cpu = build_env(spec(KERNELS_CPU), site, name="cpu")
    cpu_again = build_env(None, site, name="cpu2", from_lock=Path(cpu.record.lock_path))
    assert cpu.record.cuda == NO_CUDA and cpu_again.record.cuda == NO_CUDA
    assert run_py(again.prefix, "import hpcdemo_kernels; print(hpcdemo_kernels.VARIANT)") == "cuda124"
    assert build_env(None, site, name="copy",
                     from_lock=Path(first.record.lock_path)).status == "reused"


WITH_PIP = """\
name: withpip
dependencies:
  - python=3.11
  - pip
  - pip:
      - hpcdemo_extra
variables:
  MODE: fast
"""


def test_lock_holds_pip_packages_with_hashes_and_variables(site, tmp_path: Path) -> None:
    first = build_env(spec(WITH_PIP), site)
    lock = Path(first.record.lock_path)
    text = lock.read_text()
    assert "hpcdemo_extra-0.1.0-py3-none-any.whl#sha256=" in text
    assert 'hpcenv: {"variables": {"MODE": "fast"}}' in text
    again = build_env(None, site, name="copy", from_lock=lock)
    assert installed(again.prefix) == installed(first.prefix)
    assert run_py(again.prefix, "import hpcdemo_extra; print(hpcdemo_extra.__version__)") == "0.1.0"
    state = again.prefix / "conda-meta" / "state"
    assert state.read_text() == (first.prefix / "conda-meta" / "state").read_text()
    assert Registry(site.registry).get("copy", 1).spec["pip"]["requirements"] == \
        ["hpcdemo-extra==0.1.0"]

    # A pip package whose archive is not the locked one fails the build, naming the lock.
    sha = text.split("#sha256=", 1)[1][:64]
    tampered = tmp_path / "tampered.lock.yml"
    tampered.write_text(text.replace(sha, "0" * 64))
    with pytest.raises(HpcenvError, match=rf"{tampered}: pip install failed: .*(HASH|hash)"):
        build_env(None, site, name="tampered", from_lock=tampered)
    # One without a hash (a directory or VCS install) cannot be reproduced: refused up front.
    unhashed = tmp_path / "unhashed.lock.yml"
    unhashed.write_text(text.replace(f"#sha256={sha}", ""))
    with pytest.raises(InvalidInput, match=r"pip package\(s\) hpcdemo-extra have no sha256"):
        build_env(None, site, name="unhashed", from_lock=unhashed)
    assert Registry(site.registry).versions("unhashed") == []


def test_versions_rollback_and_remove(site) -> None:
    v1 = build_env(spec(KERNELS_CPU), site).record
    v2 = build_env(spec(KERNELS_CUDA), site).record
    assert (v1.version, v2.version) == (1, 2)
    reg = Registry(site.registry)
    link = env_link(store_for(site), "kern")
    assert reg.current_version("kern") == 2 and link.resolve() == Path(v2.prefix).resolve()

    assert rollback(store_for(site), "kern").version == 1
    assert reg.current_version("kern") == 1 and link.resolve() == Path(v1.prefix).resolve()
    with pytest.raises(HpcenvError, match="no ready version older"):
        rollback(store_for(site), "kern")
    assert rollback(store_for(site), "kern", to_version=2).version == 2

    with pytest.raises(HpcenvError, match="current version"):
        remove_version(store_for(site), "kern", 2)
    removed = remove_version(store_for(site), "kern", 1)
    assert removed.status == "retired" and not Path(v1.prefix).exists()
    assert Path(v2.prefix, "bin", "python").exists()  # shared cache files survive
    with pytest.raises(HpcenvError, match="retired"):
        rollback(store_for(site), "kern", to_version=1)
    remove_version(store_for(site), "kern", 2, force=True)
    assert reg.current("kern") is None and not link.exists()
    with pytest.raises(NotFound):
        reg.get("kern", 7)


def test_rm_never_deletes_a_prefix_another_version_names(site) -> None:
    v1 = build_env(spec(KERNELS_CPU), site).record
    v2 = build_env(spec(KERNELS_CUDA), site).record
    reg = Registry(site.registry)
    # Rebuilding, reusing and rolling back never make two versions share a prefix ...
    build_env(spec(KERNELS_CPU), site)
    rollback(store_for(site), "kern", to_version=2)
    versions = reg.versions("kern")
    assert [r.version for r in versions] == [1, 2]
    assert len({os.path.realpath(r.prefix) for r in versions}) == 2
    # ... but a registry edited by hand (a record restored from backup) can: v3 names v1's.
    reg.allocate("kern", lambda v: replace(v1, version=v, status="ready"))
    removed = remove_version(store_for(site), "kern", 1)
    assert removed.status == "retired"
    assert Path(v1.prefix, MARKER).exists()
    assert run_py(Path(v1.prefix), "import hpcdemo_kernels; print(hpcdemo_kernels.VARIANT)") == "cpu"
    remove_version(store_for(site), "kern", 3)  # the last record naming it: now it goes
    assert not Path(v1.prefix).exists() and Path(v2.prefix, MARKER).exists()


def test_building_again_after_rollback_makes_it_current(site) -> None:
    build_env(spec(KERNELS_CPU), site)
    build_env(spec(KERNELS_CUDA), site)
    rollback(store_for(site), "kern")
    res = build_env(spec(KERNELS_CUDA), site)
    assert res.status == "reused" and Registry(site.registry).current_version("kern") == 2
    rollback(store_for(site), "kern")
    res = build_env(spec(KERNELS_CUDA), site, make_current=False)
    assert res.status == "reused" and Registry(site.registry).current_version("kern") == 1


def test_debris_without_live_lock_is_cleaned(site) -> None:
    reg = Registry(site.registry)
    plan = plan_build(spec(KERNELS_CPU), site)
    from hpcenv.store.registry import EnvRecord

    dead = reg.allocate("kern", lambda v: EnvRecord(
        name="kern", version=v, key="0" * 64, spec={}, spec_hash="", lock_path="",
        prefix=str(builds_dir(store_for(site)) / f"kern-{v}-000000000000"), cuda=NO_CUDA, cuda_override=None,
        channels=[], platform=plan.platform, status="building", creator="x@y",
        created="2024-01-01T00:00:00+00:00"))
    Path(dead.prefix, "conda-meta").mkdir(parents=True)
    no_prefix = reg.allocate("kern", lambda v: replace(dead, version=v, key="1" * 64,
                                                       prefix=str(builds_dir(store_for(site)) / "never")))
    assert [p for p, _ in find_debris(store_for(site))] == [Path(dead.prefix)]
    res = build_env(spec(KERNELS_CPU), site)
    assert res.record.version == 3
    assert not Path(dead.prefix).exists()
    assert reg.get("kern", dead.version).status == "failed"
    assert reg.get("kern", no_prefix.version).status == "failed"
    assert clean_debris(store_for(site)) == []


def test_group_permissions_and_naming_policy(tmp_path: Path, demo_channel) -> None:

    group = other_group()
    site = load_site(write_demo_site(
        tmp_path / "site", demo_channel,
        permissions=f'{{group: {group.gr_name}, dir_mode: "2775", '
                    'env_name_pattern: "{team}-{project}"}'))
    with pytest.raises(InvalidInput, match="naming policy"):
        build_env(spec(KERNELS_CPU), site)
    old_umask = os.umask(0o077)  # a private umask must not lock the lab out
    try:
        result = build_env(spec(KERNELS_CPU), site, name="ml-kern")
    finally:
        os.umask(old_umask)
    prefix = result.prefix
    for path in [prefix, prefix / "conda-meta", prefix / "lib" / "python3.11"]:
        st = path.stat()
        assert st.st_gid == group.gr_gid
        assert st.st_mode & stat.S_ISGID, f"{path} lacks setgid"
    assert (prefix / "conda-meta" / "history").stat().st_gid == group.gr_gid
    # Every directory hpcenv creates, not only the prefixes: the lab shares all of them; the
    # places holding locks (build locks, the package cache) are the lab's alone.
    root = tmp_path / "site"
    for directory, mode in ((root / "envs", 0o2775), (builds_dir(store_for(site)), 0o2775),
                            (root / "envs" / ".hpcenv" / "locks", 0o2770),
                            (root / "registry", 0o2775), (root / "registry" / "ml-kern", 0o2775),
                            (root / "pkgs", 0o2770)):
        st = directory.stat()
        assert stat.S_IMODE(st.st_mode) == mode, directory
        assert st.st_gid == group.gr_gid, directory
    # Registry files, the lockfile included, are group-writable with the lab group.
    for path in (root / "registry" / "ml-kern" / "1.json", Path(result.record.lock_path),
                 root / "registry" / "ml-kern" / "current"):
        st = path.stat()
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (group.gr_gid, 0o664), path
    # Build-lock files: any lab member must be able to open them for locking, nobody else.
    lock_files = list((root / "envs" / ".hpcenv" / "locks").glob("*.lock"))
    assert lock_files
    for path in lock_files:
        assert (path.stat().st_gid, stat.S_IMODE(path.stat().st_mode)) == (group.gr_gid, 0o660)


def test_cache_on_other_filesystem_warns(tmp_path: Path, demo_channel) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test tmp dir")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as other:
        site = load_site(write_demo_site(tmp_path / "site", demo_channel))
        site = replace(site, pkgs_dirs=(Path(other) / "pkgs",))
        result = build_env(spec(KERNELS_CPU), site)
        assert any("different filesystems" in w for w in result.warnings)
        cached = next(Path(other, "pkgs").glob("python-3.11*/lib/python3.11/os.py"))
        assert (result.prefix / "lib/python3.11/os.py").stat().st_ino != cached.stat().st_ino
        from hpcenv.store.debris import force_rmtree

        force_rmtree(Path(other) / "pkgs")


def test_record_says_whether_the_env_needs_a_gpu(site, tmp_path: Path) -> None:
    cuda = build_env(spec(KERNELS_CUDA), site, name="gpu").record
    cpu = build_env(spec(KERNELS_CPU), site, name="cpu").record
    assert (cuda.cuda, cuda.gpu_required) == (CudaTarget.of("12.4"), True)
    assert (cpu.cuda, cpu.gpu_required) == (NO_CUDA, False)
    # From a lock: the locked packages' CUDA decides, whatever the (absent) spec says.
    assert build_env(None, site, name="gpu2",
                     from_lock=Path(cuda.lock_path)).record.gpu_required is True
    assert build_env(None, site, name="cpu2",
                     from_lock=Path(cpu.lock_path)).record.gpu_required is None
    # Records written before the field existed still load.
    reg = Registry(site.registry)
    path = reg.root / "cpu" / "1.json"
    data = json.loads(path.read_text())
    del data["gpu_required"]
    path.write_text(json.dumps(data))
    assert reg.get("cpu", 1).gpu_required is None


def test_from_lock_accepts_an_explicit_list(site, tmp_path: Path) -> None:
    from hpcenv.build.export import export_explicit

    first = build_env(spec(KERNELS_CUDA), site)
    explicit = tmp_path / "explicit.txt"
    explicit.write_text(export_explicit(first.prefix))
    progress: list[BuildEvent] = []
    again = build_env(None, site, name="copy", from_lock=explicit, on_progress=progress.append)
    assert again.status == "built"
    assert installed(again.prefix) == installed(first.prefix)
    assert again.record.cuda == CudaTarget.of("12.4")
    assert BuildEvent("step", f"reading @EXPLICIT list {explicit}") in progress
    with pytest.raises(InvalidInput, match=r"--from-lock .*missing.txt: no such file"):
        build_env(None, site, name="copy", from_lock=tmp_path / "missing.txt")


def test_remove_env_retires_every_version_current_last(site) -> None:
    from hpcenv.store.lifecycle import remove_env

    v1 = build_env(spec(KERNELS_CUDA), site).record
    v2 = build_env(spec(KERNELS_CPU), site).record
    rollback(store_for(site), "kern", 1)
    with pytest.raises(HpcenvError, match=r"removes its ready version\(s\) 1, 2, the current "
                                          r"version 1 included; pass --force"):
        remove_env(store_for(site), "kern")
    assert Path(v1.prefix).is_dir() and Path(v2.prefix).is_dir()
    with pytest.raises(NotFound, match="no environment 'other'"):
        remove_env(store_for(site), "other", force=True)
    removed = remove_env(store_for(site), "kern", force=True)
    assert [(r.version, r.status) for r in removed] == [(2, "retired"), (1, "retired")]
    reg = Registry(site.registry)
    assert reg.current_version("kern") is None
    assert not env_link(store_for(site), "kern").is_symlink()
    assert not Path(v1.prefix).exists() and not Path(v2.prefix).exists()


def test_a_reuse_that_moves_current_says_so(site) -> None:
    """Building a spec makes it current, also when reused; the result says what was current."""
    first = build_env(spec(KERNELS_CPU), site)
    assert (first.made_current, first.previous_current, first.current_note) == (True, None, None)
    second = build_env(spec(KERNELS_CUDA), site)
    assert (second.made_current, second.previous_current) == (True, 1)
    again = build_env(spec(KERNELS_CPU), site)
    assert again.status == "reused" and again.record.version == 1
    assert (again.made_current, again.previous_current) == (True, 2)
    assert again.current_note == "current version is now 1 (was 2)"
    assert again.to_dict()["previous_current"] == 2 and again.to_dict()["made_current"] is True
    same = build_env(spec(KERNELS_CPU), site)
    assert not same.made_current and same.current_note is None
    # make_current=False (submit) never moves an existing current version ...
    kept = build_env(spec(KERNELS_CUDA), site, make_current=False)
    assert (kept.status, kept.made_current, kept.previous_current) == ("reused", False, 1)
    assert Registry(site.registry).current_version("kern") == 1
    # ... but a name's first build still becomes current: there was nothing to move.
    fresh = build_env(spec(KERNELS_CPU), site, name="fresh", make_current=False)
    assert fresh.made_current and Registry(site.registry).current_version("fresh") == 1
    assert env_link(store_for(site), "fresh").resolve() == fresh.prefix.resolve()


def _dead_building_record(site, name: str):
    from hpcenv.store.registry import EnvRecord

    reg = Registry(site.registry)
    return reg.allocate(name, lambda v: EnvRecord(
        name=name, version=v, key=f"{v:064d}", spec={}, spec_hash="", lock_path="",
        prefix=str(builds_dir(store_for(site)) / f"{name}-{v}-000000000000"), cuda=NO_CUDA,
        cuda_override=None, channels=[], platform="linux-64", status="building",
        creator=f"{current_user()}@y", created="2024-01-01T00:00:00+00:00"))


def test_failed_and_interrupted_builds_are_removable(site, tmp_path: Path) -> None:
    """A failed build (pip) or one whose builder died (Ctrl-C, kill) is no environment: env rm
    retires it without --force, and the name leaves 'env list'."""
    from hpcenv.store.lifecycle import remove_env

    bad = spec("name: bad\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n"
               "    - not-a-real-wheel\n", tmp_path)
    with pytest.raises(HpcenvError, match="pip install failed"):
        build_env(bad, site)
    dead = _dead_building_record(site, "intr")
    Path(dead.prefix, "conda-meta").mkdir(parents=True)
    reg = Registry(site.registry)
    assert [s.name for s in reg.summaries()] == []
    assert {n: [r.status for r in rs] for n, rs in reg.unfinished().items()} == \
        {"bad": ["failed"], "intr": ["building"]}

    assert [(r.version, r.status) for r in remove_env(store_for(site), "bad")] == [(1, "retired")]
    assert [(r.version, r.status) for r in remove_env(store_for(site), "intr")] == [(1, "retired")]
    assert not Path(dead.prefix).exists()
    assert reg.unfinished() == {} and reg.summaries() == []
    with pytest.raises(NotFound, match="no version left to remove"):
        remove_env(store_for(site), "bad")
    # One version at a time works too, for a dead builder's record.
    dead2 = _dead_building_record(site, "intr")
    assert remove_version(store_for(site), "intr", dead2.version).status == "retired"


def test_rm_of_the_current_version_suggests_what_works(site) -> None:
    build_env(spec(KERNELS_CPU), site)
    with pytest.raises(HpcenvError) as only:
        remove_version(store_for(site), "kern", 1)
    assert "no other version is ready; pass --force" in str(only.value)
    assert "rollback" not in str(only.value)
    build_env(spec(KERNELS_CUDA), site)
    with pytest.raises(HpcenvError, match=r"'hpcenv env rollback kern --to 1'\) or pass --force"):
        remove_version(store_for(site), "kern", 2)
    rollback(store_for(site), "kern")
    # v1 is current and has no older version: the newer ready one is the way out.
    with pytest.raises(HpcenvError, match=r"'hpcenv env rollback kern --to 2'\)"):
        remove_version(store_for(site), "kern", 1)


def test_rollback_of_an_unknown_env_names_the_registry(site) -> None:
    with pytest.raises(NotFound) as caught:
        rollback(store_for(site), "nope")
    assert str(caught.value) == (f"no environment 'nope' in the registry {site.registry}; "
                                 "see 'hpcenv env list'")


def test_missing_name_and_empty_name_are_bad_input(site, tmp_path: Path) -> None:
    nameless = spec("dependencies: [python]\n", tmp_path)
    with pytest.raises(InvalidInput) as caught:
        plan_build(nameless, site)
    assert str(caught.value) == (f"{tmp_path / 'environment.yml'}: no 'name:' in the file; "
                                 "pass --name NAME")
    with pytest.raises(InvalidInput, match="^<environment.yml>: no 'name:'"):
        plan_build(spec("dependencies: [python]\n"), site)
    with pytest.raises(InvalidInput, match=r"^--name '': invalid environment name ''"):
        plan_build(spec(KERNELS_CPU), site, name="")


def test_variable_values_reach_the_env_byte_exact_as_conda_activates_them(
        site, tmp_path: Path, real_conda: Path) -> None:
    """A trailing newline (and a carriage return) in a ``variables:`` value is kept, as real
    conda keeps it: hpcenv's activation and conda's give the program the same bytes."""
    from conftest import conda_environ

    from hpcenv.store.activation import activation_script

    text = KERNELS_CPU + 'variables:\n  TRAIL: "line\\n"\n  CR: "a\\rb"\n'
    res = build_env(spec(text, tmp_path), site, name="bytes")
    show = "import os; print(repr((os.environ['TRAIL'], os.environ['CR'])))"
    ours = subprocess.run(["bash", "-c", activation_script(res.prefix) +
                           f'\nexec python -c "{show}"'], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert ours == repr(("line\n", "a\rb"))
    home = tmp_path / "home"
    home.mkdir()
    conda = subprocess.run(["bash", "-c", f'eval "$("{real_conda}" shell.bash activate '
                            f'{res.prefix})" && exec python -c "{show}"'],
                           env=conda_environ(home), capture_output=True, text=True)
    assert conda.returncode == 0, conda.stderr
    assert conda.stdout.strip() == ours


def test_two_sites_sharing_a_registry_must_share_their_envs_dir(tmp_path: Path,
                                                                 demo_channel) -> None:
    """Records name build prefixes, which are not relocatable: a second site with another
    envs_dirs[0] would link its names into the first site's store.  It is refused, in one
    line naming both dirs, before anything is written; a site reaching the same envs dir
    through a symlink shares the registry fine."""
    registry = tmp_path / "registry"
    first = load_site(write_demo_site(tmp_path / "a", demo_channel, registry=str(registry)))
    built = build_env(spec(KERNELS_CPU, tmp_path), first, name="kern")
    second = load_site(write_demo_site(tmp_path / "b", demo_channel, registry=str(registry)))
    with pytest.raises(InvalidInput) as info:
        build_env(spec(KERNELS_CPU, tmp_path), second, name="kern")
    message = str(info.value)
    assert f"records builds in envs dir {first.envs_dirs[0]}" in message
    assert f"has envs_dirs[0] {second.envs_dirs[0]}" in message and "\n" not in message
    assert not (tmp_path / "b" / "envs").exists()  # nothing linked into the other store
    cli = subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(second.source), "env",
                          "list"], capture_output=True, text=True)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
    (tmp_path / "alias").symlink_to(first.envs_dirs[0])
    third = load_site(write_demo_site(tmp_path / "c", demo_channel, registry=str(registry),
                                      envs_dirs=f"[{tmp_path / 'alias'}]"))
    again = build_env(spec(KERNELS_CPU, tmp_path), third, name="kern")
    assert (again.status, again.record.version) == ("reused", built.record.version)
