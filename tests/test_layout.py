"""The package layout stays readable (shared/design/style.md): modules of about 400 lines at most, no import
cycles between modules, and no loose modules at the top level beside the few the design names."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "moediag"
#: "about 400 lines": a little over is tolerated, a module that holds two concerns is not
MAX_LINES = 450
#: the only plain modules at the top level (everything else lives in a package named for its concern)
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py", "options.py"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_time_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The moediag modules ``name`` imports when it is imported: module-level statements (also inside a
    module-level ``try``/``if``, except ``if TYPE_CHECKING``), not the lazy imports inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if not _is_type_checking(node):
                    visit(node.body)
                    visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for h in node.handlers:
                    visit(h.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                found.add(module)
                found.update(f"{module}.{a.name}" for a in node.names)  # `from pkg import submodule`

    visit(tree.body)
    out = set()
    for m in found:
        # importing a.b.c runs a, a.b and a.b.c
        parts = m.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in out if m in known and m != name}


def test_no_module_is_too_long() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_top_level_holds_only_packages_and_the_named_modules() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in TOP_LEVEL)
    assert not loose, f"loose top-level modules (move them into the package of their concern): {loose}"


def test_no_import_cycles() -> None:
    mods = modules()
    known = set(mods)
    graph = {name: import_time_imports(path, name, known) for name, path in mods.items()}
    # a package's __init__ importing its own submodules is the package, not a cycle: drop the edges from a
    # submodule up to the packages that contain it
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                dfs(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The finder itself: two modules importing each other at import time are a cycle; a lazy import
    inside a function and an ``if TYPE_CHECKING`` import are not."""
    a = tmp_path / "a.py"
    a.write_text("from pkg import b\n")
    c = tmp_path / "c.py"
    c.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\ndef f():\n    import pkg.b\n"
    )
    known = {"pkg.a", "pkg.b", "pkg.c"}
    assert import_time_imports(a, "pkg.a", known) == {"pkg.b"}
    assert import_time_imports(c, "pkg.c", known) == set()
