"""``moediag compare A B``: two traces (or two checkpoints) side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moediag.cli.app import app, echo_err, finish
from moediag.cli.common import print_json, progress_bar, stdout_console
from moediag.cli.options import CHECKPOINT, OUTPUT, ChunkTokens, Force, Scheduler, Workers, json_option
from moediag.errors import ExitCode, UsageError
from moediag.io.outputs import check_output
from moediag.render.words import human_size

VERDICT = "Verdict (two traces)"


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
        rich_help_panel=VERDICT,
    ),
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            metavar="FILE",
            help="The check rules the verdict uses: a TOML file with a tool.moediag.check table "
            "(default: moediag.toml or pyproject.toml, from here upward).",
            rich_help_panel=VERDICT,
        ),
    ] = None,
    seq_len: int | None = typer.Option(
        None,
        "--seq-len",
        metavar="N",
        help="Checkpoints: the sequence length FLOPs a token are counted at (default 2048; docs/compare.md).",
        rich_help_panel=CHECKPOINT,
    ),
    trace: list[Path] | None = typer.Option(
        None,
        "--trace",
        metavar="TRACE",
        help="Checkpoints: give twice, A's then B's trace on the same evaluation tokens (tokens.loss, "
        "tokens.correct, tokens.domain), for quality per compute.",
        rich_help_panel=CHECKPOINT,
    ),
    chunk_tokens: ChunkTokens = None,
    workers: Workers = None,
    scheduler: Scheduler = None,
    force: Force = False,
) -> None:
    """Two traces: a verdict first (B better, worse or unchanged, by the check rules), then router
    saturation, load shift and accuracy shift. Two checkpoints
    (dense or MoE, either order): parameters, FLOPs a token, weight bytes, the fair framing, quality per
    compute with --trace, and the router-row cosine when they share routers.

    Example: moediag compare llama-1b/ mixtral-tiny/ --trace llama.safetensors --trace mixtral.safetensors
    """
    from moediag.checks.config import load_config
    from moediag.compare import compare
    from moediag.compare.models import ModelComparison

    if chunk_tokens is not None and chunk_tokens < 1:
        raise UsageError("--chunk-tokens must be positive")
    if html is not None and html.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--html {html}: the page is HTML; name it something.html")
    if seq_len is not None and seq_len < 1:
        raise UsageError("--seq-len must be positive")
    if trace is not None and len(trace) != 2:
        raise UsageError(f"--trace is given twice (A's trace, then B's); got {len(trace)}")
    eval_traces = (trace[0], trace[1]) if trace else None
    if html is not None:
        check_output(html, [a, b, *(trace or [])], force=force, flag="--html")
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
            seq_len=seq_len,
            eval_traces=eval_traces,
        )
    verdict = None if isinstance(result, ModelComparison) else result.summary.get("verdict")
    if fail_on_regression and verdict is None:
        raise UsageError("--fail-on-regression compares traces (two checkpoints have no verdict)")
    for note in result.notes:
        echo_err(f"moediag: note: {note}")
    framed = result.framing if isinstance(result, ModelComparison) else result.extra.get("framing")
    if framed and framed["warning"]:
        echo_err(f"moediag: warning: {framed['warning']}")
    if isinstance(result, ModelComparison):
        if html is not None:
            raise UsageError(
                "--html: the page covers trace and router comparisons, not a dense-vs-sparse one"
            )
        if as_json:
            print_json(result.to_dict())
            return
        from moediag.render.terminal.model_compare_table import render_model_compare

        render_model_compare(result.to_dict(), stdout_console())
        return
    if html is not None:  # built in full before writing; the write is atomic (nothing left on failure)
        from moediag.render.html.compare import render_compare_report
        from moediag.render.html.report import write_report

        page = render_compare_report(result)
        write_report(html, page)
        echo_err(f"moediag: wrote {html} ({human_size(len(page.encode('utf-8')))})")
    if as_json:
        print_json(result.to_dict())
    else:
        from moediag.render.terminal.compare_table import render_compare

        render_compare(result, stdout_console())
        if result.extra.get("models"):
            from moediag.render.terminal.model_compare_table import render_model_compare

            render_model_compare(result.extra, stdout_console())
    if fail_on_regression and verdict is not None and verdict["status"] == "worse":
        echo_err(f"moediag compare: {verdict['line']}")
        finish(ExitCode.CHECK_FAILED)
