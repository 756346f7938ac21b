"""Garbage collection on real prefixes sharing one package cache (hardlinks)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from hpcenv.demo.site import write_demo_site
from hpcenv.engine.base import current_platform
from hpcenv.engine.rattler_engine import RattlerEngine
from hpcenv.spec.cuda_target import NO_CUDA, CudaTarget
from hpcenv.store import store_for
from hpcenv.store.gc import cache_entries, plan_and_collect, used_package_names


def make_readonly(prefix: Path) -> None:
    """What the builder does on publish: no write bit anywhere in the prefix."""
    for root, dirs, files in os.walk(prefix):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & ~0o222)
        os.chmod(root, os.stat(root).st_mode & ~0o222)


@pytest.fixture
def site(demo_channel, tmp_path: Path, test_cache_dir: Path) -> dict[str, Path]:
    """Two envs in envs/ from one cache: `keep` (CUDA kernels) and `old` (CPU kernels)."""
    engine = RattlerEngine(repodata_cache=test_cache_dir / "gc-repodata")
    dirs = {"envs": tmp_path / "envs", "pkgs": tmp_path / "pkgs", "outside": tmp_path / "outside"}
    for name, cuda in (("keep", CudaTarget.of("12.4")), ("old", NO_CUDA)):
        packages = engine.solve(["python", "hpcdemo-kernels"], channels=[str(demo_channel.path)],
                                platform=current_platform(), cuda=cuda)
        engine.install(dirs["envs"] / name, packages, pkgs_dir=dirs["pkgs"])
    make_readonly(dirs["envs"] / "old")
    return dirs


def kernels_entry(pkgs: Path, variant: str) -> str:
    (name,) = [n for n in cache_entries(pkgs) if n.startswith("hpcdemo-kernels") and variant in n]
    return name


def test_removes_unreferenced_build_and_its_packages_only(site: dict[str, Path]) -> None:
    envs, pkgs = site["envs"], site["pkgs"]
    cpu, cuda = kernels_entry(pkgs, "-cpu_"), kernels_entry(pkgs, "cuda124")
    before = set(cache_entries(pkgs))

    report = plan_and_collect(builds=[envs / "old"], debris=[], keep=[envs / "keep"],
                              envs_dirs=[envs], pkgs_dir=pkgs)

    assert not report.errors
    assert not (envs / "old").exists()
    assert set(cache_entries(pkgs)) == before - {cpu}
    assert {i.kind for i in report.removed} == {"build", "package"}
    assert [i.path.name for i in report.removed if i.kind == "package"] == [cpu]
    assert cuda in cache_entries(pkgs)
    assert report.files_freed > 0 and report.bytes_freed > 0
    # the kept env still works from the cache entries gc left alone
    out = subprocess.run([envs / "keep" / "bin" / "python", "-c", "import hpcdemo_kernels"],
                         capture_output=True)
    assert out.returncode == 0, out.stderr


def test_dry_run_reports_the_same_and_deletes_nothing(site: dict[str, Path]) -> None:
    envs, pkgs = site["envs"], site["pkgs"]
    args = dict(builds=[envs / "old"], debris=[], keep=[envs / "keep"], envs_dirs=[envs], pkgs_dir=pkgs)
    before = set(cache_entries(pkgs))
    dry = plan_and_collect(**args, dry_run=True)
    assert (envs / "old" / "conda-meta").is_dir()
    assert set(cache_entries(pkgs)) == before
    real = plan_and_collect(**args)
    assert dry.to_dict() | {"dry_run": False} == real.to_dict()


def test_bytes_count_only_inodes_whose_last_link_goes(site: dict[str, Path]) -> None:
    """`old` shares python with `keep`: removing it frees only the CPU kernels' inodes."""
    envs = site["envs"]
    report = plan_and_collect(builds=[envs / "old"], debris=[], keep=[envs / "keep"],
                              envs_dirs=[envs], pkgs_dir=None, dry_run=True)
    (item,) = report.removed
    # python alone is thousands of files; they all stay linked from `keep` and the cache
    assert item.files > 1000
    assert item.bytes < 1_000_000


def test_entry_linked_by_an_unknown_env_is_kept(site: dict[str, Path], demo_channel) -> None:
    """A user's own env outside envs_dirs hardlinks the CPU kernels: conda clean keeps it too."""
    envs, pkgs = site["envs"], site["pkgs"]
    engine = RattlerEngine()
    packages = engine.solve(["python", "hpcdemo-kernels"], channels=[str(demo_channel.path)],
                            platform=current_platform(), cuda=NO_CUDA)
    engine.install(site["outside"] / "mine", packages, pkgs_dir=pkgs)
    cpu = kernels_entry(pkgs, "-cpu_")
    report = plan_and_collect(builds=[envs / "old"], debris=[], keep=[envs / "keep"],
                              envs_dirs=[envs], pkgs_dir=pkgs)
    assert cpu in cache_entries(pkgs)
    assert [i.kind for i in report.removed] == ["build"]


def test_unreferenced_conda_env_in_envs_dirs_is_live(site: dict[str, Path]) -> None:
    """An env in envs_dirs not given as a build (e.g. made by conda) keeps its packages."""
    envs, pkgs = site["envs"], site["pkgs"]
    before = set(cache_entries(pkgs))
    report = plan_and_collect(builds=[], debris=[], keep=[], envs_dirs=[envs], pkgs_dir=pkgs)
    assert report.removed == []
    assert set(cache_entries(pkgs)) == before


def test_packages_named_by_records_are_used_even_without_links(site: dict[str, Path]) -> None:
    names = used_package_names([site["envs"] / "keep"])
    assert kernels_entry(site["pkgs"], "cuda124") in names
    assert any(n.startswith("python-3.11") for n in names)


def test_kept_build_is_never_removed(site: dict[str, Path]) -> None:
    envs = site["envs"]
    report = plan_and_collect(builds=[envs / "keep"], debris=[], keep=[envs / "keep"],
                              envs_dirs=[envs], pkgs_dir=site["pkgs"])
    assert report.removed == []
    assert (envs / "keep" / "conda-meta").is_dir()


def test_debris_and_orphan_archives(site: dict[str, Path]) -> None:
    envs, pkgs = site["envs"], site["pkgs"]
    half = envs / ".half-built"
    (half / "conda-meta").mkdir(parents=True)
    (half / "lib").mkdir()
    (half / "lib" / "partial.so").write_bytes(b"\0" * 10000)
    orphan = pkgs / "gone-1.0-0.conda"
    orphan.write_bytes(b"x" * 5000)
    report = plan_and_collect(builds=[], debris=[half], keep=[envs / "keep", envs / "old"],
                              envs_dirs=[envs], pkgs_dir=pkgs)
    assert not half.exists() and not orphan.exists()
    kinds = {i.path.name: i.kind for i in report.removed}
    assert kinds == {".half-built": "debris", "gone-1.0-0.conda": "package"}
    assert report.bytes_freed >= 15000


def test_readonly_prefix_is_removable_and_stats_are_sane(site: dict[str, Path]) -> None:
    old = site["envs"] / "old"
    assert not os.stat(old).st_mode & stat.S_IWUSR
    plan_and_collect(builds=[old], debris=[], keep=[], envs_dirs=[], pkgs_dir=None)
    assert not old.exists()


def test_collect_garbage_on_a_site(demo_channel, tmp_path: Path) -> None:
    """Builder-made site: a complete build whose record failed is garbage, so is debris; the
    current build and the packages it uses stay."""
    from dataclasses import replace

    from hpcenv.build.builder import build_env
    from hpcenv.site.config import load_site
    from hpcenv.spec.environment import parse_spec
    from hpcenv.store.gc import collect_garbage
    from hpcenv.store.layout import MARKER, builds_dir

    site = load_site(write_demo_site(tmp_path / "site", demo_channel))
    cpu = build_env(parse_spec("name: k\ndependencies: [python=3.11, hpcdemo-kernels]\n"), site,
                    cuda_override=NO_CUDA)
    cuda = build_env(parse_spec("name: k\ndependencies: [python=3.11, hpcdemo-kernels]\n"), site,
                     cuda_override=CudaTarget.of("12.4"))
    registry = store_for(site).registry()
    # A crash between the completion marker and the record update leaves exactly this behind.
    registry.update(replace(cpu.record, status="failed"))
    debris = builds_dir(store_for(site)) / "k-9-deadbeefdead"
    (debris / "conda-meta").mkdir(parents=True)
    assert (cpu.prefix / MARKER).is_file()

    dry = collect_garbage(store_for(site), dry_run=True)
    kinds = {(i.kind, i.path.name) for i in dry.removed}
    assert ("build", cpu.prefix.name) in kinds and ("debris", debris.name) in kinds
    assert any(k == "package" and "-cpu_" in n for k, n in kinds)
    assert cpu.prefix.is_dir() and debris.is_dir()

    report = collect_garbage(store_for(site))
    assert report.to_dict() | {"dry_run": True} == dry.to_dict()
    assert not cpu.prefix.exists() and not debris.exists()
    assert cuda.prefix.is_dir() and not report.errors
    out = subprocess.run([cuda.prefix / "bin" / "python", "-c", "import hpcdemo_kernels"],
                         capture_output=True)
    assert out.returncode == 0, out.stderr
    assert collect_garbage(store_for(site)).removed == []


def test_gc_retires_records_of_builds_that_never_finished(demo_channel, tmp_path: Path) -> None:
    """A failed record, and a 'building' one whose builder died before making its prefix, are
    retired by gc (with any debris): the name then leaves 'env list'."""
    from hpcenv.build.builder import build_env
    from hpcenv.site.config import load_site
    from hpcenv.spec.environment import parse_spec
    from hpcenv.store.gc import collect_garbage
    from hpcenv.store.layout import builds_dir
    from hpcenv.store.registry import EnvRecord

    site = load_site(write_demo_site(tmp_path / "site", demo_channel))
    good = build_env(parse_spec("name: k\ndependencies: [python=3.11]\n"), site)
    registry = store_for(site).registry()

    def record(name: str, status: str, prefix: str) -> EnvRecord:
        return registry.allocate(name, lambda v: EnvRecord(
            name=name, version=v, key=f"{v}{name}".ljust(64, "0"), spec={}, spec_hash="",
            lock_path="", prefix=prefix, cuda=NO_CUDA, cuda_override=None, channels=[],
            platform="linux-64", status=status, creator="x@y",
            created="2024-01-01T00:00:00+00:00"))

    failed = record("pipfail", "failed", str(builds_dir(store_for(site)) / "pipfail-1-000000000000"))
    killed = record("intr", "building", str(builds_dir(store_for(site)) / "never-made"))
    debris = record("intr", "building", str(builds_dir(store_for(site)) / "intr-2-000000000000"))
    Path(debris.prefix, "conda-meta").mkdir(parents=True)
    assert set(registry.unfinished()) == {"pipfail", "intr"}

    dry = collect_garbage(store_for(site), dry_run=True)
    assert {(r.name, r.version, r.status) for r in dry.retired} == \
        {("pipfail", 1, "failed"), ("intr", 1, "building"), ("intr", 2, "building")}
    assert set(registry.unfinished()) == {"pipfail", "intr"}
    report = collect_garbage(store_for(site))
    assert report.to_dict()["retired"] == dry.to_dict()["retired"]
    assert registry.unfinished() == {} and [s.name for s in registry.summaries()] == ["k"]
    assert {r.status for r in registry.versions("intr")} == {"retired"}
    assert registry.get("pipfail", failed.version).status == "retired"
    assert not Path(debris.prefix).exists() and killed.version == 1
    assert good.prefix.is_dir() and registry.current_version("k") == 1
    assert collect_garbage(store_for(site)).retired == []


def test_gc_leaves_a_build_alone_while_its_holder_elsewhere_renews_its_lease(
        demo_channel, tmp_path: Path) -> None:
    """A 'building' record whose key lease is held from another login node is in progress,
    however old the build: gc keeps it until the lease is stale_after seconds without
    heartbeat; then the prefix is debris.  Staging dirs of killed lock takers go once old."""
    import json
    import os
    import time

    from hpcenv.site.config import load_site
    from hpcenv.store.gc import collect_garbage
    from hpcenv.store.layout import builds_dir, key_lock, locks_dir
    from hpcenv.store.locking import current_holder
    from hpcenv.store.registry import EnvRecord

    site = load_site(write_demo_site(tmp_path / "site", demo_channel,
                                     locks="{stale_after: 30, heartbeat: 5}"))
    registry = store_for(site).registry()
    key = "e" * 64
    building = registry.allocate("far", lambda v: EnvRecord(
        name="far", version=v, key=key, spec={}, spec_hash="", lock_path="",
        prefix=str(builds_dir(store_for(site)) / "far-1-eeeeeeeeeeee"), cuda=NO_CUDA, cuda_override=None,
        channels=[], platform="linux-64", status="building", creator="bob@login2",
        created="2024-01-01T00:00:00+00:00"))
    Path(building.prefix, "conda-meta").mkdir(parents=True)
    lease = key_lock(store_for(site), key).lease_dir
    lease.mkdir(parents=True)
    holder = {**current_holder().to_dict(), "host": "login2", "pid": 4242}
    record = lease / f"holder.{holder['token']}.json"
    record.write_text(json.dumps(holder))
    staging = locks_dir(store_for(site)) / f".{lease.name}.0123abcd.new"
    staging.mkdir()
    old = time.time() - 120
    os.utime(staging, (old, old))

    report = collect_garbage(store_for(site))
    assert Path(building.prefix).is_dir() and report.retired == []
    assert registry.get("far", 1).status == "building"
    assert not staging.exists()

    os.utime(record, (old, old))  # its holder stopped renewing two minutes ago
    report = collect_garbage(store_for(site))
    assert not Path(building.prefix).exists()
    assert [(r.name, r.status) for r in report.retired] == [("far", "building")]
    assert not lease.exists()
