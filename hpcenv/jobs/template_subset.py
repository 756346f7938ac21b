"""Job templates rendered without importing Jinja2, when they keep to a small subset of it.

Importing Jinja2 costs a submit more than everything else it does in Python (tens of
milliseconds: its lexer, parser, compiler and runtime all load with the package).  The shipped
templates use a handful of constructs, and so do most site overrides; this module renders
exactly those, as Jinja2 renders them with the job environment's settings (``trim_blocks``,
``lstrip_blocks``, ``keep_trailing_newline``, ``StrictUndefined``):

- text, ``{# comments #}``;
- ``{{ name }}``, ``{{ name.attr }}`` (an attribute, else an item, as Jinja2 looks it up),
  each with any of the filters it is given (``| quote``);
- ``{% if %}`` / ``{% elif %}`` / ``{% else %}`` / ``{% endif %}`` on names, ``not``, ``and``,
  ``or``, ``== "text"`` / ``!= "text"`` and ``is [not] defined``;
- ``{% for x in name %}`` (with ``{% else %}``) and ``loop.first``, ``loop.last``,
  ``loop.index``, ``loop.index0``, ``loop.length``;
- ``{% include "file" %}``, searched in the same directories.

:func:`render` returns None for anything else (another tag or filter, whitespace control
``{%-``, a name the context lacks, a missing file): the caller then renders with Jinja2, which
also produces every error message.  ``tests/jobs/test_template_subset.py`` holds both renderers
to the same output, byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Filters = Mapping[str, Callable[[Any], str]]

# A tag and what is inside it; the text between tags is what the pattern skips.
_TAG = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}|\{#(.*?)#\}", re.DOTALL)
_WORD = re.compile(r"\s*(?:([A-Za-z_][A-Za-z0-9_]*)|(\"[^\"\\]*\"|'[^'\\]*')|(==|!=|\.|\|))")
_KEYWORDS = frozenset({"not", "and", "or", "is", "in", "defined", "true", "false", "none"})


class _Outside(Exception):
    """The template leaves the subset: render it with Jinja2."""


def render(name: str, dirs: Sequence[Path], context: Mapping[str, Any],
           filters: Filters) -> str | None:
    """Template ``name`` (the first found in ``dirs``) rendered with ``context``, or None when
    it, or a template it includes, is outside the subset."""
    try:
        out: list[str] = []
        _Renderer(dirs, filters).run(name, dict(context), out)
        return "".join(out)
    except _Outside:
        return None


class _Renderer:
    def __init__(self, dirs: Sequence[Path], filters: Filters) -> None:
        self.dirs = dirs
        self.filters = filters
        self.parsed: dict[str, list[Any]] = {}

    def run(self, name: str, scope: dict[str, Any], out: list[str]) -> None:
        if name not in self.parsed:
            self.parsed[name] = _parse(self._source(name))
        self._nodes(self.parsed[name], scope, out)

    def _source(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise _Outside  # Jinja2's loader refuses names that leave the template dirs
        for directory in self.dirs:
            try:
                text = (directory / name).read_text(encoding="utf-8")  # Jinja2's default
            except (FileNotFoundError, NotADirectoryError):
                continue
            except (OSError, UnicodeDecodeError):
                raise _Outside from None
            return text
        raise _Outside

    def _nodes(self, nodes: list[Any], scope: dict[str, Any], out: list[str]) -> None:
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "out":
                value = _value(node[1], scope)
                for name in node[2]:
                    if name not in self.filters:
                        raise _Outside  # one of Jinja2's own filters
                    value = self.filters[name](value)
                out.append(str(value))
            elif kind == "if":
                for condition, body in node[1]:
                    if condition is None or _truth(condition, scope):
                        self._nodes(body, scope, out)
                        break
            elif kind == "for":
                self._loop(node, scope, out)
            else:  # include
                self.run(node[1], scope, out)

    def _loop(self, node: tuple[Any, ...], scope: dict[str, Any], out: list[str]) -> None:
        _, target, source, body, otherwise = node
        try:
            items = list(_value(source, scope))
        except TypeError:
            raise _Outside from None  # not iterable: Jinja2 says so
        for index, item in enumerate(items):
            loop = {"index": index + 1, "index0": index, "first": index == 0,
                    "last": index == len(items) - 1, "length": len(items)}
            self._nodes(body, {**scope, target: item, "loop": loop}, out)
        if not items:
            self._nodes(otherwise, scope, out)


# --------------------------------------------------------------------------- parsing

def _parse(source: str) -> list[Any]:
    """The template as nodes: ("text", s), ("out", path, filters), ("if", [(cond, body)...]),
    ("for", target, path, body, else_body), ("include", name)."""
    root: list[Any] = []
    # Open blocks: (tag, nodes being filled, the block's node).
    stack: list[tuple[str, list[Any], Any]] = []
    current = root
    position = 0
    line_start = True  # the text ahead starts a line (Jinja2's lstrip_blocks rule)
    for match in _TAG.finditer(source):
        text = _text(source[position:match.start()], before_tag=True)
        variable, block, comment = match.groups()
        if block is not None or comment is not None:
            inner = block if block is not None else comment
            if inner[:1] in "-+" or inner[-1:] in "-+":
                raise _Outside  # whitespace control
            # lstrip_blocks: the spaces and tabs from a line's start to the tag go.
            head = text.rfind("\n") + 1
            if (head > 0 or line_start) and not text[head:].strip(" \t"):
                text = text[:head]
        if text:
            current.append(("text", text))
        position = match.end()
        if block is not None or comment is not None:
            # trim_blocks: the newline right after a block or comment tag goes.
            if source.startswith("\n", position):
                position += 1
                line_start = True
            else:
                line_start = False
        else:
            line_start = False
        if variable is not None:
            words = _words(variable)
            path, rest = _path(words)
            filters = []
            while rest:
                if rest[0] != "|" or len(rest) < 2 or not _is_name(rest[1]):
                    raise _Outside
                filters.append(rest[1])
                rest = rest[2:]
            current.append(("out", path, tuple(filters)))
            continue
        if comment is not None:
            continue
        words = _words(block)
        if not words:
            raise _Outside
        tag, args = words[0], words[1:]
        if tag == "if":
            node = ("if", [(_condition(args), [])])
            current.append(node)
            stack.append(("if", current, node))
            current = node[1][0][1]
        elif tag in ("elif", "else") and stack and stack[-1][0] == "if":
            branches = stack[-1][2][1]
            if branches[-1][0] is None or (tag == "else" and args):
                raise _Outside
            branches.append((_condition(args) if tag == "elif" else None, []))
            current = branches[-1][1]
        elif (tag == "else" and stack and stack[-1][0] == "for" and not args
              and current is not stack[-1][2][4]):
            current = stack[-1][2][4]
        elif tag == "for":
            if len(args) < 3 or not _is_name(args[0]) or args[1] != "in":
                raise _Outside
            path, rest = _path(args[2:])
            if rest:
                raise _Outside
            node = ("for", args[0], path, [], [])
            current.append(node)
            stack.append(("for", current, node))
            current = node[3]
        elif tag in ("endif", "endfor") and not args and stack and stack[-1][0] == tag[3:]:
            current = stack.pop()[1]
        elif tag == "include" and len(args) == 1 and args[0][:1] in "\"'":
            current.append(("include", args[0][1:-1]))
        else:
            raise _Outside
    if stack:
        raise _Outside  # an unclosed block: Jinja2 says where
    if source[position:]:
        current.append(("text", _text(source[position:])))
    return root


def _text(text: str, *, before_tag: bool = False) -> str:
    """Text between tags; a tag opened there and never closed is Jinja2's syntax error, and so
    is a "{" right before a tag (``before_tag``): Jinja2 opens the tag one character earlier
    (``{{%``, ``{{#``)."""
    if "{{" in text or "{%" in text or "{#" in text or (before_tag and text.endswith("{")):
        raise _Outside
    return text


def _words(text: str) -> list[str]:
    words, position = [], 0
    while position < len(text.rstrip()):
        match = _WORD.match(text, position)
        if match is None:
            raise _Outside
        words.append(match.group(match.lastindex or 0))
        position = match.end()
    return words


def _is_name(word: str) -> bool:
    return word[:1].isalpha() or word[:1] == "_"


def _path(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """A dotted name at the start of ``words``, and the words after it."""
    if not words or not _is_name(words[0]) or words[0] in _KEYWORDS:
        raise _Outside
    path = [words[0]]
    rest = words[1:]
    while len(rest) >= 2 and rest[0] == "." and _is_name(rest[1]):
        path.append(rest[1])
        rest = rest[2:]
    return tuple(path), rest


def _condition(words: list[str]) -> Any:
    """``a or b``, ``a and b``, ``not a``, ``x == "v"``, ``x is [not] defined``, ``x``."""
    condition, rest = _or(words)
    if rest:
        raise _Outside
    return condition


def _or(words: list[str]) -> tuple[Any, list[str]]:
    left, rest = _and(words)
    while rest[:1] == ["or"]:
        right, rest = _and(rest[1:])
        left = ("or", left, right)
    return left, rest


def _and(words: list[str]) -> tuple[Any, list[str]]:
    left, rest = _not(words)
    while rest[:1] == ["and"]:
        right, rest = _not(rest[1:])
        left = ("and", left, right)
    return left, rest


def _not(words: list[str]) -> tuple[Any, list[str]]:
    if words[:1] == ["not"]:
        operand, rest = _not(words[1:])
        return ("not", operand), rest
    path, rest = _path(words)
    if rest[:1] in (["=="], ["!="]):
        if len(rest) < 2 or rest[1][:1] not in "\"'":
            raise _Outside
        return (rest[0], path, rest[1][1:-1]), rest[2:]
    if rest[:2] == ["is", "defined"]:
        return ("defined", path), rest[2:]
    if rest[:3] == ["is", "not", "defined"]:
        return ("not", ("defined", path)), rest[3:]
    return ("value", path), rest


# --------------------------------------------------------------------------- values

def _value(path: tuple[str, ...], scope: Mapping[str, Any]) -> Any:
    if path[0] not in scope:
        raise _Outside  # StrictUndefined: Jinja2 raises, and says where
    value = scope[path[0]]
    for attr in path[1:]:
        value = _attribute(value, attr)
    return value


def _attribute(value: Any, attr: str) -> Any:
    # Jinja2's lookup: the attribute, else the item.
    try:
        return getattr(value, attr)
    except AttributeError:
        pass
    try:
        return value[attr]
    except (TypeError, LookupError, AttributeError):
        raise _Outside from None


def _defined(path: tuple[str, ...], scope: Mapping[str, Any]) -> bool:
    if len(path) == 1:
        return path[0] in scope
    # Only the last step may be missing: Jinja2 raises for an attribute of an undefined name.
    value = _value(path[:-1], scope)
    try:
        _attribute(value, path[-1])
    except _Outside:
        return False
    return True


def _truth(condition: Any, scope: Mapping[str, Any]) -> bool:
    op = condition[0]
    if op == "value":
        return bool(_value(condition[1], scope))
    if op == "defined":
        return _defined(condition[1], scope)
    if op == "not":
        return not _truth(condition[1], scope)
    if op == "and":
        return _truth(condition[1], scope) and _truth(condition[2], scope)
    if op == "or":
        return _truth(condition[1], scope) or _truth(condition[2], scope)
    equal = _value(condition[1], scope) == condition[2]
    return equal if op == "==" else not equal
