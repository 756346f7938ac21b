"""The README's reference table of site settings, made from their declarations.

``python -m hpcenv.site.config`` prints it (a test keeps the README in step).  Apart from
:mod:`hpcenv.site.schema`: every command loads the site config, none prints this table.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, is_dataclass
from typing import Any

from hpcenv.site.schema import Kind, NamedSections, Section, settings_of


@dataclass(frozen=True)
class ReferenceRow:
    key: str
    shape: str
    default: str
    help: str


def reference_rows(cls: type, prefix: str = "") -> list[ReferenceRow]:
    """Every setting of ``cls`` (sections expanded), for the README's reference table."""
    rows: list[ReferenceRow] = []
    for name, spec in settings_of(cls).items():
        kind: Kind = spec.metadata["kind"]
        key = f"{prefix}{name}"
        if isinstance(kind, Section):
            rows.extend(reference_rows(kind.cls, f"{key}."))
            continue
        rows.append(ReferenceRow(key, kind.shape, _default_text(spec, kind), spec.metadata["help"]))
        if isinstance(kind, NamedSections):
            rows.extend(reference_rows(kind.cls, f"{key}[].") if kind.as_list
                        else reference_rows(kind.cls, f"{key}.NAME."))
    return rows


def _default_text(spec: Field[Any], kind: Kind) -> str:
    yaml_default = spec.metadata["yaml_default"]
    if yaml_default is not MISSING:
        value = yaml_default
    elif spec.default is not MISSING:
        value = kind.dump(spec.default)
    elif spec.default_factory is not MISSING:
        value = kind.dump(spec.default_factory())  # type: ignore[operator]
    else:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}" if not value else str(value)
    if is_dataclass(value):
        return "(section)"
    return f"{value}"


def reference_table(cls: type) -> str:
    """The reference table as Markdown (generated into the README between markers)."""
    lines = ["| key | value | default | meaning |", "|---|---|---|---|"]
    for row in reference_rows(cls):
        cells = [f"`{row.key}`", row.shape, f"`{row.default}`", row.help]
        lines.append("| " + " | ".join(c.replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)
