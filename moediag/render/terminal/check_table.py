"""The terminal view of a :class:`~moediag.checks.CheckReport`: a verdict line, then one row per rule with
the measured value and the threshold exactly as they were compared (rich: only the terminal renderers
import it)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from moediag.checks import CheckReport
from moediag.render.check_cells import outcome_cells

_STYLE = {"pass": "green", "fail": "bold red", "skip": "yellow"}
#: terminals at least this wide show the detail column; narrower ones list the details after the table
WIDE = 110


def render_check_table(report: CheckReport, console: Console) -> None:
    verdict = report.verdict()
    console.print(
        Text(f"moediag check {report.path or ''}: {verdict}".replace("  ", " "), style=_STYLE[report.status])
    )
    # on a narrow terminal (80 columns, CI logs) a detail column would wrap a few characters a line:
    # the details then follow the table, one line each
    inline = console.width >= WIDE
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    table.add_column("rule", no_wrap=True)
    table.add_column("scope", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("threshold", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    if inline:
        table.add_column("detail", overflow="fold")
    order = {"fail": 0, "skip": 1, "pass": 2}
    details = []
    for outcome in sorted(report.outcomes, key=lambda o: order[o.status]):
        scope, value, threshold, word, detail = outcome_cells(outcome)
        cells: list[str | Text] = [
            outcome.name,
            scope,
            value,
            threshold,
            Text(word, style=_STYLE[outcome.status]),
        ]
        table.add_row(*cells, *([detail] if inline else []))
        if detail and not inline:
            details.append(Text(f"  {outcome.name}: {detail}", style=_STYLE[outcome.status]))
    if report.outcomes:
        console.print(table)
    for line in details:
        console.print(line)
    notes = []
    if report.disabled:
        notes.append(f"off: {', '.join(report.disabled)}")
    if report.not_applicable:
        notes.append(f"not applicable to a {report.kind}: {', '.join(report.not_applicable)}")
    if report.config.file:
        notes.append(f"config: {report.config.file}")
    for note in notes:
        console.print(Text(note, style="dim"))


def check_table_text(report: CheckReport, width: int = 100) -> str:
    """The table as plain text (for ``--output`` files)."""
    import io

    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, no_color=True, highlight=False, soft_wrap=False, force_terminal=False
    )
    render_check_table(report, console)
    return buffer.getvalue()
