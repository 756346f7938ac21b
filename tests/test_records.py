"""hpcenv.records: one way records become JSON and back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hpcenv.records import Codec, JsonRecord, json_meta


@dataclass(frozen=True)
class Inner(JsonRecord):
    path: Path
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer(JsonRecord):
    name: str = field(default="", metadata=json_meta(key="title"))
    inner: Inner | None = None
    items: tuple[Inner, ...] = ()
    secret: str = field(default="x", metadata=json_meta(omit=True))
    scaled: int = field(default=0, metadata=json_meta(codec=Codec(encode=lambda v: v * 10,
                                                                 decode=lambda v: v // 10)))
    extra: list[int] = field(default_factory=list)

    JSON_PROPERTIES = ("count",)

    @property
    def count(self) -> int:
        return len(self.items)


def test_round_trip_through_json_text() -> None:
    record = Outer(name="a", inner=Inner(Path("/p"), ("t",)), items=(Inner(Path("/q")),),
                   secret="s", scaled=3, extra=[1, 2])
    data = json.loads(json.dumps(record.to_dict()))
    assert data == {"title": "a", "inner": {"path": "/p", "tags": ["t"]},
                    "items": [{"path": "/q", "tags": []}], "scaled": 30, "extra": [1, 2],
                    "count": 1}
    back = Outer.from_dict(data)
    assert back == Outer(name="a", inner=Inner(Path("/p"), ("t",)), items=(Inner(Path("/q")),),
                         scaled=3, extra=[1, 2])
    assert isinstance(back.inner, Inner) and isinstance(back.inner.path, Path)


def test_unknown_keys_are_ignored_and_missing_ones_take_defaults() -> None:
    assert Outer.from_dict({"title": "b", "from_a_newer_writer": 1}) == Outer(name="b")
