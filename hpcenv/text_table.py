"""Plain-text tables and sizes: the CLI's human output, the lines the registry index keeps, and the
partition table of routing errors."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns left-aligned and two spaces apart, the header first; no trailing blanks, so a
    long last column (a verdict, a path) does not widen every line."""
    lines = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in lines)


def human_size(n: int) -> str:
    """A byte count as people read it: ``512 B``, ``976.6 KB``, ``65.8 MB`` (powers of 1024)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
