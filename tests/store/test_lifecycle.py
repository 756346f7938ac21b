"""An env's lifecycle after its build (hpcenv.store.lifecycle): publish, sync_link, rollback and
removal, on real builds from the demo channel.  Crashes are real: a child process SIGKILLed
between the two publish steps (registry ``current``, then the symlink)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from builders import (
    KERNELS_CPU,
    KERNELS_CUDA,
    building_record,
    kill,
    lock_held,
    start_lock_holder,
)

from hpcenv.build.builder import build_env
from hpcenv.demo.site import write_demo_site
from hpcenv.errors import HpcenvError, NotFound
from hpcenv.site.config import SiteConfig, load_site
from hpcenv.spec.cuda_target import CudaTarget
from hpcenv.spec.environment import parse_spec
from hpcenv.store import store_for
from hpcenv.store.debris import force_rmtree
from hpcenv.store.layout import MARKER, env_link
from hpcenv.store.lifecycle import (
    link_points_to,
    publish,
    remove_env,
    remove_version,
    rollback,
    sync_link,
)
from hpcenv.store.registry import EnvRecord, Registry

# Runs one lifecycle operation on env "kern" and SIGKILLs itself at the symlink step, i.e.
# after the registry's ``current`` has been written: a crash between the two steps.
CRASHING = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import hpcenv.store.lifecycle as lifecycle
    from hpcenv.site.config import load_site
    from hpcenv.store import store_for

    def die(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    lifecycle._point_link = die
    store = store_for(load_site(Path(sys.argv[1])))
    operation, version = sys.argv[2], int(sys.argv[3])
    registry = store.registry()
    if operation == "publish":
        lifecycle.publish(store, registry, registry.get("kern", version))
    elif operation == "rollback":
        lifecycle.rollback(store, "kern", version)
    else:
        lifecycle.remove_version(store, "kern", version, force=True)
    sys.exit(3)
""")


def crash_during(site: SiteConfig, operation: str, version: int) -> None:
    proc = subprocess.run([sys.executable, "-c", CRASHING, str(site.source), operation,
                           str(version)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@dataclass(frozen=True)
class Lab:
    site: SiteConfig
    registry: Registry
    v1: EnvRecord   # CPU
    v2: EnvRecord   # CUDA 12.4
    v3: EnvRecord   # CUDA 11.8, current

    @property
    def link(self) -> Path:
        return env_link(store_for(self.site), "kern")

    def points_at(self, record: EnvRecord) -> bool:
        return link_points_to(store_for(self.site), "kern", record.prefix)


@pytest.fixture
def lab(tmp_path: Path, demo_channel) -> Lab:
    site = load_site(write_demo_site(tmp_path / "site", demo_channel))
    v1 = build_env(parse_spec(KERNELS_CPU), site).record
    v2 = build_env(parse_spec(KERNELS_CUDA), site).record
    v3 = build_env(parse_spec(KERNELS_CPU), site, cuda_override=CudaTarget.of("11.8")).record
    registry = store_for(site).registry()
    assert [r.version for r in (v1, v2, v3)] == [1, 2, 3]
    assert registry.current_version("kern") == 3
    return Lab(site, registry, v1, v2, v3)


# --- publish and sync_link ---------------------------------------------------------------------

def test_publish_returns_what_was_current_and_only_if_none_changes_nothing(lab: Lab) -> None:
    assert publish(store_for(lab.site), lab.registry, lab.v1) == 3
    assert lab.registry.current_version("kern") == 1 and lab.points_at(lab.v1)
    assert publish(store_for(lab.site), lab.registry, lab.v1) == 1  # again: same state
    assert lab.points_at(lab.v1)
    assert publish(store_for(lab.site), lab.registry, lab.v2, only_if_none=True) == 1
    assert lab.registry.current_version("kern") == 1 and lab.points_at(lab.v1)
    lab.registry.set_current("kern", None)
    lab.link.unlink()
    assert publish(store_for(lab.site), lab.registry, lab.v2, only_if_none=True) is None
    assert lab.registry.current_version("kern") == 2 and lab.points_at(lab.v2)
    # The link is relative, into the builds dir.
    assert not os.readlink(lab.link).startswith("/")


@pytest.mark.parametrize(("operation", "version", "now_current"),
                         [("publish", 1, 1), ("rollback", 2, 2), ("rm", 3, 2)])
def test_crash_between_registry_and_symlink(lab: Lab, operation: str, version: int,
                                            now_current: int) -> None:
    """The registry is written first: a publisher killed before the symlink step leaves
    ``current`` ahead of a symlink that still names the old, complete build; sync_link heals."""
    crash_during(lab.site, operation, version)
    assert lab.registry.current_version("kern") == now_current
    assert lab.points_at(lab.v3)                       # the symlink did not move ...
    assert Path(lab.v3.prefix, MARKER).is_file()       # ... and still names a whole build
    assert not list(lab.link.parent.glob(".kern.link-*"))
    if operation == "rm":
        # current moved before the retirement: v3 is a ready, non-current version, whole.
        assert lab.registry.get("kern", 3).status == "ready"
    healed = sync_link(store_for(lab.site), "kern")  # the name lock the killed process held is free
    current = lab.registry.get("kern", now_current)
    assert healed == Path(current.prefix)
    assert lab.points_at(current)
    if operation == "rm":  # running it again finishes the job, --force no longer needed
        assert remove_version(store_for(lab.site), "kern", 3).status == "retired"
        assert not Path(lab.v3.prefix).exists() and lab.points_at(current)


def test_removing_the_version_a_stale_link_names_repairs_the_link(lab: Lab) -> None:
    crash_during(lab.site, "publish", 1)
    assert lab.registry.current_version("kern") == 1 and lab.points_at(lab.v3)
    remove_version(store_for(lab.site), "kern", 3)  # not current: no --force needed
    assert lab.points_at(lab.v1)
    assert not Path(lab.v3.prefix).exists()


def test_sync_link_follows_the_registry(lab: Lab) -> None:
    # A killed publisher's temp link (made, not yet renamed over the env link) is cleared.
    leftover = lab.link.with_name(".kern.link-999999-deadbeef")
    leftover.symlink_to(f".hpcenv/builds/{Path(lab.v1.prefix).name}")
    lab.link.unlink()
    assert sync_link(store_for(lab.site), "kern") == Path(lab.v3.prefix)
    assert lab.points_at(lab.v3) and not os.path.lexists(leftover)
    lab.registry.set_current("kern", None)
    assert sync_link(store_for(lab.site), "kern") is None
    assert not os.path.lexists(lab.link)
    assert sync_link(store_for(lab.site), "kern") is None  # nothing to remove: fine


@pytest.mark.parametrize("foreign", ["directory", "file"])
def test_an_env_path_hpcenv_did_not_make_is_refused_before_anything_moves(
        lab: Lab, foreign: str) -> None:
    lab.link.unlink()
    if foreign == "directory":
        (lab.link / "conda-meta").mkdir(parents=True)
    else:
        lab.link.write_text("not an env")
    for attempt in (lambda: publish(store_for(lab.site), lab.registry, lab.v1),
                    lambda: rollback(store_for(lab.site), "kern"),
                    lambda: sync_link(store_for(lab.site), "kern")):
        with pytest.raises(HpcenvError, match=r"is not an hpcenv-managed symlink"):
            attempt()
        assert lab.registry.current_version("kern") == 3
    assert lab.link.exists() and not lab.link.is_symlink()


# --- rollback ----------------------------------------------------------------------------------

def test_rollback_picks_the_newest_complete_ready_older_version(lab: Lab) -> None:
    force_rmtree(Path(lab.v2.prefix))  # ready in the registry, but its build is gone
    assert rollback(store_for(lab.site), "kern").version == 1  # skips v2
    assert lab.registry.current_version("kern") == 1 and lab.points_at(lab.v1)
    with pytest.raises(HpcenvError, match=r"^kern: no ready version older than 1 to roll back "
                                          r"to; see 'hpcenv env history kern'$"):
        rollback(store_for(lab.site), "kern")
    with pytest.raises(HpcenvError) as caught:
        rollback(store_for(lab.site), "kern", to_version=2)
    message = str(caught.value)
    assert message.startswith(f"kern version 2 has no complete build at {lab.v2.prefix}; ")
    assert f"--from-lock {lab.v2.lock_path}" in message
    assert lab.registry.current_version("kern") == 1
    lab.registry.set_status("kern", 3, "failed")
    with pytest.raises(HpcenvError, match=r"^kern version 3 is failed, not a ready build"):
        rollback(store_for(lab.site), "kern", to_version=3)
    with pytest.raises(NotFound, match=r"has no version 9 \(versions: 1, 2, 3\)"):
        rollback(store_for(lab.site), "kern", to_version=9)
    lab.registry.set_current("kern", None)
    with pytest.raises(NotFound, match=r"no current version to roll back from; pick one with "
                                       r"--to VERSION"):
        rollback(store_for(lab.site), "kern")
    assert rollback(store_for(lab.site), "kern", to_version=1).version == 1
    assert lab.points_at(lab.v1)


# --- removal -----------------------------------------------------------------------------------

def test_remove_keeps_history_and_only_touches_its_own_prefix(lab: Lab) -> None:
    removed = remove_version(store_for(lab.site), "kern", 2)
    assert removed.status == "retired" == lab.registry.get("kern", 2).status
    assert not Path(lab.v2.prefix).exists()
    assert Path(lab.v2.lock_path).is_file()  # the lockfile stays, to rebuild from
    assert lab.registry.current_version("kern") == 3 and lab.points_at(lab.v3)
    for record in (lab.v1, lab.v3):
        out = subprocess.run([str(Path(record.prefix, "bin", "python")), "-c", "print(1)"],
                             capture_output=True, text=True, check=True)
        assert out.stdout == "1\n"


def test_the_current_version_goes_only_with_force(lab: Lab) -> None:
    rollback(store_for(lab.site), "kern", to_version=2)
    with pytest.raises(HpcenvError, match=r"^kern version 2 is the current version; make "
                                          r"another current first \('hpcenv env rollback kern "
                                          r"--to 1'\) or pass --force$"):
        remove_version(store_for(lab.site), "kern", 2)
    assert Path(lab.v2.prefix, MARKER).is_file()
    # With force the newest other usable version becomes current.
    remove_version(store_for(lab.site), "kern", 2, force=True)
    assert lab.registry.current_version("kern") == 3 and lab.points_at(lab.v3)
    remove_version(store_for(lab.site), "kern", 3, force=True)
    assert lab.registry.current_version("kern") == 1 and lab.points_at(lab.v1)
    remove_version(store_for(lab.site), "kern", 1, force=True)
    assert lab.registry.current_version("kern") is None
    assert not os.path.lexists(lab.link)
    assert [r.status for r in lab.registry.versions("kern")] == ["retired"] * 3


def test_a_version_whose_builder_is_at_work_is_refused(lab: Lab) -> None:
    building = building_record(lab.site, "kern", "b" * 64)
    Path(building.prefix, "conda-meta").mkdir(parents=True)
    with lock_held(lab.site, building.key):
        # The refusal names the builder and what it does.
        with pytest.raises(HpcenvError, match=r"^kern version 4 is still being built by \S+@\S+ "
                                              r"pid \d+ since \S+ \(building \(a test's lock "
                                              r"holder\)\); wait"):
            remove_version(store_for(lab.site), "kern", 4)
        with pytest.raises(HpcenvError, match=r"^kern version 4 is still being built; wait for "
                                              r"it, then run 'hpcenv env rm kern' again$"):
            remove_env(store_for(lab.site), "kern", force=True)
        assert Path(building.prefix, "conda-meta").is_dir()
        assert [r.status for r in lab.registry.versions("kern")] == ["ready"] * 3 + ["building"]
    # The builder was SIGKILLed: its record is removable like any other, without --force.
    assert remove_version(store_for(lab.site), "kern", 4).status == "retired"
    assert not Path(building.prefix).exists()


def test_remove_waits_for_a_builder_of_another_version_of_its_key(lab: Lab) -> None:
    """A ready version whose key another builder holds (a rebuild under way) is removed once
    that builder lets go, not under its feet."""
    holder = start_lock_holder(lab.site, lab.v1.key)
    assert holder.stdin is not None
    stdin = holder.stdin

    def let_go() -> None:
        stdin.write("\n")
        stdin.flush()

    timer = threading.Timer(1.0, let_go)  # the holder finishes 1 s from now
    try:
        started = time.monotonic()
        timer.start()
        removed = remove_version(store_for(lab.site), "kern", 1)
        waited = time.monotonic() - started
        assert holder.wait(timeout=30) == 0  # it finished on its own, not killed
    finally:
        timer.cancel()
        kill(holder)
    assert removed.status == "retired" and not Path(lab.v1.prefix).exists()
    assert waited >= 0.9


def test_remove_env_needs_force_for_ready_versions_and_retires_current_last(lab: Lab) -> None:
    rollback(store_for(lab.site), "kern", to_version=2)
    lab.registry.set_status("kern", 1, "failed")
    with pytest.raises(HpcenvError, match=r"removes its ready version\(s\) 2, 3, the current "
                                          r"version 2 included; pass --force, or --version V"):
        remove_env(store_for(lab.site), "kern")
    assert all(Path(r.prefix).is_dir() for r in (lab.v1, lab.v2, lab.v3))
    removed = remove_env(store_for(lab.site), "kern", force=True)
    assert [r.version for r in removed] == [1, 3, 2]  # the current one last
    assert lab.registry.current_version("kern") is None and not os.path.lexists(lab.link)
    with pytest.raises(NotFound, match=r"has no version left to remove \(all are retired"):
        remove_env(store_for(lab.site), "kern", force=True)
    with pytest.raises(NotFound, match=r"^no environment 'nope' in the registry "):
        remove_env(store_for(lab.site), "nope")


NAME_HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hpcenv.site.config import load_site
    from hpcenv.store import store_for
    with store_for(load_site(Path(sys.argv[1]))).registry().name_lock(
            "kern", doing="publishing kern version 9"):
        print("held", flush=True)
        sys.stdin.readline()
""")


def test_a_blocked_rollback_says_who_holds_the_name_and_what_for(lab: Lab) -> None:
    holder = subprocess.Popen([sys.executable, "-c", NAME_HOLDER, str(lab.site.source)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        store = store_for(lab.site)
        short = replace(store, locks=replace(store.locks, timeout=0.5))
        heard: list[str] = []
        with pytest.raises(HpcenvError, match=rf"waiting for \S+@\S+ pid {holder.pid} since \S+ "
                                              r"\(publishing kern version 9\)"):
            rollback(short, "kern", on_wait=heard.append)
        assert len(heard) == 1 and heard[0].startswith("waiting for ")
        assert heard[0].endswith("(publishing kern version 9) to finish with kern")
    finally:
        kill(holder)
    assert lab.registry.current_version("kern") == 3  # nothing moved
