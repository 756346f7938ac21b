"""Issue 12 with real users on the real Slurm 22.05 test cluster: bob's job, queued on alice's
``q`` v1, keeps v1 while alice rebuilds ``q``, removes v1 and runs ``env gc``; v1's files go
with a later gc, once the job has ended.  The job's comment, which every user sees in Slurm,
is how alice's hpcenv knows."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from pathlib import Path
from typing import Any

V1 = "name: q\ndependencies:\n  - python=3.11\n"
V2 = "name: q\ndependencies:\n  - python=3.11\n  - hpcdemo-tools\n"


def _slurm_site(lab: Any, cluster: Any) -> Path:
    """The lab's site config, submitting to the test cluster instead of the local executor."""
    text = lab.site.read_text()
    assert "scheduler: local\n" in text
    path = lab.root / "slurm-site.yaml"
    path.write_text(text.replace("scheduler: local\n", "scheduler: slurm-cli\n")
                    + f"slurm: {{bin_dir: {cluster.bin_dir}}}\n")
    path.chmod(0o644)
    return path


def test_bobs_queued_job_keeps_alices_build_until_it_ended(lab: Any, slurm_cluster: Any) -> None:
    site = str(_slurm_site(lab, slurm_cluster))
    slurm = {"SLURM_CONF": str(slurm_cluster.conf)}

    def run(user: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return lab.run(user, "--site", site, *args, env=slurm, **kw)

    v1 = json.loads(run("alice", "--json", "env", "build", str(lab.write("v1.yml", V1)),
                        check=True).stdout)
    work = lab.root / "bob-work"
    work.mkdir()
    bob = pwd.getpwnam("bob")
    os.chown(work, bob.pw_uid, bob.pw_gid)
    # Held: the job stays pending (as behind a full partition) until released below.
    sub = run("bob", "--json", "submit", "--env", "q", "--comment", "bobs-run",
              "--sbatch-arg=--hold", "--", "python", "-c", "import sys; print(sys.prefix)",
              cwd=work, check=True)
    job_id = json.loads(sub.stdout)["job_id"]
    try:
        # bob's record holds what Slurm got, read back after the submit: the cluster's default
        # partition (the lab's site names none) and the comment with the build in it.
        record = json.loads((Path(bob.pw_dir) / ".local/state/hpcenv-lab/submissions"
                             / f"slurm-{job_id}.json").read_text())
        assert (record["partition"], record["read_back"]) == ("cpu", True)
        assert record["comment"] == f"bobs-run,hpcenv-build={Path(v1['prefix']).resolve()}"

        v2 = json.loads(run("alice", "--json", "env", "build", str(lab.write("v2.yml", V2)),
                            check=True).stdout)
        assert v2["version"] == 2
        removed = run("alice", "env", "rm", "q", "--version", "1")
        assert removed.returncode == 0, removed.stderr
        assert f"job {job_id} (bob, pending)" in removed.stderr
        gc = run("alice", "--json", "env", "gc", check=True)
        kept = json.loads(gc.stdout)["kept"]
        assert [(k["path"], [(j["job_id"], j["user"]) for j in k["jobs"]]) for k in kept] == [
            (str(Path(v1["prefix"]).resolve()), [(job_id, "bob")])]
        assert Path(v1["prefix"], "bin", "python").exists()
        current = json.loads(run("alice", "--json", "env", "show", "q", check=True).stdout)
        assert current["version"] == 2  # v1 no longer resolves

        subprocess.run(["scontrol", "release", job_id], check=True, env=slurm_cluster.env)
        info = slurm_cluster.wait(slurm_cluster.backend(), job_id, timeout=120)
        assert (info.state, info.exit_code) == ("COMPLETED", 0)
        out = (work / f"slurm-{job_id}.out").read_text().strip().splitlines()
        assert Path(out[-1]).resolve() == Path(v1["prefix"]).resolve()
    finally:
        subprocess.run(["scancel", job_id], env=slurm_cluster.env, capture_output=True)

    later = run("alice", "env", "gc", check=True)
    assert f"removed build   {Path(v1['prefix']).resolve()}" in later.stdout
    assert not Path(v1["prefix"]).exists() and Path(v2["prefix"]).is_dir()
