"""YAML loading that remembers where every value was written.

Config and spec validation must point users at ``file:line``; plain ``yaml.safe_load`` forgets
lines, so this composes the node graph (``yaml.compose``) and wraps every value in a
:class:`YNode` carrying its line, the line of the key that holds it, and (for scalars) the text
exactly as written, so ``max_cuda: 12.10`` is not silently read as the float ``12.1`` and
``python=3.10`` stays ``3.10``.  Both site configs and environment files are read through here.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcenv.errors import HpcenvError, InvalidInput, where


@dataclass(frozen=True)
class YNode:
    """One YAML value: ``value`` is a scalar, ``dict[str, YNode]`` or ``list[YNode]``."""

    value: Any
    line: int                 # 1-based line where the value starts
    key_line: int             # line of the mapping key holding it (== line for list items/root)
    text: str | None = None   # scalars only: the source text, before YAML type resolution
    end_line: int = 0         # scalars only: last line of the value (a plain scalar may fold)
    quoted: bool = False      # scalars only: written in quotes (or as a block), so always text

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_sequence(self) -> bool:
        return isinstance(self.value, list)

    @property
    def is_null(self) -> bool:
        return self.value is None

    def describe(self) -> str:
        """What a value is, for "expected X, got ..." messages: ``the text 'numpy'``."""
        value = self.value
        if isinstance(value, dict):
            return "a mapping"
        if isinstance(value, list):
            return "a list"
        if value is None:
            return "nothing (null)"
        if isinstance(value, bool):
            return f"the boolean {self.text}"
        if isinstance(value, (int, float)):
            return f"the number {self.text}"
        return f"the text {self.text!r}"

    def plain(self) -> Any:
        """The value as ordinary Python objects, without line information."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def closest(word: str, options: tuple[str, ...]) -> str | None:
    """The option ``word`` was probably meant to be (a misspelt key), if any is close."""
    import difflib  # only needed on the error path

    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return close[0] if close else None


# Config and environment files are a few KiB; a file far larger is a mistake (a log, a dataset,
# /dev/zero), and reading it whole would exhaust a login node's memory before saying so.
MAX_TEXT_BYTES = 4 * 1024 * 1024
# Nesting no config or environment file needs, far below what would exhaust Python's stack.
MAX_NESTING = 64


def read_text_file(path: Path, what: str = "file") -> str:
    """Read ``path`` as UTF-8 (a leading BOM is dropped); InvalidInput says what to fix.

    ``what`` names the file in messages ("environment file", "site config").  Only regular
    files up to :data:`MAX_TEXT_BYTES` are read: a FIFO would block forever and a device or a
    huge file would fill memory.
    """
    try:
        with open(path, "rb", opener=_open_nonblocking) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"{path}: is not a regular file (a pipe, device or socket); "
                                   f"give the path of the {what} itself")
            data = handle.read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:
            raise InvalidInput(f"{path}: larger than {MAX_TEXT_BYTES // (1024 * 1024)} MiB; "
                               f"is this really the {what}?")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such {what}; check the path") from None
    except IsADirectoryError:
        raise InvalidInput(f"{path}: is a directory; give the path of the {what} "
                           "itself") from None
    except PermissionError:
        raise InvalidInput(f"{path}: permission denied; make the {what} (and the directories "
                           "above it) readable for you, or use a copy") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InvalidInput(f"{path}:{line}: not UTF-8 text; save the {what} as UTF-8") from None


def _open_nonblocking(path: str, flags: int) -> int:
    # O_NONBLOCK: opening a FIFO must not wait for a writer (the type check then refuses it).
    return os.open(path, flags | os.O_NONBLOCK)


def load_yaml_text(text: str, source: Path | str, *, cache: Path | None = None) -> YNode | None:
    """Parse one YAML document; ``None`` for an empty document.

    Raises InvalidInput with ``source:line`` on syntax errors, several documents, complex or
    duplicate keys and recursive aliases.  Mapping keys are always their source text (``on:``
    is the key ``"on"``, not YAML 1.1's ``True``).

    ``cache``: a directory of this user's (:func:`yaml_cache_dir`) keeping parsed documents by
    their exact text.  The tree depends on the text alone (no path, environment or clock), so a
    document whose text is kept there is read back instead of parsed, and the ~8 ms PyYAML
    import is skipped; anything else about the entry (missing, unreadable, someone else's, of
    another format) only means parsing.  Only documents that parse are kept.
    """
    if cache is not None and (kept := _cached_tree(cache, text)) is not None:
        return kept
    root = _parse_yaml_text(text, source)
    if cache is not None and root is not None:
        _keep_tree(cache, text, root)
    return root


def _parse_yaml_text(text: str, source: Path | str) -> YNode | None:
    import yaml

    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters right away
        root = loader.get_single_node()
        if root is None:
            return None
        return _Converter(loader, source).convert(root, key_line=root.start_mark.line + 1)
    except RecursionError:
        raise InvalidInput(f"{source}: nested too deeply for a config or environment file; "
                           "flatten it") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise InvalidInput(f"{where(source, line)}: invalid YAML: {problem}; "
                           "fix the syntax (check indentation, quotes and colons)") from None
    except yaml.reader.ReaderError as exc:
        # Unprintable characters: PyYAML gives a character offset (and code), not a line.
        line = text[:exc.position].count("\n") + 1
        raise InvalidInput(f"{where(source, line)}: invalid YAML: control character "
                           f"U+{int(exc.character):04X} is not allowed; remove it") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: Path, what: str = "file", *, cache: Path | None = None) -> YNode | None:
    """Read and parse ``path``; unreadable files raise InvalidInput naming the path."""
    return load_yaml_text(read_text_file(path, what), path, cache=cache)


# --------------------------------------------------------------------------- parse cache

# Bumped whenever _Converter's output changes: an entry of another format is not read.
CACHE_FORMAT = 1
# Entries kept; the oldest go when a new one is written (one per distinct file text).
CACHE_ENTRIES = 64
# Nodes of a document worth keeping: site configs and environment files have a few hundred.
CACHE_NODES = 20_000


def yaml_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """This user's parse cache: ``$XDG_CACHE_HOME/hpcenv/yaml``, else ``~/.cache/hpcenv/yaml``."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"),
                                                      ".cache")
    return Path(base) / "hpcenv" / "yaml"


def _entry_path(cache: Path, text: str) -> Path:
    import zlib

    data = text.encode("utf-8", "surrogatepass")
    return cache / f"{zlib.crc32(data):08x}-{len(data)}.json"


def _cached_tree(cache: Path, text: str) -> YNode | None:
    import json

    try:
        fd = os.open(_entry_path(cache, text), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        # Only an entry this user wrote and nobody else could change stands for a file.
        if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as handle:
            entry = json.loads(handle.read(MAX_TEXT_BYTES * 8))
        if (not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT
                or entry.get("text") != text):
            return None
        return _decode(entry["tree"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, RecursionError):
        return None
    finally:
        os.close(fd)


def _keep_tree(cache: Path, text: str, root: YNode) -> None:
    import json

    from hpcenv.fsutil import atomic_write_text

    try:
        tree = _encode(root, [CACHE_NODES])
    except TypeError:
        return  # a value JSON cannot carry (a timestamp, binary, a set), or too many: parsed
    try:
        os.makedirs(cache, mode=0o700, exist_ok=True)
        entries = sorted(cache.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in entries[:max(0, len(entries) - CACHE_ENTRIES + 1)]:
            old.unlink(missing_ok=True)
        atomic_write_text(_entry_path(cache, text),
                          json.dumps({"format": CACHE_FORMAT, "text": text, "tree": tree}),
                          mode=0o600, fsync=False)
    except (OSError, HpcenvError):
        pass  # a cache that cannot be written only means parsing next time


def _encode(node: YNode, budget: list[int]) -> list[Any]:
    # The tree shares the nodes of aliases; written out, each is repeated, so a file of nested
    # aliases would grow without bound: past the budget the document is simply not kept.
    budget[0] -= 1
    if budget[0] < 0:
        raise TypeError("too many nodes")
    value = node.value
    if isinstance(value, dict):
        body: Any = {"map": [[k, _encode(v, budget)] for k, v in value.items()]}
    elif isinstance(value, list):
        body = {"seq": [_encode(v, budget) for v in value]}
    elif value is None or isinstance(value, (str, bool, int, float)):
        body = {"scalar": value}
    else:
        raise TypeError(type(value).__name__)
    return [body, node.line, node.key_line, node.text, node.end_line, node.quoted]


def _decode(data: list[Any]) -> YNode:
    body, line, key_line, text, end_line, quoted = data
    if "map" in body:
        value: Any = {k: _decode(v) for k, v in body["map"]}
    elif "seq" in body:
        value = [_decode(v) for v in body["seq"]]
    else:
        value = body["scalar"]
    return YNode(value, line, key_line, text=text, end_line=end_line, quoted=quoted)


class _Converter:
    """Turns composed nodes into YNodes.

    Aliases share their node, so converted values are memoised (a file of nested aliases cannot
    blow up) and the nodes being converted are tracked (a recursive alias is an error, not a
    RecursionError).
    """

    def __init__(self, loader: Any, source: Path | str) -> None:
        self.loader = loader
        self.source = source
        self.done: dict[tuple[int, int], YNode] = {}
        self.active: set[int] = set()   # the nodes being converted, outermost first
        self.written: dict[int, set[int]] = {}  # mapping node -> its own (not merged) key nodes

    def convert(self, node: Any, *, key_line: int) -> YNode:
        memo = (id(node), key_line)
        if memo in self.done:
            return self.done[memo]
        line = node.start_mark.line + 1
        if id(node) in self.active:
            raise InvalidInput(f"{where(self.source, line)}: recursive YAML alias; an anchor "
                               "cannot contain itself")
        if len(self.active) >= MAX_NESTING:
            raise InvalidInput(f"{where(self.source, line)}: nested more than {MAX_NESTING} "
                               "levels deep; flatten the file")
        self.active.add(id(node))
        try:
            result = self._convert(node, line, key_line)
        finally:
            self.active.discard(id(node))
        self.done[memo] = result
        return result

    def _convert(self, node: Any, line: int, key_line: int) -> YNode:
        import yaml

        if isinstance(node, yaml.MappingNode):
            # Resolves `<<: *anchor` merge keys in place, as safe_load would: merged pairs come
            # first, and a key written in the mapping itself overrides a merged one.
            # (Flattening rewrites the node: an alias converts it again, already flattened.)
            written = self.written.setdefault(id(node), {id(k) for k, _ in node.value})
            self.loader.flatten_mapping(node)
            items: dict[str, YNode] = {}
            merged: set[str] = set()
            for key_node, value_node in node.value:
                kline = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    raise InvalidInput(f"{where(self.source, kline)}: mapping keys must be plain "
                                       "names, not lists or mappings")
                key = key_node.value
                if not key.strip():
                    raise InvalidInput(f"{where(self.source, kline)}: empty key; write a name "
                                       "before the ':'")
                if key in items and key not in merged:
                    raise InvalidInput(f"{where(self.source, kline)}: duplicate key {key!r} "
                                       f"(first on line {items[key].key_line}); keep only one")
                items[key] = self.convert(value_node, key_line=kline)
                if id(key_node) in written:
                    merged.discard(key)
                else:
                    merged.add(key)
            return YNode(items, line, key_line)
        if isinstance(node, yaml.SequenceNode):
            return YNode([self.convert(child, key_line=child.start_mark.line + 1)
                          for child in node.value], line, key_line)
        try:
            value = self.loader.construct_object(node, deep=True)
        except ValueError:
            self.loader.recursive_objects.pop(node, None)
            # Text YAML 1.1 resolves to an impossible timestamp (2024-13-45): keep it as text
            # and let the validator of that key say what it expects.
            value = node.value
        # end_mark sits after the value; at column 0 that is the start of the next line.
        end = node.end_mark.line + (1 if node.end_mark.column > 0 else 0)
        return YNode(value, line, key_line, text=node.value, end_line=max(end, line),
                     quoted=node.style is not None)
