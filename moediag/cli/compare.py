"""``moediag compare A B``: two traces (or two checkpoints) side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from moediag.cli.app import app, echo_err
from moediag.cli.common import SCHEDULER_HELP, WORKERS_HELP, print_json, stdout_console
from moediag.errors import UsageError
from moediag.io.paths import FORCE_HELP, check_output


@app.command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., metavar="A", help="The reference: a trace or a checkpoint."),
    b: Path = typer.Argument(..., metavar="B", help="The one to compare with A (same kind as A)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the machine-readable result (docs/accuracy.md)."
    ),
    chunk_tokens: int | None = typer.Option(
        None, "--chunk-tokens", help="Tokens read per chunk (memory bound)."
    ),
    workers: int | None = typer.Option(None, "--workers", "-w", metavar="N", help=WORKERS_HELP),
    scheduler: str | None = typer.Option(None, "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP),
    html: Path | None = typer.Option(
        None, "--html", metavar="FILE", help="Also write a self-contained HTML page with the comparison."
    ),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Router saturation, load shift and accuracy shift between two traces; router-row cosine and
    selection-bias change between two checkpoints.

    Example: moediag compare before.safetensors after.safetensors --json
    """
    from moediag.compare import compare

    if chunk_tokens is not None and chunk_tokens < 1:
        raise UsageError("--chunk-tokens must be positive")
    if html is not None and html.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--html {html}: the page is HTML; name it something.html")
    if html is not None:
        check_output(html, [a, b], force=force, flag="--html")
    result = compare(a, b, chunk_tokens=chunk_tokens, workers=workers, scheduler=scheduler)
    for note in result.notes:
        echo_err(f"moediag: note: {note}")
    if html is not None:  # built in full before writing; the write is atomic (nothing left on failure)
        from moediag.render.compare_html import render_compare_report
        from moediag.render.html import write_report

        page = render_compare_report(result)
        write_report(html, page)
        echo_err(f"moediag: wrote {html} ({len(page.encode('utf-8')) / 1e6:.1f} MB)")
    if as_json:
        print_json(result.to_dict())
        return
    from moediag.render.compare_table import render_compare

    render_compare(result, stdout_console())
