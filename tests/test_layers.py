"""The package's layers, as ARCHITECTURE.md draws them: no import cycles, no upward imports, and no
top-level module outside a layer package but the entry points and shared utilities.

Read from the source (``ast``), so an import inside a function counts like one at the top, and
imports under ``if TYPE_CHECKING:`` count too: a type a module names is a dependency of it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hpcenv"

# Lowest first.  A module may import its own layer's modules and any layer below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("hpcenv", "hpcenv.errors", "hpcenv.resources", "hpcenv.fsutil", "hpcenv.yamlio",
     "hpcenv.text_table", "hpcenv.records"),
    ("hpcenv.spec", "hpcenv.scheduler", "hpcenv.engine"),
    ("hpcenv.site",),
    ("hpcenv.store",),
    ("hpcenv.build",),
    ("hpcenv.jobs",),
    ("hpcenv.admin", "hpcenv.remote", "hpcenv.demo"),
    ("hpcenv.cli", "hpcenv.__main__"),
]
SHARED_UTILITIES = {"errors", "resources", "fsutil", "yamlio", "text_table", "records",
                    "__init__", "__main__"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "hpcenv" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS and ARCHITECTURE.md"
    return best[0]


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[:len(base) - node.level + (1 if is_package else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                if not module.startswith("hpcenv"):
                    continue
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.add(sub if sub in modules else module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("hpcenv"))
        graph[name] = {t for t in targets if t != name and t in modules}
    return graph


def test_every_module_sits_in_a_layer_and_imports_only_downwards() -> None:
    upward = []
    for module, targets in sorted(_imports().items()):
        for target in sorted(targets):
            if _layer(target) > _layer(module):
                upward.append(f"{module} -> {target}")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = _imports()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_top_level_modules_are_entry_points_or_shared_utilities() -> None:
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in SHARED_UTILITIES)
    assert not loose, f"top-level modules outside a layer package: {loose}"
