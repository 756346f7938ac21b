"""The README's Guarantees table names, for each property, the tests that prove it: every test
named there must exist, or the table promises what nothing checks."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _guarantee_rows() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Guarantees\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| **")]


def test_every_test_the_guarantees_table_names_exists() -> None:
    rows = _guarantee_rows()
    assert len(rows) >= 10
    named = 0
    for row in rows:
        current: str | None = None
        for ref in re.findall(r"`((?:tests/\S+?\.py)?::\w+)`", row):
            path, _, name = ref.partition("::")
            current = path or current
            assert current is not None, f"{ref!r} in {row[:60]!r} names no file"
            source = (REPO / current).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"{current}::{name} is gone"
            named += 1
        assert current is not None, f"no test for {row[:60]!r}"
    assert named >= 20
