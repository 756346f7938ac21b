"""A tampered package-cache entry never reaches a new env (single user; the multi-user case is
tests/multiuser/test_cache_integrity.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from hpcenv.build.builder import BuildEvent, build_env
from hpcenv.fsutil import current_user
from hpcenv.site.config import SiteConfig
from hpcenv.spec.environment import parse_spec
from hpcenv.store import cache_integrity
from hpcenv.store.cache_integrity import VerifiedFiles, check_env, record_path

SPEC = "name: {name}\ndependencies:\n  - python=3.11\n  - hpcdemo-tools\n"
FILE = "site-packages/hpcdemo_tools/__init__.py"
IN_ENV = "lib/python3.11/site-packages/hpcdemo_tools/__init__.py"
PLANTED = 'print("planted")\n'



def tools_entry(pkgs: Path) -> str:
    """The cache entry of hpcdemo-tools (its build string follows the demo channel's build)."""
    [entry] = (p.name for p in pkgs.glob("hpcdemo-tools-*") if p.is_dir())
    return entry

def build(site: SiteConfig, name: str, events: list[BuildEvent] | None = None):
    return build_env(parse_spec(SPEC.format(name=name)), site,
                     on_progress=events.append if events is not None else None)


def replace_file(path: Path, text: str) -> None:
    """What another lab member can do in a group-writable cache: unlink, write a new file."""
    path.unlink()
    path.write_text(text)


def test_planted_file_is_quarantined_reextracted_and_reported(site: SiteConfig) -> None:
    first = build(site, "first")
    pkgs = Path(site.pkgs_dirs[0])
    entry = tools_entry(pkgs)
    target = pkgs / entry / FILE
    original = target.read_text()
    replace_file(target, PLANTED)

    events: list[BuildEvent] = []
    second = build(site, "second", events)
    assert (second.prefix / IN_ENV).read_text() == original
    warnings = [e.text for e in events if e.kind == "warning"]
    assert len(warnings) == 1
    assert entry in warnings[0] and FILE in warnings[0]
    assert f"owned by {current_user()}" in warnings[0]
    assert Path(second.record.log_path).read_text().count(warnings[0]) == 1
    [moved] = pkgs.glob(f".hpcenv-quarantine.{entry}.*")
    assert (moved / FILE).read_text() == PLANTED          # kept for an admin, not deleted
    assert target.read_text() == original                 # extracted again
    assert (first.prefix / IN_ENV).read_text() == original


def test_forged_paths_json_is_caught_once_the_user_has_seen_the_entry(site: SiteConfig) -> None:
    build(site, "first")
    name = tools_entry(Path(site.pkgs_dirs[0]))
    entry = Path(site.pkgs_dirs[0]) / name
    replace_file(entry / FILE, PLANTED)
    # The planted file's own hash written into paths.json: the file alone now "matches".
    paths_json = entry / "info" / "paths.json"
    doc = json.loads(paths_json.read_text())
    for item in doc["paths"]:
        if item["_path"] == FILE:
            item["sha256"] = hashlib.sha256(PLANTED.encode()).hexdigest()
            item["size_in_bytes"] = len(PLANTED)
    replace_file(paths_json, json.dumps(doc))

    events: list[BuildEvent] = []
    second = build(site, "second", events)
    assert "planted" not in (second.prefix / IN_ENV).read_text()
    [warning] = [e.text for e in events if e.kind == "warning"]
    assert name in warning and "info/paths.json" in warning


def test_repeat_check_of_own_files_only_stats_them(site: SiteConfig, monkeypatch) -> None:
    built = build(site, "first")
    record = VerifiedFiles.load(record_path(Path(site.state_dir), Path(site.pkgs_dirs[0])))
    assert record.files.get(tools_entry(Path(site.pkgs_dirs[0]))), \
        "the build's check left no record"

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"hashed {path} although it was verified before")

    # paths.json is hashed on every check (it is small); the package files are not.
    monkeypatch.setattr(cache_integrity, "_sha256",
                        lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()
                        if p.name == "paths.json" else no_hashing(p))
    assert check_env(built.prefix, record) == []


def test_a_changed_file_with_the_same_stat_key_is_not_trusted_from_another_owner(
        site: SiteConfig) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a cache file to another owner")
    built = build(site, "first")
    record = VerifiedFiles.load(record_path(Path(site.state_dir), Path(site.pkgs_dirs[0])))
    target = Path(site.pkgs_dirs[0]) / tools_entry(Path(site.pkgs_dirs[0])) / FILE
    st = target.stat()
    os.chown(target, 65534, -1)       # now someone else's file: they could rewrite it in place
    os.chmod(target, 0o644)
    with open(target, "r+") as handle:   # same size, same inode, mtime put back
        handle.write("#" * st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    [bad] = check_env(built.prefix, record)
    assert bad.path == FILE and bad.owner == "nobody"


def test_entries_the_build_extracted_itself_are_recorded_without_hashing(
        site: SiteConfig, monkeypatch) -> None:
    real = cache_integrity._sha256

    def only_paths_json(path: Path) -> str:
        assert path.name == "paths.json", f"hashed {path}, which this build extracted itself"
        return real(path)

    monkeypatch.setattr(cache_integrity, "_sha256", only_paths_json)
    build(site, "first")                     # an empty cache: every entry extracted now
    record = VerifiedFiles.load(record_path(Path(site.state_dir), Path(site.pkgs_dirs[0])))
    assert record.files.get(tools_entry(Path(site.pkgs_dirs[0])))
