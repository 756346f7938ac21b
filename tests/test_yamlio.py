"""YAML loading with file:line for every value (hpcenv.yamlio), directly, without a spec or
site config on top."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from hpcenv.errors import InvalidInput
from hpcenv.yamlio import YNode, closest, load_yaml_file, load_yaml_text, read_text_file

NESTED = """\
# a comment line
name: demo
section:
  key: 12.10
  list:
    - python=3.10
    - {inline: yes}

  other:
    deeper: null
items: [a, b,
        c]
"""


def lines(node: YNode, path: str = "") -> dict[str, tuple[int, int]]:
    """Every value's (line, key_line), by its path in the document."""
    out = {path or "/": (node.line, node.key_line)}
    if node.is_mapping:
        for key, child in node.value.items():
            out.update(lines(child, f"{path}/{key}"))
    elif node.is_sequence:
        for index, child in enumerate(node.value):
            out.update(lines(child, f"{path}/{index}"))
    return out


def test_every_value_keeps_its_line_and_its_keys_line() -> None:
    root = load_yaml_text(NESTED, "f.yml")
    assert root is not None
    assert lines(root) == {
        "/": (2, 2),
        "/name": (2, 2),
        "/section": (4, 3),          # a block mapping starts on the line after its key
        "/section/key": (4, 4),
        "/section/list": (6, 5),
        "/section/list/0": (6, 6),
        "/section/list/1": (7, 7),
        "/section/list/1/inline": (7, 7),
        "/section/other": (10, 9),   # the blank line 8 does not shift anything
        "/section/other/deeper": (10, 10),
        "/items": (11, 11),
        "/items/0": (11, 11),
        "/items/2": (12, 12),        # a flow list item on a continuation line has its own line
        "/items/1": (11, 11),
    }


def test_scalars_keep_their_source_text() -> None:
    root = load_yaml_text(NESTED, "f.yml")
    assert root is not None
    key = root.value["section"].value["key"]
    # YAML reads 12.10 as the float 12.1; the text says what the user wrote.
    assert (key.value, key.text) == (12.1, "12.10")
    assert root.value["section"].value["list"].value[0].text == "python=3.10"
    inline = root.value["section"].value["list"].value[1].value["inline"]
    assert (inline.value, inline.text) == (True, "yes")
    assert root.value["section"].value["other"].value["deeper"].is_null
    # Containers have no text of their own.
    assert root.value["section"].text is None and root.value["items"].text is None
    assert root.plain() == {"name": "demo",
                            "section": {"key": 12.1, "list": ["python=3.10", {"inline": True}],
                                        "other": {"deeper": None}},
                            "items": ["a", "b", "c"]}
    assert root.plain() == yaml.safe_load(NESTED)


def test_folded_plain_scalar_spans_lines() -> None:
    root = load_yaml_text("a: one\n  two\n  three\nb: x\nc: |\n  block\n  text\nd: 1\n", "f")
    assert root is not None
    a, b, c = (root.value[k] for k in "abc")
    assert (a.line, a.end_line, a.value) == (1, 3, "one two three")
    assert (b.line, b.end_line) == (4, 4)
    assert (c.line, c.end_line, c.value) == (5, 7, "block\ntext\n")


def test_mapping_keys_are_their_source_text() -> None:
    root = load_yaml_text("on: 1\nyes: 2\n3: 3\nnull: 4\n1.0: 5\n", "f")
    assert root is not None
    # YAML 1.1 would read these keys as True, True, 3, None and 1.0.
    assert list(root.value) == ["on", "yes", "3", "null", "1.0"]


def test_describe_names_what_a_value_is() -> None:
    root = load_yaml_text("a: numpy\nb: 12.10\nc: no\nd:\ne: [1]\nf: {x: 1}\ng: '3'\n", "f")
    assert root is not None
    assert {k: v.describe() for k, v in root.value.items()} == {
        "a": "the text 'numpy'", "b": "the number 12.10", "c": "the boolean no",
        "d": "nothing (null)", "e": "a list", "f": "a mapping", "g": "the text '3'"}


def test_impossible_timestamp_stays_text() -> None:
    root = load_yaml_text("when: 2024-13-45\nok: 2024-01-02\n", "f")
    assert root is not None
    assert root.value["when"].value == "2024-13-45"
    assert str(root.value["ok"].value) == "2024-01-02"


def test_empty_documents_are_none() -> None:
    assert load_yaml_text("", "f") is None
    assert load_yaml_text("# only a comment\n\n", "f") is None


# --- duplicate keys and merges -----------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("a: 1\nb: 2\na: 3\n", "f.yml:3: duplicate key 'a' (first on line 1); keep only one"),
    ("top:\n  x: 1\n  y:\n    z: 1\n    z: 2\n",
     "f.yml:5: duplicate key 'z' (first on line 4); keep only one"),
    ("- {k: 1, k: 2}\n", "f.yml:1: duplicate key 'k' (first on line 1); keep only one"),
    # Quoting does not make a second key different: it is the same text.
    ("a: 1\n'a': 2\n", "f.yml:2: duplicate key 'a' (first on line 1); keep only one"),
])
def test_duplicate_keys_name_both_lines(text: str, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_yaml_text(text, "f.yml")
    assert str(caught.value) == message


def test_merge_keys_work_as_safe_load_and_explicit_keys_override_them() -> None:
    text = ("base: &b {x: 1, y: 2}\n"
            "other: &o {x: 9, w: 0}\n"
            "c:\n  <<: *b\n  x: 3\n"
            "d:\n  <<: [*b, *o]\n"
            "e:\n  <<: *b\n")
    root = load_yaml_text(text, "f.yml")
    assert root is not None
    assert root.plain() == yaml.safe_load(text)
    assert root.plain()["c"] == {"x": 3, "y": 2}
    assert root.plain()["d"] == {"x": 1, "y": 2, "w": 0}   # the first merged mapping wins
    # The overriding value reports its own line, not the anchor's.
    assert root.value["c"].value["x"].line == 5
    assert root.value["e"].value["x"].line == 1
    # A mapping with a merge, aliased under another key, reads the same there.
    aliased = "base: &b {x: 1, y: 2}\nc: &c\n  <<: *b\n  x: 3\nd: *c\n"
    root = load_yaml_text(aliased, "f.yml")
    assert root is not None and root.plain() == yaml.safe_load(aliased)
    assert root.plain()["d"] == {"x": 3, "y": 2}
    # Two explicit keys are still a duplicate, merge or not.
    with pytest.raises(InvalidInput, match=r"^f.yml:6: duplicate key 'x' \(first on line 5\)"):
        load_yaml_text("base: &b {x: 1}\nc:\n  <<: *b\n  y: 0\n  x: 3\n  x: 4\n", "f.yml")


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("a: [1, 2\nb: 3\n", 2, "invalid YAML"),
    ("a: 1\n b: 2\n", 2, "invalid YAML"),
    ("a: 1\n---\nb: 2\n", 2, "invalid YAML"),
    ("a: 1\nb: \x01\n", 2, "control character U+0001 is not allowed; remove it"),
    ("a: &x\n  - *x\n", 1, "recursive YAML alias; an anchor cannot contain itself"),
    ("a: 1\n? [k]\n: v\n", 2, "mapping keys must be plain names, not lists or mappings"),
    ("a: 1\n'': 2\n", 2, "empty key; write a name before the ':'"),
    ("a: *nowhere\n", 1, "invalid YAML"),
])
def test_errors_name_source_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        load_yaml_text(text, Path("/x/site.yaml"))
    message = str(caught.value)
    assert message.startswith(f"/x/site.yaml:{line}: "), message
    assert fragment in message
    assert "\n" not in message


def test_nested_aliases_do_not_blow_up() -> None:
    """A "billion laughs" document converts each shared node once."""
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for level in "bcdefghij":
        prev = chr(ord(level) - 1)
        text += f"{level}: &{level} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, " \
                f"*{prev}, *{prev}, *{prev}, *{prev}]\n"
    started = time.monotonic()
    root = load_yaml_text(text, "f")
    assert time.monotonic() - started < 5
    assert root is not None
    top = root.value["j"]
    assert top.value[0] is top.value[9]  # shared, not copied 10**9 times


# --- closest -----------------------------------------------------------------------------------

def test_closest_suggests_a_misspelt_option() -> None:
    keys = ("dependencies", "channels", "name", "variables", "prefix")
    assert closest("dependecies", keys) == "dependencies"
    assert closest("chanels", keys) == "channels"
    assert closest("Name", keys) == "name"
    assert closest("variable", keys) == "variables"
    assert closest("zzzz", keys) is None
    assert closest("anything", ()) is None


def test_closest_prefers_the_nearest_of_several() -> None:
    assert closest("envs_dir", ("envs_dirs", "pkgs_dirs")) == "envs_dirs"
    assert closest("pkgs_dir", ("envs_dirs", "pkgs_dirs")) == "pkgs_dirs"


# --- reading files -----------------------------------------------------------------------------

def test_read_text_file_drops_a_bom_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "f.yml"
    path.write_bytes(b"\xef\xbb\xbfa: \xc3\xa9\r\nb: 2\r\n")
    assert read_text_file(path) == "a: \u00e9\r\nb: 2\r\n"
    root = load_yaml_file(path)
    assert root is not None and root.plain() == {"a": "\u00e9", "b": 2}
    assert root.value["b"].line == 2
    # A BOM in the middle is content, not an encoding mark.
    path.write_bytes(b"a: 1\n\xef\xbb\xbf")
    assert read_text_file(path) == "a: 1\n\ufeff"


def test_read_text_file_errors_say_what_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(InvalidInput) as caught:
        read_text_file(missing, "site config")
    assert str(caught.value) == f"{missing}: no such site config; check the path"
    with pytest.raises(InvalidInput) as caught:
        read_text_file(tmp_path, "environment file")
    assert str(caught.value) == (f"{tmp_path}: is a directory; give the path of the "
                                 "environment file itself")
    latin = tmp_path / "latin1.yml"
    latin.write_bytes(b"name: x\ndependencies:\n  - caf\xe9\n")
    with pytest.raises(InvalidInput) as caught:
        read_text_file(latin, "environment file")
    assert str(caught.value) == f"{latin}:3: not UTF-8 text; save the environment file as UTF-8"
    loop = tmp_path / "loop.yml"
    loop.symlink_to(loop)
    with pytest.raises(InvalidInput, match=r"loop.yml: cannot read the file: "):
        read_text_file(loop)
    # The same errors come through load_yaml_file, which also names the file on YAML errors.
    with pytest.raises(InvalidInput, match=r"nope.yml: no such file; check the path"):
        load_yaml_file(missing)
    bad = tmp_path / "bad.yml"
    bad.write_text("a: 1\na: 2\n")
    with pytest.raises(InvalidInput, match=rf"^{bad}:2: duplicate key 'a'"):
        load_yaml_file(bad)


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root reads files whatever their mode")
def test_read_text_file_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "secret.yml"
    path.write_text("a: 1\n")
    path.chmod(0)
    with pytest.raises(InvalidInput, match=r"secret.yml: permission denied; make the site config"):
        read_text_file(path, "site config")


# --------------------------------------------------------------------------- parse cache

def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json")) if cache.exists() else []


def test_a_kept_document_reads_back_equal_in_a_process_without_pyyaml(tmp_path: Path) -> None:
    import subprocess
    import sys

    cache = tmp_path / "cache"
    text = NESTED + "anchors:\n  a: &x {k: [1, 2.5, -0.0, .inf, true, ~, '3.10']}\n  b: *x\n"
    parsed = load_yaml_text(text, "f.yml", cache=cache)
    assert parsed == load_yaml_text(text, "f.yml") and len(_entries(cache)) == 1
    source = tmp_path / "f.yml"
    source.write_text(text)
    code = ("import sys; from pathlib import Path; from hpcenv.yamlio import load_yaml_file; "
            f"node = load_yaml_file(Path({str(source)!r}), cache=Path({str(cache)!r})); "
            "print(repr(node)); print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == [repr(parsed), "False"]


def test_an_edit_is_parsed_whatever_its_size_or_time(tmp_path: Path) -> None:
    cache, path = tmp_path / "cache", tmp_path / "site.yaml"
    path.write_text("engine: rattler\n")
    stamp = path.stat().st_mtime_ns
    assert load_yaml_file(path, cache=cache).plain() == {"engine": "rattler"}  # type: ignore[union-attr]
    path.write_text("engine: condaXX\n")  # same size, same mtime: only the text tells
    os.utime(path, ns=(stamp, stamp))
    assert load_yaml_file(path, cache=cache).plain() == {"engine": "condaXX"}  # type: ignore[union-attr]
    assert len(_entries(cache)) == 2


def test_only_an_entry_of_this_user_that_nobody_else_can_change_is_read(tmp_path: Path) -> None:
    import json

    cache = tmp_path / "cache"
    text = "key: real\n"
    load_yaml_text(text, "f.yml", cache=cache)
    (entry,) = _entries(cache)
    assert entry.stat().st_mode & 0o777 == 0o600
    # An entry naming the same text with another tree is believed: it is read, not re-parsed.
    forged = json.loads(entry.read_text())
    forged["tree"][0]["map"][0][1][0]["scalar"] = "forged"
    entry.write_text(json.dumps(forged))
    assert load_yaml_text(text, "f.yml", cache=cache).plain() == {"key": "forged"}  # type: ignore[union-attr]
    entry.chmod(0o620)  # writable by the group: not trusted
    assert load_yaml_text(text, "f.yml", cache=cache).plain() == {"key": "real"}  # type: ignore[union-attr]
    entry.write_text(json.dumps(forged))
    entry.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(entry, 12345, -1)  # someone else's
        assert load_yaml_text(text, "f.yml", cache=cache).plain() == {"key": "real"}  # type: ignore[union-attr]
    for broken in ("{", json.dumps({**forged, "format": -1}), json.dumps({**forged, "tree": 1})):
        entry.unlink()
        entry.write_text(broken)
        entry.chmod(0o600)
        assert load_yaml_text(text, "f.yml", cache=cache).plain() == {"key": "real"}  # type: ignore[union-attr]


def test_errors_timestamps_and_alias_bombs_are_never_kept(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for _ in range(2):
        with pytest.raises(InvalidInput, match="f.yml:2: invalid YAML"):
            load_yaml_text("a: 1\n b: [\n", "f.yml", cache=cache)
    assert _entries(cache) == []
    dated = load_yaml_text("when: 2024-01-02\n", "f.yml", cache=cache)
    assert str(dated.plain()["when"]) == "2024-01-02" and _entries(cache) == []  # type: ignore[union-attr]
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcde", "bcdef"))
    assert load_yaml_text(bomb, "f.yml", cache=cache) is not None and _entries(cache) == []


def test_the_cache_keeps_a_bounded_number_of_entries(tmp_path: Path) -> None:
    from hpcenv.yamlio import CACHE_ENTRIES

    cache = tmp_path / "cache"
    for n in range(CACHE_ENTRIES + 5):
        load_yaml_text(f"n: {n}\n", "f.yml", cache=cache)
    assert len(_entries(cache)) == CACHE_ENTRIES
    assert load_yaml_text(f"n: {CACHE_ENTRIES + 4}\n", "f.yml", cache=cache).plain() == {  # type: ignore[union-attr]
        "n": CACHE_ENTRIES + 4}


def test_a_cache_that_cannot_be_written_only_means_parsing(tmp_path: Path) -> None:
    blocked = tmp_path / "file-in-the-way"
    blocked.write_text("")
    assert load_yaml_text("a: 1\n", "f.yml", cache=blocked / "cache").plain() == {"a": 1}  # type: ignore[union-attr]


def test_yaml_cache_dir_follows_xdg_then_home() -> None:
    from hpcenv.yamlio import yaml_cache_dir

    assert yaml_cache_dir({"XDG_CACHE_HOME": "/x", "HOME": "/h"}) == Path("/x/hpcenv/yaml")
    assert yaml_cache_dir({"HOME": "/h"}) == Path("/h/.cache/hpcenv/yaml")
