"""``moediag compare A B``: two traces (or two checkpoints) side by side."""

from __future__ import annotations

from pathlib import Path

import typer

from moediag.cli.app import app, echo_err
from moediag.cli.common import SCHEDULER_HELP, WORKERS_HELP, print_json, stdout_console
from moediag.errors import UsageError


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
    seq_len: int | None = typer.Option(
        None,
        "--seq-len",
        metavar="N",
        help="Checkpoints: the sequence length FLOPs a token are counted at (default 2048; docs/compare.md).",
    ),
    trace: list[Path] | None = typer.Option(
        None,
        "--trace",
        metavar="TRACE",
        help="Checkpoints: give twice, A's then B's trace on the same evaluation tokens (tokens.loss, "
        "tokens.correct, tokens.domain), for quality per compute.",
    ),
) -> None:
    """Router saturation, load shift and accuracy shift between two traces; between two checkpoints
    (dense or MoE, either order): parameters, FLOPs a token, weight bytes, the fair framing, quality per
    compute with --trace, and the router-row cosine when they share routers.

    Example: moediag compare llama-1b/ mixtral-tiny/ --trace llama.safetensors --trace mixtral.safetensors
    """
    from moediag.compare import compare
    from moediag.compare_models import ModelComparison

    if chunk_tokens is not None and chunk_tokens < 1:
        raise UsageError("--chunk-tokens must be positive")
    if html is not None and html.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--html {html}: the page is HTML; name it something.html")
    if seq_len is not None and seq_len < 1:
        raise UsageError("--seq-len must be positive")
    if trace is not None and len(trace) != 2:
        raise UsageError(f"--trace is given twice (A's trace, then B's); got {len(trace)}")
    eval_traces = (trace[0], trace[1]) if trace else None
    result = compare(
        a,
        b,
        chunk_tokens=chunk_tokens,
        workers=workers,
        scheduler=scheduler,
        seq_len=seq_len,
        eval_traces=eval_traces,
    )
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
        from moediag.render.model_compare_table import render_model_compare

        render_model_compare(result.to_dict(), stdout_console())
        return
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
    if result.extra.get("models"):
        from moediag.render.model_compare_table import render_model_compare

        render_model_compare(result.extra, stdout_console())
