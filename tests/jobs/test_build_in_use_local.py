"""Issue 12 on the local executor: a build a job still runs in is never deleted under it.

The job is submitted while ``q`` v1 is current and waits (for a flag file) before it starts the
env's python; meanwhile ``q`` is rebuilt (v2 current), v1 is removed and ``env gc`` runs.  The
job must still run v1's python, and v1's files go only with a later gc, once the job ended.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hpcenv.demo.site import write_demo_site
from hpcenv.jobs.control import load_submission, wait_for
from hpcenv.jobs.submit import SubmitOptions, site_scheduler, submit
from hpcenv.site.config import load_site

V1 = "name: q\ndependencies:\n  - python=3.11\n"
V2 = "name: q\ndependencies:\n  - python=3.11\n  - hpcdemo-tools\n"
# Starts the env's python only once the flag exists: the job is in the queue (submitted, not
# yet running its program) while the env changes.
WAIT_THEN_PYTHON = ("while [ ! -e go ]; do sleep 0.1; done; "
                    "python -c 'import sys; print(sys.prefix)'")


def _cli(site_file: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site_file), *argv],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_build_a_job_runs_in_is_kept_until_a_later_gc(tmp_path: Path, demo_channel) -> None:
    site_file = write_demo_site(tmp_path / "site", demo_channel)
    site = load_site(site_file)
    work = tmp_path / "work"
    work.mkdir()
    (work / "v1.yml").write_text(V1)
    (work / "v2.yml").write_text(V2)
    v1 = json.loads(_cli(site_file, "--json", "env", "build", "v1.yml", cwd=work).stdout)

    job = submit(["bash", "-c", WAIT_THEN_PYTHON], env_name="q", site=site,
                 options=SubmitOptions(workdir=work, comment="run-7"))
    assert job.prefix == v1["prefix"]
    # The record says what the executor holds: the user's comment, then the build.
    record = load_submission(site.state_dir, "local", job.job_id)
    assert record is not None and record.read_back
    assert record.comment == f"run-7,hpcenv-build={Path(v1['prefix']).resolve()}"

    v2 = json.loads(_cli(site_file, "--json", "env", "build", "v2.yml", cwd=work).stdout)
    assert (v2["version"], v2["status"]) == (2, "built")

    removed = _cli(site_file, "env", "rm", "q", "--version", "1", cwd=work)
    assert removed.returncode == 0, removed.stderr
    assert f"job {job.job_id} (" in removed.stderr and "'hpcenv env gc' removes them" in removed.stderr
    assert "files of 1 kept" in removed.stdout
    # Retired at once: no longer current nor resolvable ...
    history = json.loads(_cli(site_file, "--json", "env", "history", "q", cwd=work).stdout)
    assert [(r["version"], r["status"], r["current"]) for r in history] == [
        (1, "retired", False), (2, "ready", True)]
    # ... but its files stay, and gc keeps them while the job is not done.
    assert Path(v1["prefix"], "bin", "python").exists()
    gc = _cli(site_file, "--json", "env", "gc", cwd=work)
    assert gc.returncode == 0, gc.stderr
    report = json.loads(gc.stdout)
    assert [k["path"] for k in report["kept"]] == [str(Path(v1["prefix"]).resolve())]
    assert [j["job_id"] for j in report["kept"][0]["jobs"]] == [job.job_id]
    assert not any(i["kind"] == "build" for i in report["removed"])
    assert Path(v1["prefix"], "bin", "python").exists()

    (work / "go").touch()
    info = wait_for(site_scheduler(site), job.job_id)
    assert (info.state, info.exit_code) == ("COMPLETED", 0)
    out = Path(info.stdout).read_text().strip().splitlines()  # type: ignore[arg-type]
    assert Path(out[-1]).resolve() == Path(v1["prefix"]).resolve()  # v1, not the current v2

    later = _cli(site_file, "env", "gc", cwd=work)
    assert later.returncode == 0, later.stderr
    assert f"removed build   {Path(v1['prefix']).resolve()}" in later.stdout
    assert not Path(v1["prefix"]).exists() and Path(v2["prefix"]).is_dir()
