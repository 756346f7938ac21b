"""The ownership model with real users (tests/multiuser/conftest.py): lab members build, reuse
and run each other's envs; only an env's owner (its first builder) or an admin (the site's
``permissions.admins``: ``@labadmin``, so carol) changes which version is current or removes
versions others use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KERN_CPU = """\
name: shared
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - hpcdemo-tools
"""
KERN_CUDA = """\
name: shared
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - cuda-version=12.4
"""


def history(lab: Any, name: str) -> list[tuple[int, str, bool]]:
    proc = lab.run("alice", "--json", "env", "history", name, check=True)
    return [(row["version"], row["status"], row["current"]) for row in json.loads(proc.stdout)]


def test_members_share_envs_but_only_owner_or_admin_change_them(lab: Any) -> None:
    cpu, cuda = lab.write("cpu.yml", KERN_CPU), lab.write("cuda.yml", KERN_CUDA)
    built = json.loads(lab.run("alice", "--json", "env", "build", str(cpu), check=True).stdout)
    assert built["status"] == "built"

    # bob runs alice's env, and building the same spec reuses her build.
    ran = lab.run("bob", "run", "-n", "shared", "--", "python", "-c",
                  "import sys; print(sys.prefix)", check=True)
    assert Path(ran.stdout.strip()).resolve() == Path(built["prefix"]).resolve()
    again = json.loads(lab.run("bob", "--json", "env", "build", str(cpu), check=True).stdout)
    assert (again["status"], again["version"]) == ("reused", 1)

    # bob's own build under alice's name is kept, but alice's version stays current.
    other = lab.run("bob", "--json", "env", "build", str(cuda), check=True)
    assert json.loads(other.stdout)["version"] == 2
    assert "shared belongs to alice" in other.stderr and "will not become its current" in other.stderr
    assert history(lab, "shared") == [(1, "ready", True), (2, "ready", False)]

    # bob may not change or remove what others use ...
    for args in (["env", "rollback", "shared", "--to", "2"],
                 ["env", "rm", "shared", "--version", "1", "--force"],
                 ["env", "rm", "shared", "--force"]):
        refused = lab.run("bob", *args)
        assert refused.returncode == 1, refused.stderr
        assert "shared belongs to alice" in refused.stderr and "permissions.admins" in refused.stderr
        assert refused.stderr.count("\n") == 1 and "internal error" not in refused.stderr
    assert history(lab, "shared") == [(1, "ready", True), (2, "ready", False)]
    assert Path(built["prefix"]).is_dir()
    # ... but may clear away a version of his own that is not current,
    lab.run("bob", "env", "rm", "shared", "--version", "2", check=True)
    assert history(lab, "shared") == [(1, "ready", True), (2, "retired", False)]

    # eve, outside the group, may not either; carol, an admin, may.
    assert lab.run("eve", "env", "rm", "shared", "--force").returncode != 0
    lab.run("alice", "env", "build", str(cuda), check=True)  # alice's v3 becomes current
    lab.run("carol", "env", "rollback", "shared", "--to", "1", check=True)
    assert history(lab, "shared")[0] == (1, "ready", True)
    removed = lab.run("carol", "env", "rm", "shared", "--force", check=True)
    assert all(status == "retired" for _, status, _ in history(lab, "shared"))
    # carol may retire alice's builds but not delete alice's read-only files: they stay whole
    # until alice's gc, which finds them retired.
    assert "belong to alice" in removed.stderr and "hpcenv env gc" in removed.stderr
    assert Path(built["prefix"]).is_dir()
    lab.run("alice", "env", "gc", check=True)
    assert not Path(built["prefix"]).exists()
