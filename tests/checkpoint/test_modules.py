"""The checkpoint package keeps the layout rule of shared/design/style.md: modules of at most about 400
lines, and no import cycles between them (counting imports at module level, where a cycle would bite)."""

from __future__ import annotations

import ast
from pathlib import Path

import moediag.checkpoint

PKG = Path(moediag.checkpoint.__file__).parent
MAX_LINES = 430  # "about 400"


def _imports(path: Path) -> set[str]:
    """The moediag.checkpoint modules ``path`` imports at module level (not under TYPE_CHECKING)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moediag.checkpoint."):
            out.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.rsplit(".", 1)[1] for a in node.names if a.name.startswith("moediag.checkpoint.")}
    return out


def test_modules_are_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PKG.glob("*.py")}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_no_import_cycles() -> None:
    graph = {p.stem: _imports(p) for p in PKG.glob("*.py") if p.stem != "__init__"}
    assert graph["layouts"] and graph["analysis"]  # the parser sees imports at all
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 2:
            return
        assert state.get(m) != 1, f"import cycle: {' -> '.join([*path, m])}"
        state[m] = 1
        for dep in sorted(graph.get(m, ())):
            visit(dep, [*path, m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
