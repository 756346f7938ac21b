"""YAML loading that remembers where every value was written.

Config validation must point admins at ``file:line``; plain ``yaml.safe_load`` forgets lines, so
this composes the node graph (``yaml.compose``) and wraps every value in a :class:`YNode` carrying
its line, the line of the key that holds it, and (for scalars) the text exactly as written, so
``max_cuda: 12.10`` is not silently read as the float ``12.1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcenv.errors import InvalidInput, where


@dataclass(frozen=True)
class YNode:
    """One YAML value: ``value`` is a scalar, ``dict[str, YNode]`` or ``list[YNode]``."""

    value: Any
    line: int                 # 1-based line where the value starts
    key_line: int             # line of the mapping key holding it (== line for list items/root)
    text: str | None = None   # scalars only: the source text, before YAML type resolution

    @property
    def is_mapping(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_sequence(self) -> bool:
        return isinstance(self.value, list)

    def plain(self) -> Any:
        """The value as ordinary Python objects, without line information."""
        if isinstance(self.value, dict):
            return {k: v.plain() for k, v in self.value.items()}
        if isinstance(self.value, list):
            return [v.plain() for v in self.value]
        return self.value


def load_yaml_text(text: str, source: Path | str) -> YNode | None:
    """Parse one YAML document; ``None`` for an empty document.

    Raises InvalidInput with ``source:line`` on syntax errors, non-string or duplicate keys.
    """
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        return _convert(loader, root, key_line=root.start_mark.line + 1, source=source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "syntax error"
        raise InvalidInput(f"{where(source, line)}: invalid YAML: {problem}; "
                           "fix the syntax (check indentation, quotes and colons)") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source}: invalid YAML: {exc}".replace("\n", " ")) from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path) -> YNode | None:
    """Read and parse ``path``; unreadable files raise InvalidInput naming the path."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: cannot read: {exc}") from None
    return load_yaml_text(text, path)


def _convert(loader: Any, node: Any, *, key_line: int, source: Path | str) -> YNode:
    import yaml

    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        # Resolves `<<: *anchor` merge keys in place, as safe_load would.
        loader.flatten_mapping(node)
        items: dict[str, YNode] = {}
        for key_node, value_node in node.value:
            kline = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise InvalidInput(f"{where(source, kline)}: mapping keys must be plain names, "
                                   "not lists or mappings")
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                raise InvalidInput(f"{where(source, kline)}: key {key_node.value!r} must be a "
                                   f"name; quote it if it is meant as text")
            if key in items:
                raise InvalidInput(f"{where(source, kline)}: duplicate key {key!r} (first on line "
                                   f"{items[key].key_line}); keep only one")
            items[key] = _convert(loader, value_node, key_line=kline, source=source)
        return YNode(items, line, key_line)
    if isinstance(node, yaml.SequenceNode):
        return YNode([_convert(loader, child, key_line=child.start_mark.line + 1, source=source)
                      for child in node.value], line, key_line)
    return YNode(loader.construct_object(node, deep=True), line, key_line, text=node.value)
