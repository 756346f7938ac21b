"""The lab registry: records, versions, current pointer, atomic and concurrent writes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import other_group

from hpcenv.errors import HpcenvError, InvalidInput, NotFound
from hpcenv.spec.cuda_target import CudaTarget
from hpcenv.store.registry import EnvRecord, Registry


def record(name: str, version: int, key: str = "k" * 64, status: str = "ready") -> EnvRecord:
    return EnvRecord(name=name, version=version, key=key, spec={"conda": ["python"]},
                     spec_hash="h", lock_path=f"/r/{name}/{version}.lock.yml",
                     prefix=f"/e/{name}-{version}", cuda=CudaTarget.of("12.4"), cuda_override=None,
                     channels=["file:///c"], platform="linux-64", status=status,  # type: ignore[arg-type]
                     creator="alice@login1", created="2024-05-01T10:00:00+00:00")


def test_allocate_get_versions_current(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    assert reg.names() == [] and reg.versions("a") == [] and reg.current("a") is None
    r1 = reg.allocate("a", lambda v: record("a", v, key="1" * 64))
    r2 = reg.allocate("a", lambda v: record("a", v, key="2" * 64, status="building"))
    reg.allocate("b", lambda v: record("b", v))
    assert (r1.version, r2.version) == (1, 2)
    assert reg.names() == ["a", "b"]
    assert [r.version for r in reg.versions("a")] == [1, 2]
    assert reg.get("a", 2) == r2
    assert reg.find_ready("2" * 64) is None  # still building
    reg.set_status("a", 2, "ready", size_bytes=10)
    assert reg.find_ready("2" * 64, "a") == replace(r2, status="ready", size_bytes=10)
    assert reg.find_ready("2" * 64, "b") is None
    reg.set_current("a", 2)
    assert reg.current("a").version == 2
    assert (tmp_path / "reg" / "a" / "current").read_text() == "2\n"
    reg.set_current("a", None)
    assert reg.current_version("a") is None
    assert json.loads((tmp_path / "reg" / "a" / "1.json").read_text())["creator"] == "alice@login1"
    assert reg.lock_file("a", 3) == tmp_path / "reg" / "a" / "3.lock.yml"


def test_errors_name_what_is_wrong(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(NotFound, match="no environment 'x'"):
        reg.get("x", 1)
    reg.allocate("x", lambda v: record("x", v))
    with pytest.raises(NotFound, match=r"has no version 5 \(versions: 1\)"):
        reg.get("x", 5)
    with pytest.raises(NotFound):
        reg.set_current("x", 5)
    with pytest.raises(HpcenvError, match="does not match allocated"):
        reg.allocate("x", lambda v: record("x", v + 1))
    (tmp_path / "x" / "current").write_text("garbage")
    with pytest.raises(HpcenvError, match="not a version number"):
        reg.current("x")
    (tmp_path / "x" / "1.json").write_text("{ torn")
    with pytest.raises(HpcenvError, match=r"1.json: unreadable registry record"):
        reg.versions("x")


def test_files_are_group_readable_and_leave_no_temp_files(tmp_path: Path) -> None:

    group = other_group()
    old = os.umask(0o077)
    try:
        reg = Registry(tmp_path / "reg", group=group.gr_name, dir_mode=0o2775)
        reg.allocate("x", lambda v: record("x", v))
        reg.set_current("x", 1)
    finally:
        os.umask(old)
    root = tmp_path / "reg"
    assert stat.S_IMODE((root / "x" / "1.json").stat().st_mode) == 0o664
    assert stat.S_IMODE((root / "x" / "current").stat().st_mode) == 0o664
    for directory in (root, root / "x"):  # the registry root too, not only the name dirs
        assert stat.S_IMODE(directory.stat().st_mode) == 0o2775
        assert directory.stat().st_gid == group.gr_gid
    for name in ("1.json", "current"):
        assert (root / "x" / name).stat().st_gid == group.gr_gid
    assert sorted(p.name for p in (root / "x").iterdir()
                  if not p.name.startswith(".lock")) == ["1.json", "current"]


def test_concurrent_allocation_gives_distinct_versions(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]
        from test_registry import record
        from hpcenv.store.registry import Registry
        reg = Registry({str(tmp_path)!r})
        got = [reg.allocate("x", lambda v: record("x", v)).version for _ in range(5)]
        print(" ".join(map(str, got)))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    versions = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        versions += [int(v) for v in out.split()]
    assert sorted(versions) == list(range(1, 31))
    assert [r.version for r in Registry(tmp_path).versions("x")] == list(range(1, 31))


@pytest.mark.parametrize("name", ["../../etc", "..", "a/b", ".hidden", ""])
def test_names_are_validated_before_touching_the_filesystem(tmp_path: Path, name: str) -> None:
    reg = Registry(tmp_path / "reg")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "1.json").write_text(json.dumps(record("x", 1).to_dict()))
    for call in (lambda: reg.get(name, 1), lambda: reg.versions(name),
                 lambda: reg.current_version(name), lambda: reg.resolve(name),
                 lambda: reg.history(name), lambda: reg.lock_file(name, 1)):
        with pytest.raises(InvalidInput, match="invalid environment name"):
            call()
    with pytest.raises(InvalidInput):
        with reg.name_lock(name):
            pass
    assert not (tmp_path / "reg").exists()  # nothing was created on the way


def test_resolve_summaries_history(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "reg")
    with pytest.raises(NotFound, match="no environment 'a' in the registry"):
        reg.resolve("a")
    with pytest.raises(NotFound, match="no environment 'a'"):
        reg.history("a")
    reg.allocate("a", lambda v: record("a", v, key="1" * 64))
    reg.allocate("a", lambda v: record("a", v, key="2" * 64, status="retired"))
    with pytest.raises(NotFound, match="has no current version; pick one with --version"):
        reg.resolve("a")
    assert reg.resolve("a", 2).status == "retired"
    reg.set_current("a", 1)
    assert reg.resolve("a").version == 1
    (tmp_path / "reg" / "not an env").mkdir()  # made by hand: ignored, not an error
    (tmp_path / "reg" / "not an env" / "1.json").write_text("{}")
    summaries = reg.summaries()
    assert [s.to_dict() for s in summaries] == [{
        # versions: the ready ones (v2 is retired)
        "name": "a", "current": 1, "versions": 1, "cuda": "12.4", "prefix": "/e/a-1",
        "created": "2024-05-01T10:00:00+00:00", "creator": "alice@login1", "packages": 0,
        "size_bytes": 0, "unique_bytes": None, "shared_bytes": None}]
    history = reg.history("a")
    assert [(h.version, h.current, h.status, h.lock) for h in history] == [
        (1, True, "ready", "/r/a/1.lock.yml"), (2, False, "retired", "/r/a/2.lock.yml")]


def test_lockfile_is_stored_with_the_registry_mode(tmp_path: Path) -> None:

    group = other_group()
    reg = Registry(tmp_path / "reg", group=group.gr_name, dir_mode=0o2775)
    with pytest.raises(NotFound):
        reg.write_lockfile("x", 1, "version: 6\n")  # not allocated: nothing written
    reg.allocate("x", lambda v: record("x", v))
    old = os.umask(0o077)
    try:
        path = reg.write_lockfile("x", 1, "version: 6\n")
    finally:
        os.umask(old)
    assert path == reg.lock_file("x", 1) and path.read_text() == "version: 6\n"
    st = path.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o664, group.gr_gid)


def test_the_store_of_a_site_carries_its_lock_settings_to_the_registry(tmp_path: Path) -> None:
    from hpcenv.site.config import load_site
    from hpcenv.store import store_for

    site_file = tmp_path / "site.yaml"
    site_file.write_text(f"registry: {tmp_path}/reg\nlocks: {{method: mkdir, timeout: 7, "
                         "stale_after: 60}\npermissions: {dir_mode: '2770'}\n")
    reg = store_for(load_site(site_file)).registry()
    assert (reg.root, reg.lock_method, reg.lock_timeout, reg.lock_stale_after, reg.dir_mode) == (
        tmp_path / "reg", "mkdir", 7.0, 60.0, 0o2770)
