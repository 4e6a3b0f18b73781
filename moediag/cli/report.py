"""``moediag report PATH... -o report.html``: one self-contained HTML report (trace, checkpoint, or both)."""

from __future__ import annotations

from pathlib import Path

import typer

from moediag.cli.app import app, echo_err
from moediag.cli.common import (
    PATH_WINDOW_HELP,
    SCHEDULER_HELP,
    WORKERS_HELP,
    explicit,
    parse_path_windows,
    progress_bar,
    require_positive,
)
from moediag.options import BY_NAME, default


@app.command("report")
def report_cmd(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(..., metavar="PATH", help="A trace, a checkpoint, or one of each."),
    output: Path = typer.Option(..., "--output", "-o", help="The HTML file to write."),
    title: str | None = typer.Option(None, "--title", help="Page title (default: from the input's name)."),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Check thresholds (moediag.toml or pyproject.toml); "
        "without it the one found from the working directory is used, if any.",
    ),
    num_experts: int | None = typer.Option(
        None, "--num-experts", help="Experts per layer, if the trace lacks it."
    ),
    top_k: int | None = typer.Option(None, "--top-k", help="Experts per token, if the trace lacks it."),
    score_function: str | None = typer.Option(
        None, "--score-function", help="softmax | sigmoid | topk_softmax, if the trace lacks it."
    ),
    cold_eps: float = typer.Option(
        default("cold_eps"), "--cold-eps", help="An expert is cold when its share < eps / E."
    ),
    capacity_group: int = typer.Option(
        default("capacity_group"), "--capacity-group", help=BY_NAME["capacity_group"].help
    ),
    weights: bool = typer.Option(
        True,
        "--weights/--no-weights",
        help="Checkpoints: read weights for router and redundancy diagnostics.",
    ),
    path_window: list[str] | None = typer.Option(
        None, "--path-window", metavar="FIRST:LAST", help=PATH_WINDOW_HELP
    ),
    workers: int | None = typer.Option(None, "--workers", "-w", metavar="N", help=WORKERS_HELP),
    scheduler: str | None = typer.Option(None, "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP),
) -> None:
    """Write one self-contained HTML report: verdict, overview, per-layer table and figures.

    The file has no external references (no network, no other files); open it in any browser.

    Example: moediag report sample_traces/imbalanced.safetensors -o report.html
    """
    from moediag.api import report
    from moediag.inputs import detect_kind

    require_positive(cold_eps=cold_eps, capacity_group=capacity_group)
    layers: list[int] = []
    traces = [p for p in paths if path_window and detect_kind(p) == "trace"]
    if traces:  # --path-window is checked against the trace's layers
        from moediag.trace import open_trace

        layers = sorted(open_trace(traces[0]).layers)
    written = report(
        paths,
        output,
        title=title,
        config=config,
        num_experts=num_experts,
        top_k=top_k,
        score_function=score_function,
        path_windows=parse_path_windows(path_window, layers),
        workers=workers,
        scheduler=scheduler,
        progress=progress_bar,
        warn=echo_err,
        **explicit(ctx, cold_eps=cold_eps, capacity_group=capacity_group, weights=weights),
    )
    size = written.stat().st_size
    echo_err(f"moediag: wrote {output} ({size / 1e6:.1f} MB)")
