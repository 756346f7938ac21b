"""Test helpers shared across test packages: demo specs, real builder and lock-holder processes.

A plain module beside conftest.py (tests/ is on sys.path), so any test file can import it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpcenv.site.config import SiteConfig
from hpcenv.spec.cuda_target import NO_CUDA
from hpcenv.store import store_for
from hpcenv.store.layout import builds_dir
from hpcenv.store.registry import EnvRecord, Status

KERNELS_CUDA = """\
name: kern
channels: [conda-forge]
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - cuda-version=12.4
"""


KERNELS_CPU = """\
name: kern
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - hpcdemo-tools
"""


BUILDER = textwrap.dedent("""
    import json, os, signal, sys, time
    from pathlib import Path
    import hpcenv.store.lifecycle
    from hpcenv.build.builder import build_env
    from hpcenv.engine.rattler_engine import RattlerEngine
    from hpcenv.store.registry import Registry
    from hpcenv.site.config import load_site
    from hpcenv.spec.environment import load_spec

    site_path, spec_path = sys.argv[1], sys.argv[2]
    hold = os.environ.get("HOLD_AFTER_INSTALL")
    kill_at = os.environ.get("KILL_AT")

    def die(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if kill_at == "before-link":
        hpcenv.store.lifecycle._point_link = die
    elif kill_at == "before-ready":
        real_update = Registry.update
        def update(self, record):
            if record.status == "ready":
                die()
            return real_update(self, record)
        Registry.update = update

    class HoldingEngine(RattlerEngine):
        def install(self, prefix, packages, *, pkgs_dir):
            super().install(prefix, packages, pkgs_dir=pkgs_dir)
            Path(hold).write_text(str(prefix))
            time.sleep(120)

    engine = HoldingEngine() if hold else None
    result = build_env(load_spec(spec_path), load_site(Path(site_path)), engine=engine,
                       on_progress=lambda m: print("progress:", m, flush=True))
    print(json.dumps(result.to_dict()), flush=True)
""")


def start_builder(tmp_path: Path, site_path: Path, spec_path: Path,
                  hold: Path | None = None, kill_at: str | None = None) -> subprocess.Popen:
    script = tmp_path / "builder.py"
    if not script.exists():
        script.write_text(BUILDER)
    env = {**os.environ}
    if hold is not None:
        env["HOLD_AFTER_INSTALL"] = str(hold)
    if kill_at is not None:
        env["KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, str(script), str(site_path), str(spec_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def result_of(proc: subprocess.Popen, timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"builder failed ({proc.returncode}): {err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


def write_spec(tmp_path: Path, text: str, name: str = "environment.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


LOCK_HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from hpcenv.site.config import load_site
    from hpcenv.store import store_for
    from hpcenv.store.layout import key_lock
    lock = key_lock(store_for(load_site(Path(sys.argv[1]))), sys.argv[2],
                    doing="building (a test's lock holder)")
    lock.acquire()
    print("held", flush=True)
    sys.stdin.readline()
""")


def start_lock_holder(site: SiteConfig, key: str) -> subprocess.Popen[str]:
    """A live process holding ``key``'s build lock (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(site.source), key],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@contextmanager
def lock_held(site: SiteConfig, key: str) -> Iterator[subprocess.Popen[str]]:
    proc = start_lock_holder(site, key)
    try:
        yield proc
    finally:
        kill(proc)


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc`` and reap it: what a crashed builder is."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def building_record(site: SiteConfig, name: str, key: str, prefix: Path | None = None,
                    status: Status = "building") -> EnvRecord:
    """A record as a builder allocates it (step 2 of a build)."""
    registry = store_for(site).registry()
    return registry.allocate(name, lambda v: EnvRecord(
        name=name, version=v, key=key, spec={}, spec_hash="", lock_path="",
        prefix=str(prefix or builds_dir(store_for(site)) / f"{name}-{v}-{key[:12]}"), cuda=NO_CUDA,
        cuda_override=None, channels=[], platform="linux-64", status=status,
        creator="x@y", created="2024-01-01T00:00:00+00:00"))
