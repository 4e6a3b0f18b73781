"""The package layout stays readable (shared/design/style.md, docs/architecture.md): modules of about 400
lines at most, no import cycles between modules, and no loose modules at the top level beside the few the
design names. The source is read with the helpers of tests/_layout.py (tests/render/test_layout.py holds
render/'s own rules)."""

from __future__ import annotations

from pathlib import Path

from tests._layout import PACKAGE_ROOT, all_imports, cycles, import_graph, line_counts, modules

#: "about 400 lines": a little over is tolerated, a module that holds two concerns is not
MAX_LINES = 450
#: the only plain modules at the top level (everything else lives in a package named for its concern)
TOP_LEVEL = {"__init__.py", "__main__.py", "errors.py", "options.py"}


def import_time_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """module -> the modules it imports when it is imported (not lazily inside a function, not under
    ``TYPE_CHECKING``): the edges that make a cycle fail or half-initialise a module."""
    found = modules(root)
    graph: dict[str, set[str]] = {name: set() for name in found}
    for imp in all_imports(root):
        if imp.at_import and imp.target in found and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    return graph


def test_no_module_is_too_long() -> None:
    long = {name: n for name, n in line_counts().items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concern): {long}"


def test_top_level_holds_only_packages_and_the_named_modules() -> None:
    loose = sorted(p.name for p in PACKAGE_ROOT.glob("*.py") if p.name not in TOP_LEVEL)
    assert not loose, f"loose top-level modules (move them into the package of their concern): {loose}"


def test_no_import_cycles() -> None:
    found = cycles(import_time_graph())
    assert not found, "import cycles at import time:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_import_cycles_even_through_lazy_imports() -> None:
    """A lazy import (inside a function) keeps ``import moediag`` cheap, but two modules that need each
    other are one concern split in two: move what both need below them."""
    found = cycles(import_graph())
    assert not found, "import cycles (lazy imports counted):\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_import_time_graph_leaves_out_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("from pkg.a import x\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\ndef f():\n    import pkg.b\n"
    )
    graph = import_time_graph(pkg)
    assert graph["pkg.c"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
