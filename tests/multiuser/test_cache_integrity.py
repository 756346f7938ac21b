"""The shared package cache with real users (tests/multiuser/conftest.py): with umask 002 and
the group-writable cache the README prescribes for lab members who build, bob can replace a
file inside an entry alice's build extracted; alice's next env must never contain it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.multiuser.conftest import RUNUSER

SPEC = """\
name: {name}
dependencies:
  - python=3.11
  - hpcdemo-tools
"""
FILE = "site-packages/hpcdemo_tools/__init__.py"
PLANTED = 'print("planted by bob")\n'



def tools_entry(pkgs: Path) -> str:
    """The cache entry of hpcdemo-tools (its build string follows the demo channel's build)."""
    [entry] = (p.name for p in pkgs.glob("hpcdemo-tools-*") if p.is_dir())
    return entry

def as_user(user: str, script: str, umask: str = "002") -> subprocess.CompletedProcess[str]:
    return subprocess.run([RUNUSER, "-u", user, "--", "bash", "-c", f"umask {umask} && {script}"],
                          capture_output=True, text=True, check=False, cwd="/")


def build(lab: Any, user: str, name: str, umask: str = "002") -> subprocess.CompletedProcess[str]:
    spec = lab.write(f"{name}.yml", SPEC.format(name=name))
    return lab.run(user, "--json", "env", "build", str(spec), umask=umask)


def test_a_file_bob_planted_in_the_cache_never_reaches_alices_new_env(lab: Any) -> None:
    first = build(lab, "alice", "first")
    assert first.returncode == 0, first.stderr
    pkgs = lab.root / "store" / "pkgs"
    entry = tools_entry(pkgs)
    target = pkgs / entry / FILE
    original = target.read_text()
    # bob may not write alice's file, but the group-writable dir lets him replace it.
    planted = as_user("bob", f"rm -f {target} && printf '{PLANTED}' > {target}")
    assert planted.returncode == 0, planted.stderr
    assert target.read_text() == PLANTED and target.owner() == "bob"

    second = build(lab, "alice", "second")
    assert second.returncode == 0, second.stderr
    prefix = Path(json.loads(second.stdout)["prefix"])
    installed = prefix / "lib" / "python3.11" / "site-packages" / "hpcdemo_tools" / "__init__.py"
    assert installed.read_text() == original
    ran = lab.run("alice", "run", "-n", "second", "--", "python", "-c", "import hpcdemo_tools")
    assert ran.returncode == 0 and "planted" not in ran.stdout + ran.stderr

    # Reported in one line naming the package, the file and the planted file's owner ...
    warnings = [line for line in second.stderr.splitlines() if entry in line]
    assert len(warnings) == 1, second.stderr
    assert FILE in warnings[0] and "owned by bob" in warnings[0] and "moved the entry aside" in \
        warnings[0]
    # ... and in the build log.
    record = json.loads((lab.root / "store" / "registry" / "second" / "1.json").read_text())
    assert warnings[0].removeprefix("hpcenv: warning: ") in Path(record["log_path"]).read_text()
    # Quarantined (kept for an admin, bob's file inside), and extracted again.
    [moved] = pkgs.glob(f".hpcenv-quarantine.{entry}.*")
    assert (moved / FILE).read_text() == PLANTED
    assert target.read_text() == original and target.owner() == "alice"
    # alice's first env, built before the plant, never had it either.
    first_prefix = Path(json.loads(first.stdout)["prefix"])
    assert (first_prefix / "lib" / "python3.11" / "site-packages" / "hpcdemo_tools" /
            "__init__.py").read_text() == original


def test_a_cache_the_user_cannot_write_is_one_line_naming_its_owner(lab: Any) -> None:
    # alice builds with umask 022: hpcenv's engine makes its cache lock under the lab's umask.
    assert build(lab, "alice", "solo", umask="022").returncode == 0
    lock = lab.root / "store" / "pkgs" / ".cache.lock"
    assert lock.owner() == "alice" and lock.stat().st_mode & 0o020
    # What a plain conda run under umask 022 would have left: alice's file, not group-writable.
    lock.chmod(0o644)
    refused = build(lab, "bob", "other")
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "owned by alice" in refused.stderr and str(lock) in refused.stderr
    assert "bob cannot write it" in refused.stderr and "internal error" not in refused.stderr
    assert "global cache lock" not in refused.stderr
