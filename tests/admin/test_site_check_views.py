"""``hpcenv site check`` on the module tree and the site kernel dir."""

from __future__ import annotations

from pathlib import Path

from hpcenv.admin.site_check import check_site
from hpcenv.site.config import parse_site_file


def test_module_and_kernel_dirs_are_checked(tmp_path: Path) -> None:
    (tmp_path / "modulefiles").mkdir()
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    site_file = tmp_path / "site.yaml"
    site_file.write_text(f"envs_dirs: [{tmp_path}/envs]\npkgs_dirs: [{tmp_path}/pkgs]\n"
                         f"registry: {tmp_path}/registry\nstate_dir: {tmp_path}/state\n"
                         f"modules_dir: {tmp_path}/modulefiles\nkernels_dir: {blocker}\n")
    checks = {c.name: c for c in check_site(parse_site_file(site_file, environ={}))}
    assert checks["modules_dir"].status == "pass"
    assert checks["kernels_dir"].status == "warn" and "not a directory" in checks["kernels_dir"].detail


def test_no_check_without_the_keys(tmp_path: Path) -> None:
    site_file = tmp_path / "site.yaml"
    site_file.write_text(f"envs_dirs: [{tmp_path}/envs]\npkgs_dirs: [{tmp_path}/pkgs]\n")
    names = {c.name for c in check_site(parse_site_file(site_file, environ={}))}
    assert not names & {"modules_dir", "kernels_dir"}
