"""One way records become JSON and back: registry records, submission records, lock holders,
``--json`` output.

A record is a dataclass deriving :class:`JsonRecord`.  Its fields are written under their names,
or as their metadata (:func:`json_meta`) says: another key, a codec (``encode``, ``decode``) for
a value's own spelling, or left out; a class's ``JSON_PROPERTIES`` adds computed values
(``finished``).  Reading back is typed by the fields'
annotations (tuples, paths, nested records), ignores keys it does not know (newer writers) and
leaves missing ones at their defaults (older writers).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

R = TypeVar("R", bound="JsonRecord")


@dataclasses.dataclass(frozen=True)
class Codec:
    """A value's own JSON spelling (e.g. a CUDA target as ``"12.4"`` or ``null``)."""

    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def json_meta(*, key: str | None = None, codec: Codec | None = None,
              omit: bool = False) -> dict[str, Any]:
    """Field metadata for :func:`to_json`: written as ``key``, through ``codec``, or left out
    (``field(metadata=json_meta(key="partition"))``)."""
    metadata: dict[str, Any] = {}
    if key is not None:
        metadata["json_key"] = key
    if codec is not None:
        metadata["json_codec"] = codec
    if omit:
        metadata["json"] = False
    return metadata


class JsonRecord:
    """Mixin for dataclass records: ``to_dict()`` and ``from_dict()`` by :func:`to_json` and
    :func:`from_json`."""

    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        data = to_json(self)
        assert isinstance(data, dict)
        return data

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        return from_json(cls, data)


@dataclasses.dataclass(frozen=True)
class _FieldPlan:
    """How one field of a record class is written and read: computed once per class, as
    reading a class's annotations costs far more than converting a record (a registry reads
    thousands)."""

    name: str
    key: str
    codec: Codec | None
    init: bool
    plain: bool          # no codec, and the value is its own JSON (str, int, bool, None)
    read: Callable[[Any], Any] | None   # JSON to value (no codec); None: the JSON is the value


@functools.cache
def _plan(cls: type) -> tuple[_FieldPlan, ...]:
    """The JSON fields of record class ``cls`` (those not ``omit``-ted), in field order."""
    hints = typing.get_type_hints(cls)
    return tuple(_FieldPlan(f.name, f.metadata.get("json_key", f.name),
                            f.metadata.get("json_codec"), f.init,
                            "json_codec" not in f.metadata and _is_plain(hints[f.name]),
                            _reader(hints[f.name]))
                 for f in dataclasses.fields(cls) if f.metadata.get("json", True) is not False)


_PLAIN = (str, int, float, bool, type(None))


def _is_plain(hint: Any) -> bool:
    """Whether values of type ``hint`` are their own JSON (so need no conversion either way)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return all(_is_plain(a) for a in typing.get_args(hint))
    return hint in _PLAIN or typing.get_origin(hint) is typing.Literal


def to_json(value: Any) -> Any:
    """``value`` as JSON-able data (see the module doc)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in _plan(type(value)):
            item = getattr(value, f.name)
            out[f.key] = (item if f.plain else f.codec.encode(item) if f.codec
                          else to_json(item))
        for name in getattr(value, "JSON_PROPERTIES", ()):
            out[name] = to_json(getattr(value, name))
        return out
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(cls: type[R], data: Mapping[str, Any]) -> R:
    """A ``cls`` record from JSON data written by :func:`to_json` (see the module doc)."""
    values: dict[str, Any] = {}
    for f in _plan(cls):
        if f.key not in data or not f.init:
            continue
        raw = data[f.key]
        values[f.name] = (f.codec.decode(raw) if f.codec else raw if f.read is None
                          else f.read(raw))
    return cls(**values)


def _reader(hint: Any) -> Callable[[Any], Any] | None:
    """How JSON becomes a value of the annotated type: tuples, paths and nested records (null
    stays None); None when the JSON is the value as it is."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _reader(options[0]) if len(options) == 1 else None
    if origin in (tuple, list):
        args = typing.get_args(hint)
        item = _reader(args[0]) if args else None
        make = tuple if origin is tuple else list
        if item is None:
            return lambda raw: None if raw is None else make(raw)
        return lambda raw: None if raw is None else make(
            None if v is None else item(v) for v in raw)
    if hint is Path:
        return lambda raw: None if raw is None else Path(raw)
    if isinstance(hint, type) and issubclass(hint, JsonRecord):
        return lambda raw: from_json(hint, raw) if isinstance(raw, Mapping) else raw
    return None
