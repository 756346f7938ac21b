"""What the lab's shared store lets outsiders and lab members do, with real users
(tests/multiuser/conftest.py): eve, outside group ``lab``, can read what the site makes public
(the store is 2775) but can open no lock, append to no file and stall nobody; lab members
build and reuse each other's builds whatever their umask (022 or 002)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

KERN = """\
name: {name}
dependencies:
  - python=3.11
  - hpcdemo-kernels
"""
TOOLS = """\
name: {name}
dependencies:
  - python=3.11
  - hpcdemo-tools
"""

# Run as eve with the lab's python: try to take every lock hpcenv keeps in the store, the way
# hpcenv takes it (BuildLock / CacheLock) and the way a plain process could (open + flock,
# mkdir of a lease dir); try to append to every file; report what worked, then keep whatever
# was taken while the lab works.
EVE = r"""
import fcntl, json, os, sys, time
from pathlib import Path
from hpcenv.store.locking import BuildLock, CacheLock

root, ready = Path(sys.argv[1]), Path(sys.argv[2])
taken, appended, held = [], [], []
for dirpath, dirnames, filenames in os.walk(root):
    for name in filenames:
        path = Path(dirpath, name)
        if path.is_symlink():
            continue
        try:
            fh = open(path, "a")
        except OSError:
            pass
        else:
            appended.append(str(path))
            fh.close()
        if name.endswith(".lock") or name == ".lock":
            try:
                fd = os.open(path, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(fd)
                taken.append(f"flock {path}")
            except OSError:
                pass
            try:
                os.mkdir(f"{path}.lease")
                taken.append(f"mkdir {path}.lease")
            except OSError:
                pass
            for how in ("build", "cache"):
                try:
                    if how == "build":
                        lock = BuildLock(path, timeout=0, doing="eve")
                        if lock.try_acquire():
                            held.append(lock)
                            taken.append(f"BuildLock {path}")
                    else:
                        hold = CacheLock(path, timeout=0).hold(exclusive=False, doing="eve")
                        hold.__enter__()
                        held.append(hold)
                        taken.append(f"CacheLock {path}")
                except Exception as exc:
                    pass
ready.write_text(json.dumps({"taken": taken, "appended": appended}))
time.sleep(600)
"""


def _write(lab: Any, name: str, template: str) -> Path:
    return lab.write(f"{name}.yml", template.format(name=name))


def _build(lab: Any, user: str, spec: Path, umask: str) -> dict[str, Any]:
    proc = lab.run(user, "--json", "env", "build", str(spec), umask=umask, check=True)
    return json.loads(proc.stdout)


def _world_writable(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o002:
                found.append(os.path.join(dirpath, name))
    return found


def test_lab_members_share_builds_whatever_their_umask(lab: Any) -> None:
    kern, tools = _write(lab, "kern", KERN), _write(lab, "tools", TOOLS)
    # alice (022) builds, bob (002) reuses; bob (002) builds, alice and carol (022) reuse.
    first = _build(lab, "alice", kern, "022")
    assert (first["status"], _build(lab, "bob", kern, "002")["status"]) == ("built", "reused")
    second = _build(lab, "bob", tools, "002")
    assert second["status"] == "built"
    assert _build(lab, "alice", tools, "022")["status"] == "reused"
    # A new version built by the other umask into a package cache and registry both wrote to.
    kern_cuda = lab.write("kern2.yml", KERN.format(name="kern") + "  - cuda-version=12.4\n")
    assert _build(lab, "carol", kern_cuda, "022")["status"] == "built"
    assert _build(lab, "alice", _write(lab, "both", KERN + "  - hpcdemo-tools\n"),
                  "002")["status"] == "built"
    for user, umask in (("bob", "002"), ("carol", "022")):
        ran = lab.run(user, "run", "-n", "tools", "--", "python", "-c",
                      "import sys; print(sys.prefix)", umask=umask, check=True)
        assert Path(ran.stdout.strip()).resolve() == Path(second["prefix"]).resolve()
    # Nothing hpcenv created is writable by the world, whatever the umask was.
    assert _world_writable(lab.root / "store") == []


def test_an_outsider_reads_what_is_public_and_stalls_nothing(lab: Any) -> None:
    kern = _write(lab, "kern", KERN)
    built = _build(lab, "alice", kern, "022")
    lab.run("alice", "env", "build", str(_write(lab, "tools", TOOLS)), check=True)

    # eve may run the lab's envs (the site made the store world-readable) ...
    ran = lab.run("eve", "run", "-n", "kern", "--", "python", "-c", "print('hi')", check=True)
    assert ran.stdout.strip() == "hi"
    # ... but not build into the store: one line naming who owns what, not an internal error.
    refused = lab.run("eve", "env", "build", str(_write(lab, "eve", KERN)))
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "internal error" not in refused.stderr, refused.stderr
    assert "permission denied for eve" in refused.stderr and ":lab" in refused.stderr

    # eve tries to take every lock and append to every file, then hangs on to what she got.
    ready = lab.root / "files" / "eve-ready.json"
    (lab.root / "files").chmod(0o777)
    eve = lab.spawn_python("eve", EVE, str(lab.root / "store"), str(ready))
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert eve.poll() is None, eve.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but let the write finish
        got = json.loads(ready.read_text())
        assert got == {"taken": [], "appended": []}
        locks = list((lab.root / "store").rglob("*.lock"))
        assert len(locks) >= 3, locks  # build keys, the cache lock, the registry names' locks

        # With eve still running, the lab works at once: a new build, a rollback, rm, gc.
        started = time.monotonic()
        again = lab.run("alice", "env", "build",
                        str(lab.write("kern2.yml", KERN.format(name="kern") + "  - hpcdemo-tools\n")),
                        check=True)
        for args in (["env", "rollback", "kern", "--to", "1"],
                     ["env", "rm", "tools", "--force"], ["env", "gc"]):
            done = lab.run("alice", *args, check=True)
            assert "waiting" not in done.stderr, done.stderr
        assert "waiting" not in again.stderr, again.stderr
        # No lock wait anywhere (locks.timeout is an hour): these took build time only.
        assert time.monotonic() - started < 300
        assert Path(built["prefix"]).is_dir()
    finally:
        eve.kill()
        eve.communicate()
    assert _world_writable(lab.root / "store") == []
