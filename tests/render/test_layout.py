"""The layout rules of moediag/render/ (shared/design/style.md), read from the source.

- rich is imported only by the terminal renderers (render/terminal/) and the CLI;
- matplotlib only under render/plots/, and there only inside functions (lazily), so that importing any
  moediag.render module imports no matplotlib (checked in a fresh interpreter too);
- no module in render/ is longer than MAX_LINES, and render/ has no import cycle (lazy imports count:
  a cycle that only works because one side imports late is still a cycle).

The helpers in tests/_layout.py take any folder of the package, so these rules extend to all of it.
"""

from __future__ import annotations

import subprocess
import sys

from tests._layout import PACKAGE_ROOT, all_imports, cycles, import_graph, line_counts, modules, top_package

RENDER = PACKAGE_ROOT / "render"
#: the style guide says "about 400"; this is the hard stop
MAX_LINES = 450
#: where each optional heavy dependency may be imported (module name prefixes)
RICH_HOMES = ("moediag.render.terminal", "moediag.cli")
PLOT_HOMES = ("moediag.render.plots",)
PLOT_PACKAGES = {"matplotlib", "cycler"}


def _under(module: str, homes: tuple[str, ...]) -> bool:
    return any(module == h or module.startswith(h + ".") for h in homes)


def test_rich_is_imported_only_by_terminal_renderers_and_the_cli() -> None:
    offenders = [
        f"{i.module}:{i.line} imports {i.target}"
        for i in all_imports()
        if top_package(i.target) == "rich" and not _under(i.module, RICH_HOMES)
    ]
    assert not offenders, offenders


def test_matplotlib_is_imported_only_under_render_plots_and_only_lazily() -> None:
    plot_imports = [i for i in all_imports() if top_package(i.target) in PLOT_PACKAGES and i.runtime]
    outside = [
        f"{i.module}:{i.line} imports {i.target}" for i in plot_imports if not _under(i.module, PLOT_HOMES)
    ]
    assert not outside, outside
    eager = [f"{i.module}:{i.line} imports {i.target} at import time" for i in plot_imports if i.at_import]
    assert not eager, eager


def test_importing_any_render_module_imports_no_matplotlib() -> None:
    names = sorted(modules(RENDER))
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'cycler'))\n"
        "assert not bad, bad[:5]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_html_plots_and_check_formats_import_no_rich() -> None:
    """Only the terminal renderers need rich: a report or a JUnit file can be written without it."""
    names = sorted(n for n in modules(RENDER) if not _under(n, ("moediag.render.terminal",)))
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "assert 'rich' not in sys.modules, [m for m in sys.modules if m.startswith('moediag')]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_no_render_module_is_too_long() -> None:
    long = {name: n for name, n in line_counts(RENDER).items() if n > MAX_LINES}
    assert not long, f"split these (over {MAX_LINES} lines): {long}"


def test_render_has_no_import_cycles() -> None:
    graph = import_graph(RENDER)
    assert graph["moediag.render.html.report"], "the graph has no edges: imports were not resolved"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles() -> None:
    """The helpers themselves: a cycle through lazy imports is found; a chain is not a cycle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
