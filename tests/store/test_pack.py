"""Env packs: real envs from the demo channel packed, unpacked elsewhere and run from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hpcenv.build.builder import build_env
from hpcenv.errors import HpcenvError, NotFound
from hpcenv.site.config import SiteConfig
from hpcenv.spec.environment import parse_spec
from hpcenv.store import relocate, store_for
from hpcenv.store.activation import activation_env
from hpcenv.store.pack import create_pack, find_pack, packs_dir, read_manifest, unpack
from hpcenv.store.registry import EnvRecord

# Conda packages (a text placeholder, entry points, activate.d), a pip: section (files no
# package owns: hpcdemo-extra's console script) and variables: in conda-meta/state.
PACKED_ENV = """\
name: packed
dependencies:
  - python=3.11
  - hpcdemo-kernels
  - hpcdemo-tools
  - pip
  - pip:
    - hpcdemo_extra
variables:
  PACKED_MODE: fast
"""

PROBE = """\
import json, os, sys
import hpcdemo_kernels, hpcdemo_tools, hpcdemo_extra
print(json.dumps({"prefix": sys.prefix, "executable": sys.executable,
                  "build_prefix": hpcdemo_kernels.build_info()["prefix"],
                  "files": [m.__file__ for m in (hpcdemo_kernels, hpcdemo_tools, hpcdemo_extra, os)]}))
"""


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, demo_channel) -> tuple[SiteConfig, EnvRecord]:
    from hpcenv.demo.site import write_demo_site
    from hpcenv.site.config import load_site

    site = load_site(write_demo_site(tmp_path_factory.mktemp("packsite"), demo_channel))
    return site, build_env(parse_spec(PACKED_ENV), site).record


def files_naming(root: Path, text: str) -> list[str]:
    """Files under ``root`` that contain ``text``, but compiled bytecode, package records
    (which name the package cache) and the pack's own manifest."""
    needle = text.encode()
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if (path.is_symlink() or not path.is_file() or rel.endswith(".pyc")
                or rel.startswith(("conda-meta/", ".hpcenv-pack/"))):
            continue
        if needle in path.read_bytes():
            out.append(rel)
    return sorted(out)


def test_pack_lists_every_file_that_embeds_the_prefix(packed) -> None:
    site, record = packed
    result = create_pack(store_for(site), record, compression="zstd")
    assert result.created and result.path.parent == packs_dir(store_for(site))
    assert result.path.name == f"{Path(record.prefix).name}.tar.zst"
    manifest = read_manifest(result.path)
    assert manifest.prefix == record.prefix and manifest.python == "bin/python3"
    listed = {f.path: f.mode for f in manifest.files}
    # Exactly the files that name the prefix, found through paths_data and by scanning the
    # files pip installed (its console script), none missed and none extra.
    assert sorted(listed) == files_naming(Path(record.prefix), record.prefix)
    assert {"bin/hpcdemo-extra", "bin/hpcdemo-info", "share/hpcdemo-kernels/build.json"} <= set(listed)
    assert set(listed.values()) == {"text"}
    assert manifest.file_count > 1000 and manifest.unpacked_bytes > 10 * 1024 * 1024
    again = create_pack(store_for(site), record)
    assert not again.created and again.path == result.path


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_unpacked_copy_runs_without_the_shared_prefix(packed, tmp_path: Path, compression) -> None:
    site, record = packed
    pack = create_pack(store_for(site), record, compression=compression, force=True).path
    assert find_pack(store_for(site), record) == pack and pack.name.endswith(
        ".tar.zst" if compression == "zstd" else ".tar.gz")
    dest = unpack(pack, tmp_path / "node-local" / "copy")
    assert files_naming(dest, record.prefix) == []
    shared = Path(record.prefix)
    hidden = shared.with_name(shared.name + ".away")
    # Nothing of the shared prefix may be needed: move it away while the copy runs.
    os.rename(shared, hidden)
    try:
        env = activation_env(dest, {"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
                             name="packed")
        out = subprocess.run(["python", "-c", PROBE], env=env, capture_output=True, text=True,
                             check=True)
        tool = subprocess.run(["hpcdemo-info"], env=env, capture_output=True, text=True,
                              check=True)
        extra = subprocess.run(["hpcdemo-extra"], env=env, capture_output=True, text=True)
    finally:
        os.rename(hidden, shared)
    seen = json.loads(out.stdout)
    assert seen["prefix"] == seen["build_prefix"] == str(dest)
    assert seen["executable"].startswith(f"{dest}/bin/python")
    assert all(f.startswith(f"{dest}/") for f in seen["files"])
    assert f"prefix={dest}\n" in tool.stdout and "activated=cpu" in tool.stdout
    assert extra.returncode == 0, extra.stderr
    # activate.d scripts and variables: of the copy.
    assert env["HPCDEMO_KERNELS_HOME"] == f"{dest}/share/hpcdemo-kernels"
    assert env["PACKED_MODE"] == "fast" and env["CONDA_PREFIX"] == str(dest)


def test_pack_of_a_missing_pack_file_and_of_a_non_pack(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such pack"):
        read_manifest(tmp_path / "x.tar.zst")
    bogus = tmp_path / "bogus.tar.gz"
    subprocess.run(["gzip"], input=b"not a tar archive" * 100, stdout=bogus.open("wb"), check=True)
    with pytest.raises(HpcenvError, match="not a readable env pack"):
        read_manifest(bogus)


def test_cli_env_pack(packed, tmp_path: Path) -> None:
    site, record = packed
    base = [sys.executable, "-m", "hpcenv", "--site", str(site.source)]
    out = subprocess.run([*base, "env", "pack", "packed", "--force", "--compression", "gzip",
                          "--json"], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["created"] and data["pack"].endswith(".tar.gz") and data["relocated_files"] >= 4
    assert not Path(data["pack"]).with_name(f"{Path(record.prefix).name}.tar.zst").exists()
    text = subprocess.run([*base, "env", "pack", "packed"], capture_output=True, text=True)
    assert text.returncode == 0 and text.stdout.startswith("kept the existing pack of packed v1")
    missing = subprocess.run([*base, "env", "pack", "nosuchenv"], capture_output=True, text=True)
    assert missing.returncode == 1 and "nosuchenv" in missing.stderr


# --- relocation rules (pure byte logic) -------------------------------------------------------

OLD = b"/shared/envs/.hpcenv/builds/x-1-abc"


def test_binary_relocation_pads_and_keeps_offsets() -> None:
    data = b"\x7fELF\0" + OLD + b"/lib:" + OLD + b"/lib64\0tail" + OLD + b"\0end"
    out = relocate.relocate_binary(data, OLD, b"/tmp/s/x")
    assert len(out) == len(data)
    assert out.index(b"tail") == data.index(b"tail") and out.endswith(b"\0end")
    strings = [s for s in out.split(b"\0") if s]
    assert strings[1] == b"/tmp/s/x/lib:/tmp/s/x/lib64" and strings[2] == b"tail/tmp/s/x"
    with pytest.raises(relocate.PrefixTooLong):
        relocate.relocate_binary(data, OLD, OLD + b"-longer")


def test_long_shebang_becomes_env(tmp_path: Path) -> None:
    script = b"#!" + OLD + b"/bin/python3.11 -u\nprint('" + OLD + b"')\n"
    new = b"/" + b"n" * 130
    out = relocate.relocate_text(script, OLD, new, "bin/tool")
    assert out == b"#!/usr/bin/env python3.11 -u\nprint('" + new + b"')\n"
    assert relocate.relocate_text(script, OLD, b"/s", "bin/tool").startswith(b"#!/s/bin/python3.11 -u\n")


def test_relocate_refuses_a_longer_prefix_for_binary_files_before_changing_anything(tmp_path: Path) -> None:
    (tmp_path / ".hpcenv-pack").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.txt").write_bytes(OLD + b"/x\n")
    (tmp_path / "lib" / "b.so").write_bytes(b"\0" + OLD + b"/lib\0")
    (tmp_path / ".hpcenv-pack" / "manifest.json").write_text(json.dumps({
        "prefix": OLD.decode(), "files": [{"path": "lib/a.txt", "mode": "text"},
                                          {"path": "lib/b.so", "mode": "binary"}]}))
    longer = "/" + "y" * len(OLD)
    assert relocate.main(["relocate.py", str(tmp_path), longer]) == relocate.EXIT_TOO_LONG
    assert (tmp_path / "lib" / "a.txt").read_bytes() == OLD + b"/x\n"
    assert relocate.main(["relocate.py", str(tmp_path), "/tmp/s"]) == 0
    assert (tmp_path / "lib" / "a.txt").read_bytes() == b"/tmp/s/x\n"
    assert (tmp_path / "lib" / "b.so").read_bytes() == b"\0/tmp/s/lib" + b"\0" * (len(OLD) - 6 + 1)


def test_gc_removes_the_packs_of_removed_builds(site, tmp_path: Path) -> None:
    from hpcenv.store.gc import collect_garbage
    from hpcenv.store.lifecycle import remove_version

    first = build_env(parse_spec("name: gcpack\ndependencies:\n  - python=3.11\n"), site).record
    second = build_env(parse_spec("name: gcpack\ndependencies:\n  - python=3.11\n"
                                  "  - hpcdemo-tools\n"), site).record
    old_pack = create_pack(store_for(site), first).path
    live_pack = create_pack(store_for(site), second).path
    stray = packs_dir(store_for(site)) / "notes.txt"
    stray.write_text("not a pack")
    assert not [i for i in collect_garbage(store_for(site), dry_run=True).removed if i.kind == "pack"]
    remove_version(store_for(site), "gcpack", 1)
    planned = collect_garbage(store_for(site), dry_run=True)
    assert [i.path for i in planned.removed if i.kind == "pack"] == [old_pack] and old_pack.exists()
    report = collect_garbage(store_for(site))
    assert [i.path for i in report.removed if i.kind == "pack"] == [old_pack]
    assert not old_pack.exists() and live_pack.is_file() and stray.is_file()


def test_binary_files_are_padded_and_a_longer_prefix_is_refused(site, tmp_path: Path) -> None:
    """A file with NUL bytes naming the prefix (as a compiled library with a built-in path
    would) is found by the scan, packed as binary, padded on unpack, and makes a longer
    destination impossible."""
    import shutil
    import stat
    import tempfile

    record = build_env(parse_spec("name: binenv\ndependencies:\n  - python=3.11\n"), site).record
    prefix = Path(record.prefix)
    lib = prefix / "lib"
    mode = lib.stat().st_mode
    lib.chmod(mode | stat.S_IWUSR)  # published builds are read-only; this one gets a library
    blob = b"\x7fELF\0\0" + f"{prefix}/lib/plugins\0".encode() + b"\x01\x02end\0"
    (lib / "libfake.so").write_bytes(blob)
    lib.chmod(mode)
    pack = create_pack(store_for(site), record).path
    assert ("lib/libfake.so", "binary") in {(f.path, f.mode) for f in read_manifest(pack).files}

    too_long = tmp_path / ("x" * (len(str(prefix)) + 10))
    with pytest.raises(HpcenvError, match="longer than the packed prefix"):
        unpack(pack, too_long)
    assert not too_long.exists()

    short_root = Path(tempfile.mkdtemp(prefix="hp", dir="/tmp"))
    try:
        dest = unpack(pack, short_root / "c")
        out = (dest / "lib" / "libfake.so").read_bytes()
        assert len(out) == len(blob) and out.endswith(b"\x01\x02end\0")
        assert out.startswith(b"\x7fELF\0\0" + f"{dest}/lib/plugins\0".encode())
        assert subprocess.run([str(dest / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                              capture_output=True, text=True, check=True).stdout.strip() == str(dest)
    finally:
        shutil.rmtree(short_root)
