"""Many builders at once, builders killed mid-build, held and stale locks: real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from builders import KERNELS_CPU, KERNELS_CUDA, result_of, start_builder, write_spec

from hpcenv.build.builder import BuildEvent, build_env
from hpcenv.build.plan import plan_build
from hpcenv.demo.site import write_demo_site
from hpcenv.site.config import load_site
from hpcenv.spec.environment import load_spec
from hpcenv.store import store_for
from hpcenv.store.layout import MARKER, builds_dir, env_link, key_lock
from hpcenv.store.lifecycle import remove_version
from hpcenv.store.locking import LockHolder, LockTimeout, current_holder
from hpcenv.store.registry import Registry

# A builder process: builds SPEC on SITE, prints progress lines then the result as JSON.
# With HOLD_AFTER_INSTALL set it installs for real, then touches that file and sleeps, so the
# test can SIGKILL it in the worst place: a full prefix with no completion marker.
# With KILL_AT set it SIGKILLs itself at that publish step: "before-ready" (marker written,
# record still "building") or "before-link" (registry current switched, symlink not yet).




def test_16_concurrent_builders_build_exactly_once(site, tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, KERNELS_CPU)
    procs = [start_builder(tmp_path, site.source, spec_path) for _ in range(16)]
    results = [result_of(p) for p in procs]
    statuses = sorted(r["status"] for r in results)
    assert statuses == ["built"] + ["reused"] * 15
    assert len({r["prefix"] for r in results}) == 1
    assert {(r["name"], r["version"]) for r in results} == {("kern", 1)}
    reg = Registry(site.registry)
    assert [(r.version, r.status) for r in reg.versions("kern")] == [(1, "ready")]
    assert [p.name for p in builds_dir(store_for(site)).iterdir()] == [Path(results[0]["prefix"]).name]
    assert env_link(store_for(site), "kern").resolve() == Path(results[0]["prefix"]).resolve()


def test_sigkill_mid_build_keeps_current_version(site, tmp_path: Path) -> None:
    v1 = build_env(load_spec(write_spec(tmp_path, KERNELS_CPU, "v1.yml")), site).record
    v2_spec = write_spec(tmp_path, KERNELS_CUDA, "v2.yml")
    flag = tmp_path / "installed"
    proc = start_builder(tmp_path, site.source, v2_spec, hold=flag)
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    half_built = Path(flag.read_text())
    assert (half_built / "bin" / "python").exists() and not (half_built / MARKER).exists()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()

    reg = Registry(site.registry)
    assert reg.current_version("kern") == 1
    assert env_link(store_for(site), "kern").resolve() == Path(v1.prefix).resolve()
    assert reg.get("kern", 2).status == "building"
    assert reg.find_ready(reg.get("kern", 2).key) is None

    progress: list[BuildEvent] = []
    again = build_env(load_spec(v2_spec), site, on_progress=progress.append)
    assert again.status == "built" and again.record.version == 3
    assert not half_built.exists()
    assert BuildEvent("warning", f"removed debris of a crashed build: {half_built}") in progress
    assert reg.get("kern", 2).status == "failed"
    assert reg.current_version("kern") == 3
    assert Path(v1.prefix, MARKER).exists()


def test_sigkill_during_rattler_install(site, tmp_path: Path) -> None:
    """Killed while the engine child is linking files: the engine dies with its parent."""
    v1 = build_env(load_spec(write_spec(tmp_path, KERNELS_CPU, "v1.yml")), site).record
    proc = start_builder(tmp_path, site.source, write_spec(tmp_path, KERNELS_CUDA, "v2.yml"))
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("progress: installing"):
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    reg = Registry(site.registry)
    assert reg.current_version("kern") == 1
    assert env_link(store_for(site), "kern").resolve() == Path(v1.prefix).resolve()
    half = Path(reg.get("kern", 2).prefix)
    # The engine child got SIGKILL from the kernel too: the half prefix stops changing.
    time.sleep(0.5)
    snapshot = sorted(str(p) for p in half.rglob("*")) if half.exists() else []
    time.sleep(0.5)
    assert snapshot == (sorted(str(p) for p in half.rglob("*")) if half.exists() else [])
    again = build_env(load_spec(tmp_path / "v2.yml"), site)
    assert again.status == "built" and not half.exists()


def test_sigkill_after_marker_before_ready_is_adopted(site, tmp_path: Path) -> None:
    """Killed with a complete, verified build whose record still says "building": the next
    builder of that spec adopts it (no ghost for gc to keep forever, no second build)."""
    v1 = build_env(load_spec(write_spec(tmp_path, KERNELS_CPU, "v1.yml")), site).record
    v2_spec = write_spec(tmp_path, KERNELS_CUDA, "v2.yml")
    proc = start_builder(tmp_path, site.source, v2_spec, kill_at="before-ready")
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL
    reg = Registry(site.registry)
    killed = reg.get("kern", 2)
    assert killed.status == "building" and Path(killed.prefix, MARKER).exists()
    assert reg.current_version("kern") == 1
    assert env_link(store_for(site), "kern").resolve() == Path(v1.prefix).resolve()

    again = build_env(load_spec(v2_spec), site)
    assert (again.status, again.record.version) == ("reused", 2)
    assert again.record.status == "ready" and again.record.packages > 0
    assert reg.current_version("kern") == 2
    assert env_link(store_for(site), "kern").resolve() == Path(killed.prefix).resolve()
    assert [r.version for r in reg.versions("kern")] == [1, 2]


@pytest.mark.parametrize("repair", ["rebuild", "rm"])
def test_sigkill_between_registry_and_symlink_is_healed(site, tmp_path: Path, repair: str) -> None:
    """Killed after ``current`` moved but before the symlink did: both name complete builds;
    ``run -n`` follows the registry; the next build of the spec, or removing the version the
    symlink still names, fixes the symlink."""
    v1 = build_env(load_spec(write_spec(tmp_path, KERNELS_CPU, "v1.yml")), site).record
    v2_spec = write_spec(tmp_path, KERNELS_CUDA, "v2.yml")
    proc = start_builder(tmp_path, site.source, v2_spec, kill_at="before-link")
    proc.communicate(timeout=240)
    assert proc.returncode == -signal.SIGKILL
    reg = Registry(site.registry)
    v2 = reg.get("kern", 2)
    assert reg.current_version("kern") == 2 and v2.status == "ready"
    link = env_link(store_for(site), "kern")
    assert link.resolve() == Path(v1.prefix).resolve()  # the previous version, still whole

    hpcenv = str(Path(sys.executable).with_name("hpcenv"))
    out = subprocess.run([hpcenv, "--site", str(site.source), "run", "-n", "kern", "--",
                          "python", "-c", "import sys; print(sys.prefix)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == v2.prefix

    if repair == "rebuild":
        again = build_env(load_spec(v2_spec), site)
        assert (again.status, again.record.version) == ("reused", 2)
    else:  # removing the version the stale symlink names repairs the symlink first
        remove_version(store_for(site), "kern", 1)
        assert not Path(v1.prefix).exists()
    assert link.resolve() == Path(v2.prefix).resolve()
    assert not list(link.parent.glob(".kern.link-*"))


def test_gc_waits_for_an_install_in_progress(tmp_path: Path, demo_channel) -> None:
    """gc cannot clean the package cache while a build links from it: installs hold the
    cache lock shared, gc needs it exclusive (and gives up after locks.timeout)."""
    from hpcenv.store.gc import collect_garbage
    from hpcenv.store.locking import LockTimeout

    site = load_site(write_demo_site(tmp_path / "site", demo_channel, locks="{timeout: 1}"))
    flag = tmp_path / "installed"
    proc = start_builder(tmp_path, site.source, write_spec(tmp_path, KERNELS_CPU), hold=flag)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        pkgs = Path(site.pkgs_dirs[0])
        before = sorted(p.name for p in pkgs.iterdir())
        waits: list[str] = []
        with pytest.raises(LockTimeout, match=rf"pid {proc.pid} since \S+ \(installing kern"):
            collect_garbage(store_for(site), on_wait=waits.append)
        assert len(waits) == 1 and "(installing kern" in waits[0]
        assert sorted(p.name for p in pkgs.iterdir()) == before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    report = collect_garbage(store_for(site))  # the builder is gone: its lock went with it
    assert Path(flag.read_text()) in [item.path for item in report.removed]
    assert not any(p.name.startswith("python-") for p in Path(site.pkgs_dirs[0]).iterdir())


def test_late_arrival_waits_with_holder_info_then_builds(site, tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, KERNELS_CPU))
    lock_path = key_lock(store_for(site), plan_build(spec, site).key).path
    code = textwrap.dedent(f"""
        import sys, time
        from hpcenv.store.locking import BuildLock
        with BuildLock({str(lock_path)!r}, timeout=10):
            print("held", flush=True)
            time.sleep(1.5)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    progress: list[BuildEvent] = []
    result = build_env(spec, site, on_progress=progress.append)
    holder.wait()
    assert result.status == "built" and result.waited
    waits = [e.text for e in progress if e.kind == "wait"]
    assert waits[0].startswith("waiting for ")
    assert waits and f"pid {holder.pid} since " in waits[0]
    assert "@" in waits[0].split()[2]


def test_lock_timeout_names_holder(tmp_path: Path, demo_channel) -> None:
    site = load_site(write_demo_site(tmp_path / "site", demo_channel, locks="{timeout: 0.5}"))
    spec = load_spec(write_spec(tmp_path, KERNELS_CPU))
    lock = key_lock(store_for(site), plan_build(spec, site).key)
    assert lock.try_acquire()
    try:
        with pytest.raises(LockTimeout, match=rf"pid {os.getpid()} since"):
            build_env(spec, site)
    finally:
        lock.release()


@pytest.mark.parametrize("method", ["flock", "mkdir"])
def test_lease_of_dead_builder_is_broken(tmp_path: Path, demo_channel, method: str) -> None:
    site = load_site(write_demo_site(tmp_path / "site", demo_channel,
                                     locks=f"{{method: {method}, timeout: 30}}"))
    spec = load_spec(write_spec(tmp_path, KERNELS_CPU))
    lock = key_lock(store_for(site), plan_build(spec, site).key)
    me = current_holder()
    dead = LockHolder.from_dict({**me.to_dict(), "pid_start": (me.pid_start or 0) + 1})
    lock.lease_dir.mkdir(parents=True)
    (lock.lease_dir / f"holder.{dead.token}.json").write_text(json.dumps(dead.to_dict()))
    result = build_env(spec, site)
    assert result.status == "built" and not result.waited
    assert not lock.lease_dir.exists()


def test_builder_whose_lease_was_broken_does_not_publish(tmp_path: Path, demo_channel) -> None:
    """A builder stalled past stale_after may have its lease broken by a builder on another
    node; it finds out before publishing and stops instead of moving 'current'."""
    from hpcenv.engine.rattler_engine import RattlerEngine
    from hpcenv.store.locking import LockLost

    site = load_site(write_demo_site(tmp_path / "site", demo_channel,
                                     locks="{stale_after: 1, heartbeat: 0.2}"))
    spec = load_spec(write_spec(tmp_path, KERNELS_CPU))
    lease = key_lock(store_for(site), plan_build(spec, site).key).lease_dir

    class StallingEngine(RattlerEngine):
        def install(self, prefix, packages, *, pkgs_dir):  # type: ignore[no-untyped-def]
            super().install(prefix, packages, pkgs_dir=pkgs_dir)
            for record in lease.glob("holder.*.json"):
                record.unlink()  # what a breaker on another node does to a stale lease
            time.sleep(0.6)  # long enough for our heartbeat to find its record gone

    with pytest.raises(LockLost, match="our lease was broken"):
        build_env(spec, site, engine=StallingEngine())
    registry = store_for(site).registry()
    assert registry.current_version("kern") is None
    assert not env_link(store_for(site), "kern").exists()
    assert not lease.exists()
