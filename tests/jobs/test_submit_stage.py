"""submit --stage on the local executor: real packs of real envs, unpacked by the job script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_fake_conda

from hpcenv.demo.site import write_demo_site
from hpcenv.errors import InvalidInput
from hpcenv.jobs.control import job_exit_code, wait_for
from hpcenv.jobs.submit import SubmitOptions, site_scheduler, submit
from hpcenv.site.config import SiteConfig, load_site
from hpcenv.store import store_for
from hpcenv.store.pack import create_pack

STAGED_ENV = """\
name: staged
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - hpcdemo-tools
variables:
  STAGED_MODE: fast
"""

SHOW = """\
import json, os, sys
import hpcdemo_kernels, hpcdemo_tools
print(json.dumps({"prefix": sys.prefix, "executable": sys.executable,
                  "conda_prefix": os.environ.get("CONDA_PREFIX"),
                  "kernels_home": os.environ.get("HPCDEMO_KERNELS_HOME"),
                  "mode": os.environ.get("STAGED_MODE"),
                  "module": hpcdemo_tools.__file__,
                  "marker": os.path.exists(os.path.join(sys.prefix, "left-by-first-job"))}))
"""


@pytest.fixture(scope="module")
def env_site(tmp_path_factory: pytest.TempPathFactory, demo_channel) -> tuple[Path, str]:
    """A site with env 'staged' built once (no pack yet); returns the site dir and prefix."""
    from hpcenv.build.builder import build_env
    from hpcenv.spec.environment import parse_spec

    root = tmp_path_factory.mktemp("stagesite")
    site = load_site(write_demo_site(root, demo_channel))
    return root, build_env(parse_spec(STAGED_ENV), site).record.prefix


def site_with(root: Path, demo_channel, tmp_path: Path, **settings: str) -> SiteConfig:
    return load_site(write_demo_site(root, demo_channel, path=tmp_path / "site.yaml", **settings))


def run_job(site: SiteConfig, tmp_path: Path, *, env: str = "staged",
            options: SubmitOptions | None = None) -> tuple[dict, list[str], object]:
    script = tmp_path / "show.py"
    script.write_text(SHOW)
    result = submit(script, env_name=env, site=site,
                    options=options or SubmitOptions(workdir=tmp_path, stage=True,
                                                     error=str(tmp_path / "err-%j.txt")))
    info = wait_for(site_scheduler(site), result.job_id or "")
    assert job_exit_code(info) == 0
    out = (tmp_path / f"slurm-{result.job_id}.out").read_text()
    err = (tmp_path / f"err-{result.job_id}.txt").read_text().splitlines()
    return json.loads(out), err, result


def test_staged_job_runs_from_the_node_local_copy(env_site, demo_channel, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    root, shared = env_site
    nodes = tmp_path / "node-local"
    nodes.mkdir()
    # stage_dir is expanded by the job, on the node: $HPCENV_TEST_NODE_DIR is not set here.
    site = site_with(root, demo_channel, tmp_path, stage_dir='"${HPCENV_TEST_NODE_DIR}/scratch"')
    create_pack(store_for(site), site_registry_record(site))
    copy = nodes / "scratch" / f"hpcenv-{_uid()}" / Path(shared).name
    monkeypatch.setenv("HPCENV_TEST_NODE_DIR", str(nodes))  # the local executor's jobs inherit it
    seen, err, result = run_job(site, tmp_path)
    assert err == [] and result.launcher == "activate" and result.pack
    assert seen["prefix"] == seen["conda_prefix"] == str(copy)
    assert seen["executable"].startswith(f"{copy}/bin/python")
    assert seen["module"].startswith(f"{copy}/lib/")
    assert seen["kernels_home"] == f"{copy}/share/hpcdemo-kernels" and seen["mode"] == "fast"
    assert (copy / ".hpcenv-staged").is_file() and not seen["marker"]
    # A later job on the node reuses the copy instead of unpacking again.
    (copy / "left-by-first-job").write_text("")
    again, err, _ = run_job(site, tmp_path)
    assert err == [] and again["prefix"] == str(copy) and again["marker"]
    assert sorted(p.name for p in copy.parent.iterdir()) == [Path(shared).name,
                                                            f"{Path(shared).name}.lock"]


def test_concurrent_jobs_on_one_node_unpack_once(env_site, demo_channel, tmp_path: Path) -> None:
    root, shared = env_site
    site = site_with(root, demo_channel, tmp_path, stage_dir=str(tmp_path / "node"))
    create_pack(store_for(site), site_registry_record(site))
    script = tmp_path / "show.py"
    script.write_text(SHOW)
    jobs = [submit(script, env_name="staged", site=site,
                   options=SubmitOptions(workdir=tmp_path, stage=True,
                                         error=str(tmp_path / "err-%j.txt")))
            for _ in range(3)]
    for job in jobs:
        assert job_exit_code(wait_for(site_scheduler(site), job.job_id or "")) == 0
    copy = tmp_path / "node" / f"hpcenv-{_uid()}" / Path(shared).name
    for job in jobs:
        assert json.loads((tmp_path / f"slurm-{job.job_id}.out").read_text())["prefix"] == str(copy)
        assert (tmp_path / f"err-{job.job_id}.txt").read_text() == ""
    # No half-unpacked leftovers: the losers of the race waited for the lock and found the copy.
    assert sorted(p.name for p in copy.parent.iterdir()) == [Path(shared).name,
                                                            f"{Path(shared).name}.lock"]


def test_without_a_pack_the_job_warns_once_and_runs_shared(env_site, demo_channel,
                                                          tmp_path: Path) -> None:
    root, shared = env_site
    site = site_with(root, demo_channel, tmp_path, packs_dir=str(tmp_path / "no-packs"),
                     stage_dir=str(tmp_path / "node"))
    seen, err, result = run_job(site, tmp_path)
    assert seen["prefix"] == shared and seen["kernels_home"] == f"{shared}/share/hpcdemo-kernels"
    assert len(err) == 1 and err[0].startswith("hpcenv: warning: not staged (no pack ")
    assert err[0].endswith(f"running from the shared prefix {shared}")
    assert any("no pack of staged v1" in w and "hpcenv env pack staged" in w
               for w in result.warnings)


def test_unusable_stage_dir_falls_back_with_a_warning(env_site, demo_channel,
                                                      tmp_path: Path) -> None:
    root, shared = env_site
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    site = site_with(root, demo_channel, tmp_path, stage_dir=str(blocker / "below"))
    create_pack(store_for(site), site_registry_record(site))
    seen, err, _ = run_job(site, tmp_path)
    assert seen["prefix"] == shared
    assert err == [f"hpcenv: warning: not staged (cannot create {blocker}/below/hpcenv-{_uid()} "
                   f"on {_hostname()}); running from the shared prefix {shared}"]


def test_not_enough_space_falls_back(env_site, demo_channel, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The job compares the pack's unpacked size with df's free space; a manifest claiming
    more than any disk holds stands in for a full node-local disk."""
    import dataclasses

    import hpcenv.jobs.submit as submit_module

    root, shared = env_site
    site = site_with(root, demo_channel, tmp_path, stage_dir=str(tmp_path / "node"))
    create_pack(store_for(site), site_registry_record(site))
    plan = submit_module.plan_staging(site, site_registry_record(site))
    huge = dataclasses.replace(plan, context=dict(plan.context, bytes=str(1 << 60)))
    monkeypatch.setattr(submit_module, "plan_staging", lambda *_args: huge)
    seen, err, _ = run_job(site, tmp_path)
    assert seen["prefix"] == shared
    assert len(err) == 1 and " MiB needed in " in err[0] and " MiB free" in err[0]


def test_stage_uses_hpcenvs_activation(env_site, demo_channel, tmp_path: Path) -> None:
    root, _ = env_site
    conda = write_fake_conda(tmp_path / "bin")
    site = site_with(root, demo_channel, tmp_path, conda_exe=str(conda), launcher="conda-run")
    with pytest.raises(InvalidInput, match="drop --launcher conda-run"):
        submit(["true"], env_name="staged", site=site,
               options=SubmitOptions(workdir=tmp_path, stage=True, launcher="conda-run"))
    result = submit(["true"], env_name="staged", site=site, dry_run=True,
                    options=SubmitOptions(workdir=tmp_path, stage=True))
    assert result.launcher == "activate" and "hpcenv_stage_node" in result.script_text
    assert "conda run" not in result.script_text


def test_cli_submit_stage_dry_run(env_site, demo_channel, tmp_path: Path) -> None:
    root, shared = env_site
    site = site_with(root, demo_channel, tmp_path)
    pack = create_pack(store_for(site), site_registry_record(site)).path
    out = subprocess.run([sys.executable, "-m", "hpcenv", "--site", str(site.source), "submit",
                          "--env", "staged", "--stage", "--dry-run", "--json", "--", "true"],
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    data = json.loads(out.stdout)
    assert data["pack"] == str(pack) and data["launcher"] == "activate"
    assert 'hpcenv_stage_root="${TMPDIR:-/tmp}"' in data["script_text"]
    assert f"hpcenv_shared_prefix={shared}" in data["script_text"]


def test_stage_dir_must_be_a_plain_node_path(demo_channel, tmp_path: Path) -> None:
    for bad in ('"relative/dir"', '"/x/$(whoami)"', '"/x/`id`"', '"/x/a b"'):
        path = write_demo_site(tmp_path, demo_channel, stage_dir=bad)
        with pytest.raises(InvalidInput, match=r"site.yaml:\d+: stage_dir: .* not a node-local path"):
            load_site(path)


# --- helpers ------------------------------------------------------------------------------------

def site_registry_record(site: SiteConfig):

    return store_for(site).registry().resolve("staged")


def _uid() -> int:
    import os

    return os.getuid()


def _hostname() -> str:
    import socket

    return socket.gethostname()


def test_a_site_job_template_without_the_staging_part_is_refused(env_site, demo_channel,
                                                                  tmp_path: Path) -> None:
    root, _ = env_site
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "job.sh.j2").write_text('#!/bin/bash\n{% include "sbatch_header.sh.j2" %}\n'
                                        '{{ activation }}exec {{ command | join(" ") }}\n')
    site = site_with(root, demo_channel, tmp_path, templates_dir=str(templates))
    with pytest.raises(InvalidInput, match=r"--stage: the job template in .*templates does not "
                                           r"include stage.sh.j2"):
        submit(["true"], env_name="staged", site=site, dry_run=True,
               options=SubmitOptions(workdir=tmp_path, stage=True))
    assert submit(["true"], env_name="staged", site=site, dry_run=True,
                  options=SubmitOptions(workdir=tmp_path)).script_text.startswith("#!/bin/bash")


def test_a_stage_path_too_long_for_binary_files_falls_back(demo_channel, tmp_path: Path) -> None:
    """relocate.py refuses a longer prefix when binary files embed the old one; the job says so
    and runs from the shared prefix."""
    import stat

    from hpcenv.build.builder import build_env
    from hpcenv.spec.environment import parse_spec

    deep = tmp_path / ("d" * 120)
    site = load_site(write_demo_site(tmp_path / "site", demo_channel, stage_dir=str(deep)))
    record = build_env(parse_spec("name: binjob\ndependencies:\n  - python=3.11\n"), site).record
    lib = Path(record.prefix) / "lib"
    mode = lib.stat().st_mode
    lib.chmod(mode | stat.S_IWUSR)  # a library with a built-in path, as compiled code has
    (lib / "libfake.so").write_bytes(b"\0" + f"{record.prefix}/lib\0".encode())
    lib.chmod(mode)
    create_pack(store_for(site), record)
    result = submit(["python", "-c", "import sys; print(sys.prefix)"], env_name="binjob",
                    site=site, options=SubmitOptions(workdir=tmp_path, stage=True,
                                                     error=str(tmp_path / "err-%j.txt")))
    assert job_exit_code(wait_for(site_scheduler(site), result.job_id or "")) == 0
    assert (tmp_path / f"slurm-{result.job_id}.out").read_text().strip() == record.prefix
    [line] = (tmp_path / f"err-{result.job_id}.txt").read_text().splitlines()
    assert line.startswith("hpcenv: warning: not staged (relocate: ")
    assert "longer than the packed prefix" in line and line.endswith(record.prefix)
    assert not any(deep.glob(f"hpcenv-*/{Path(record.prefix).name}*.tmp.*"))
