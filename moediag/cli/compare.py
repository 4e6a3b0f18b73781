"""``moediag compare A B``: two traces (or two checkpoints) side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moediag.cli.app import app, echo_err, finish
from moediag.cli.common import human_size, print_json, progress_bar, stdout_console
from moediag.cli.options import OUTPUT, ChunkTokens, ConfigFile, Scheduler, Workers, json_option
from moediag.errors import ExitCode, UsageError


@app.command("compare")
def compare_cmd(
    a: Path = typer.Argument(..., metavar="A", help="The reference: a trace or a checkpoint."),
    b: Path = typer.Argument(..., metavar="B", help="The one to compare with A (same kind as A)."),
    as_json: Annotated[bool, json_option("docs/accuracy.md")] = False,
    html: Path | None = typer.Option(
        None,
        "--html",
        metavar="FILE",
        help="Also write a self-contained HTML page with the comparison.",
        rich_help_panel=OUTPUT,
    ),
    fail_on_regression: bool = typer.Option(
        False,
        "--fail-on-regression",
        help="Exit 1 when B is worse than A (the verdict line; thresholds from the check rules).",
    ),
    config: ConfigFile = None,
    chunk_tokens: ChunkTokens = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
) -> None:
    """Router saturation, load shift and accuracy shift between two traces; router-row cosine and
    selection-bias change between two checkpoints.

    Example: moediag compare before.safetensors after.safetensors --json
    """
    from moediag.compare import compare
    from moediag.config import load_config

    if chunk_tokens is not None and chunk_tokens < 1:
        raise UsageError("--chunk-tokens must be positive")
    if html is not None and html.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--html {html}: the page is HTML; name it something.html")
    check_config = load_config(config)
    with progress_bar("comparing: tokens read", None) as advance:
        result = compare(
            a,
            b,
            chunk_tokens=chunk_tokens,
            workers=workers,
            scheduler=scheduler,
            config=check_config,
            progress=advance,
        )
    verdict = result.summary.get("verdict")
    if fail_on_regression and verdict is None:
        raise UsageError("--fail-on-regression compares traces (two checkpoints have no verdict)")
    for note in result.notes:
        echo_err(f"moediag: note: {note}")
    if html is not None:  # built in full before writing; the write is atomic (nothing left on failure)
        from moediag.render.compare_html import render_compare_report
        from moediag.render.html import write_report

        page = render_compare_report(result)
        write_report(html, page)
        echo_err(f"moediag: wrote {html} ({human_size(len(page.encode('utf-8')))})")
    if as_json:
        print_json(result.to_dict())
    else:
        from moediag.render.compare_table import render_compare

        render_compare(result, stdout_console())
    if fail_on_regression and verdict is not None and verdict["status"] == "worse":
        echo_err(f"moediag compare: {verdict['line']}")
        finish(ExitCode.CHECK_FAILED)
