"""The examples in moediag's docstrings run (shared/design/style.md: docs that can't drift).

A docstring whose first example is marked ``# doctest: +SKIP`` is an illustration (it needs a model, a
checkpoint or a serving dump); every other docstring's examples run here, from the repository root so
the sample traces are found, and must print what they show.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "moediag"


def module_names() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] != "__main__":  # importing it runs the CLI
            out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def runnable(test: doctest.DocTest) -> bool:
    return bool(test.examples) and not test.examples[0].options.get(doctest.SKIP, False)


def test_docstring_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failed: dict[str, int] = {}
    for name in module_names():
        try:
            module = importlib.import_module(name)
        except ImportError:  # an optional integration whose framework is not installed
            continue
        for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
            if runnable(test):
                result = runner.run(test)
                if result.failed:
                    failed[test.name] = result.failed
    total = runner.summarize(verbose=False)
    assert not failed, f"docstring examples failed (output above): {failed}"
    assert total.attempted >= 15, "the examples were not found"


def test_an_illustration_is_told_from_an_example() -> None:
    parser = doctest.DocTestParser()
    shown = parser.get_doctest(">>> f(x)  # doctest: +SKIP\n>>> g(y)\n", {}, "t", None, 0)
    real = parser.get_doctest(">>> 1 + 1\n2\n", {}, "t", None, 0)
    assert not runnable(shown) and runnable(real)
