"""Exactly once across login nodes whose file locks are node-local (fixtures in conftest.py):
herds of ``hpcenv env build`` on two nodes with the default site settings, a builder killed on
one node while it holds the lock, and a live build on one node that the other node's debris
cleaning and ``env gc`` must leave alone."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from builders import BUILDER, KERNELS_CPU

from hpcenv.demo.site import write_demo_site
from hpcenv.site.config import load_site
from hpcenv.store import store_for
from hpcenv.store.layout import builds_dir, locks_dir
from hpcenv.store.locking import DEFAULT_HEARTBEAT, DEFAULT_STALE_AFTER
from hpcenv.store.registry import Registry

HPCENV = str(Path(sys.executable).with_name("hpcenv"))  # the venv's console script

# The smallest build the demo channel offers: one metapackage, so ten rounds stay quick.
TINY = """\
name: tiny
dependencies:
  - cuda-version=12.4
"""

OTHER = """\
name: other
dependencies:
  - python=3.11
"""


@dataclass
class Watched:
    """A process on a node whose stderr lines are time-stamped as they arrive."""

    proc: subprocess.Popen[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    out: str = ""

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        assert self.proc.stdout is not None
        self.out = self.proc.stdout.read()
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return self.proc.returncode, self.out, "\n".join(text for _, text in self.lines)

    def first(self, pattern: str) -> float | None:
        return next((t for t, text in self.lines if re.search(pattern, text)), None)


def lock_leftovers(site_path: Path, *, readers: bool = True) -> list[str]:
    """Lease dirs, staging dirs and (with ``readers``) reader leases left under the site's lock
    places."""
    site = load_site(site_path)
    places = [locks_dir(store_for(site)), Path(site.pkgs_dirs[0]), Path(site.registry)]
    places += [p for p in Path(site.registry).iterdir() if p.is_dir()]
    left = []
    for place in places:
        for path in place.glob(".*") if place.is_dir() else []:
            if path.name.endswith((".lease", ".new")) or ".gone-" in path.name or (
                    readers and path.name.endswith(".readers") and any(path.iterdir())):
                left.append(str(path))
        left += [str(p) for p in place.glob("*.lease")] if place.is_dir() else []
    return sorted(left)


def test_herds_on_two_nodes_build_once(two_nodes, demo_channel) -> None:
    """2 nodes x 4 concurrent builders of one spec, default site settings, 10 rounds: one
    build, seven reuses, one registry version, every exit code 0."""
    shared = two_nodes.shared
    site_path = write_demo_site(shared / "lab", demo_channel)
    assert load_site(site_path).locks.stale_after == DEFAULT_STALE_AFTER
    spec = shared / "tiny.yml"
    spec.write_text(TINY)
    registry = Registry(shared / "lab" / "registry")
    for round_ in range(10):
        name = f"tiny{round_}"
        runs = [(node, node.popen([HPCENV, "env", "build", str(spec), "--name", name,
                                   "--site", str(site_path), "--json"],
                                  env=two_nodes.env(node)))
                for node in two_nodes.nodes for _ in range(4)]
        results = []
        for node, proc in runs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"round {round_} on {node.name}: {err[-2000:]}"
            results.append({**json.loads(out), "node": node.name})
        assert sorted(r["status"] for r in results) == ["built"] + ["reused"] * 7, round_
        # The herd really met: builders on the node that did not build waited for the lock.
        builder_node = next(r["node"] for r in results if r["status"] == "built")
        assert any(r["waited"] for r in results if r["node"] != builder_node), round_
        assert {(r["version"], r["prefix"]) for r in results} == {
            (1, results[0]["prefix"])}, round_
        assert [(r.version, r.status) for r in registry.versions(name)] == [(1, "ready")]
        prefixes = [p.name for p in builds_dir(store_for(load_site(site_path))).iterdir()
                    if p.name.startswith(f"{name}-")]
        assert prefixes == [Path(results[0]["prefix"]).name], round_
    assert lock_leftovers(site_path) == []


def _start_holding_builder(node, env: dict[str, str], site_path: Path, spec: Path,
                           flag: Path) -> subprocess.Popen[str]:
    """A builder on ``node`` that installs for real, then sleeps holding the key lock (and the
    cache's reader lease): the worst place to die."""
    script = spec.parent / "builder.py"
    script.write_text(BUILDER)
    proc = node.popen([sys.executable, str(script), str(site_path), str(spec)],
                      env={**env, "HOLD_AFTER_INSTALL": str(flag)})
    deadline = time.monotonic() + 180
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the holding builder never finished installing"
        time.sleep(0.1)
    return proc


def _takeover(two_nodes, site_path: Path, stale_after: float, heartbeat: float,
              live_checks: bool) -> None:
    node_a, node_b = two_nodes.nodes
    shared = two_nodes.shared
    spec = shared / "kern.yml"
    spec.write_text(KERNELS_CPU)
    flag = shared / "installed"
    holder = _start_holding_builder(node_a, two_nodes.env(node_a), site_path, spec, flag)
    dead_prefix = Path(flag.read_text())
    gc_site = site_path.with_name("site-gc.yaml")  # same dirs, gives up waiting after 3 s
    gc_site.write_text(site_path.read_text().replace("locks: {", "locks: {timeout: 3, "))
    try:
        if live_checks:
            # nodeA's build is alive: a build of another env on nodeB cleans debris, and
            # gc on nodeB waits for nodeA's install; neither may touch nodeA's prefix, even
            # after stale_after (nodeA keeps renewing its leases).
            other = shared / "other.yml"
            other.write_text(OTHER)
            built = node_b.run([HPCENV, "env", "build", str(other), "--site", str(site_path),
                                "--json"], env=two_nodes.env(node_b))
            assert built.returncode == 0, built.stderr[-2000:]
            assert json.loads(built.stdout)["status"] == "built"
            time.sleep(stale_after + 1)
            gc = node_b.run([HPCENV, "env", "gc", "--site", str(gc_site)],
                            env=two_nodes.env(node_b))
            # gc names who it waits for: nodeA's builder, installing into the package cache.
            assert gc.returncode == 1 and "waiting for root@nodeA pid" in gc.stderr \
                and "(installing " in gc.stderr, gc.stderr[-2000:]
            assert (dead_prefix / "conda-meta").is_dir()
            assert holder.poll() is None
    finally:
        holder.kill()
        holder.communicate()
    killed = time.monotonic()
    watched = Watched(node_b.popen([HPCENV, "env", "build", str(spec), "--site",
                                    str(site_path), "--json"], env=two_nodes.env(node_b)))
    code, out, err = watched.finish()
    assert code == 0, err[-2000:]
    result = json.loads(out)
    assert result["status"] == "built" and result["waited"], result
    assert re.search(r"waiting for \S+@nodeA pid \d+", err), err
    took_over = watched.first(r"removed debris of a crashed build: " + re.escape(str(dead_prefix)))
    assert took_over is not None, err
    # nodeA's last heartbeat came at most `heartbeat` s before the kill; nodeB cannot see nodeA's
    # pid, so only the lease's expiry lets it in: not before, and within one poll after.
    waited = took_over - killed
    assert stale_after - heartbeat - 1 <= waited <= stale_after + 2, f"took over at {waited:.1f}s"
    site = load_site(site_path)
    registry = Registry(site.registry)
    versions = [(r.version, r.status) for r in registry.versions("kern")]
    assert versions == [(1, "failed"), (2, "ready")]
    assert not dead_prefix.exists()
    kern = [p.name for p in builds_dir(store_for(site)).iterdir() if p.name.startswith("kern-")]
    assert kern == [Path(result["prefix"]).name]
    # nodeA's reader lease on the package cache may outlive its key lease by up to one
    # heartbeat: the next build or gc past its expiry removes it (checked below).
    assert lock_leftovers(site_path, readers=False) == []
    gc = node_a.run([HPCENV, "env", "gc", "--site", str(site_path), "--json"],
                    env=two_nodes.env(node_a))
    assert gc.returncode == 0, gc.stderr[-2000:]
    assert [(r.version, r.status) for r in registry.versions("kern")] == [(1, "retired"),
                                                                          (2, "ready")]
    assert lock_leftovers(site_path) == []


def test_builder_killed_on_one_node_is_taken_over_within_the_default_bound(
        two_nodes, demo_channel) -> None:
    """Default site settings: nodeB's build of the same spec starts within stale_after (60 s)
    of nodeA's builder dying with the lock held, builds it once, and nothing of nodeA's build
    is left."""
    site_path = write_demo_site(two_nodes.shared / "lab", demo_channel, locks="{}")
    _takeover(two_nodes, site_path, DEFAULT_STALE_AFTER, DEFAULT_HEARTBEAT, live_checks=False)


def test_live_build_on_one_node_is_never_debris_for_the_other(two_nodes, demo_channel) -> None:
    """Short lease timings (site locks section): while nodeA's builder lives, nodeB's debris
    cleaning and gc leave its build alone past stale_after; once it is killed, nodeB takes over
    within the bound."""
    site_path = write_demo_site(two_nodes.shared / "lab", demo_channel,
                                locks="{stale_after: 5, heartbeat: 1}")
    _takeover(two_nodes, site_path, 5.0, 1.0, live_checks=True)


def test_site_check_on_a_node_names_the_filesystem_and_its_flock(two_nodes, demo_channel) -> None:
    node_a = two_nodes.nodes[0]
    site_path = write_demo_site(two_nodes.shared / "lab", demo_channel)
    proc = node_a.run([HPCENV, "site", "check", "--site", str(site_path)],
                      env=two_nodes.env(node_a))
    lines = [line for line in proc.stdout.splitlines() if " locks " in f" {line}"]
    assert len(lines) == 3, proc.stdout + proc.stderr
    for line in lines:
        assert line.startswith("PASS"), line
        assert "(fuse): lease locks work" in line
        assert "FUSE (fuse): flock is kept by this node's kernel (per node)" in line
        assert "detected 60s after its last heartbeat" in line


ALLOCATE = """
import socket, sys
from hpcenv.spec.cuda_target import NO_CUDA
from hpcenv.store.registry import EnvRecord, Registry
registry = Registry(sys.argv[1])
for _ in range(5):
    record = registry.allocate("shared", lambda v: EnvRecord(
        name="shared", version=v, key="0" * 64, spec={}, spec_hash="", lock_path="",
        prefix=f"/nowhere/{v}", cuda=NO_CUDA, cuda_override=None, channels=[],
        platform="linux-64", status="failed", creator=socket.gethostname(),
        created="2024-01-01T00:00:00+00:00"))
    print(record.version, flush=True)
"""


def test_registry_versions_stay_unique_across_nodes(two_nodes) -> None:
    """2 nodes x 4 processes allocate 5 versions each of one name at once: 40 distinct
    versions, 1 to 40, each record written by the process that was given it."""
    root = two_nodes.shared / "registry"
    procs = [(node, node.popen([sys.executable, "-c", ALLOCATE, str(root)],
                               env=two_nodes.env(node)))
             for node in two_nodes.nodes for _ in range(4)]
    given: dict[int, str] = {}
    for node, proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        for line in out.split():
            assert int(line) not in given, f"version {line} given twice"
            given[int(line)] = node.name
    assert sorted(given) == list(range(1, 41))
    records = Registry(root).versions("shared")
    assert [(r.version, r.creator) for r in records] == sorted(given.items())
    assert {name for name in given.values()} == {"nodeA", "nodeB"}
