"""Reading the package's layout from its source: modules, what each imports, cycles, and length.

Shared by the layout tests (tests/render/test_layout.py applies them to moediag/render/; the same helpers
apply to the whole package). Imports are read with ``ast``, nothing is imported: an import inside a
function (lazy) or under ``if TYPE_CHECKING:`` is recorded as such, so a rule can count it or not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "moediag"


@dataclass(frozen=True)
class Import:
    """One imported module: where (file, line), and whether it runs at import time."""

    module: str  # the importing module
    target: str  # the module imported (``from a import b`` gives ``a.b`` when ``a.b`` is a module)
    line: int
    lazy: bool  # inside a function: runs only when called
    type_checking: bool  # under ``if TYPE_CHECKING:``: never runs

    @property
    def runtime(self) -> bool:
        return not self.type_checking

    @property
    def at_import(self) -> bool:
        return not (self.lazy or self.type_checking)


def modules(root: Path = PACKAGE_ROOT) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` under ``root`` (a package folder), and for a
    compiled module its ``.pyi`` stub (what it offers; it imports nothing of the package)."""
    base = root.parent
    while (base / "__init__.py").exists():  # names start at the top package, whatever folder is given
        base = base.parent
    out = {}
    sources = sorted(root.rglob("*.py")) + [
        p for p in sorted(root.rglob("*.pyi")) if not p.with_suffix(".py").exists()
    ]
    for path in sources:
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, path: Path, known: Iterable[str] = ()) -> list[Import]:
    """Every import in ``path`` (the source of ``module``), relative ones resolved."""
    known = set(known)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[Import] = []

    def visit(node: ast.AST, lazy: bool, tc: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, tc)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit_stmt(stmt, lazy, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, lazy, tc)
            else:
                visit_stmt(child, lazy, tc)

    def visit_stmt(node: ast.AST, lazy: bool, tc: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Import(module, alias.name, node.lineno, lazy, tc))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.append(Import(module, sub if sub in known else source, node.lineno, lazy, tc))
        else:
            visit(node, lazy, tc)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), False, False)
    return out


def all_imports(root: Path = PACKAGE_ROOT) -> Iterator[Import]:
    found = modules(root)
    for name, path in found.items():
        yield from imports(name, path, found)


def import_graph(root: Path = PACKAGE_ROOT, *, runtime_only: bool = True) -> dict[str, set[str]]:
    """module -> the modules of the same tree it imports (lazy imports count; ``TYPE_CHECKING`` ones not,
    unless ``runtime_only`` is False)."""
    found = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in found}
    for imp in all_imports(root):
        if imp.target in found and imp.target != imp.module and (imp.runtime or not runtime_only):
            graph[imp.module].add(imp.target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def line_counts(root: Path = PACKAGE_ROOT) -> dict[str, int]:
    """module -> number of lines of its source."""
    return {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules(root).items()}


def top_package(target: str) -> str:
    return target.split(".", 1)[0]
