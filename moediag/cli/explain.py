"""``moediag explain [FIGURE]``: what a figure means, where it comes from, its healthy range, and which
check rule or flag uses it (like ``ruff rule``), from the one table in :mod:`moediag.analysis.figures`."""

from __future__ import annotations

from typing import Annotated

import typer

from moediag.cli.app import app
from moediag.cli.common import print_json, stdout_console
from moediag.cli.options import json_option
from moediag.errors import UsageError


def _complete(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    from moediag.analysis.figures import FIGURES

    return [f.key for f in FIGURES if f.key.startswith(incomplete)]


@app.command("explain")
def explain_cmd(
    figure: str | None = typer.Argument(
        None,
        metavar="FIGURE",
        help="A figure's JSON key (max_vio), its name (MaxVio), its terminal column (conf), or the check "
        "rule that gates it (max_cv). Without it: every figure, one line each.",
        autocompletion=_complete,
    ),
    as_json: Annotated[bool, json_option("the fields of moediag/analysis/figures.py")] = False,
) -> None:
    """Explain a figure: definition, source, healthy range, and the check rule or flags that use it.

    Example: moediag explain MaxVio ; moediag explain conf ; moediag explain
    """
    from rich.table import Table
    from rich.text import Text

    from moediag.analysis.figures import FIGURES, lookup, rule_text, suggest

    if figure is None:
        if as_json:
            print_json({"meta": {"format": 1, "kind": "figures"}, "figures": [f.to_dict() for f in FIGURES]})
            return
        table = Table(box=None, show_header=True, pad_edge=False, title="Figures (moediag explain FIGURE)")
        table.add_column("figure", style="bold", no_wrap=True)
        table.add_column("column", no_wrap=True)
        table.add_column("name")
        table.add_column("check rule", no_wrap=True)
        for f in FIGURES:
            table.add_row(f.key, f.column or "", f.name, f.rule or "")
        stdout_console().print(table)
        return
    info = lookup(figure)
    if info is None:
        close = suggest(figure)
        hint = f"; did you mean {' or '.join(close)}?" if close else " (moediag explain lists them)"
        raise UsageError(f"no figure called {figure!r}{hint}")
    if as_json:
        print_json(info.to_dict())
        return
    console = stdout_console()
    console.print(Text(f"{info.name} ({info.key})", style="bold"))
    rows = [
        ("means", info.definition),
        ("from", info.source),
        ("healthy", info.healthy),
        ("column", f"'{info.column}' in the terminal tables" if info.column else None),
        ("check", rule_text(info)),
        ("flags", ", ".join(info.flags) if info.flags else None),
        ("docs", f"docs/metrics.md, {info.section}"),
    ]
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for label, value in rows:
        if value:
            table.add_row(label, value)
    console.print(table)
