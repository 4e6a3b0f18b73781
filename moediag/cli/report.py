"""``moediag report PATH... -o report.html``: one self-contained HTML report (trace, checkpoint, or both)."""

from __future__ import annotations

from pathlib import Path

import typer

from moediag.cli.app import app, echo_err
from moediag.cli.common import explicit, parse_path_windows, progress_bar, require_positive
from moediag.cli.options import (
    OUTPUT,
    CapacityGroup,
    ColdEps,
    ConfigFile,
    Force,
    MinCapacity,
    NumExperts,
    PathWindow,
    Scheduler,
    ScoreFunction,
    TopK,
    Weights,
    Workers,
)
from moediag.errors import UsageError
from moediag.options import default
from moediag.render.words import human_size


@app.command("report")
def report_cmd(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(..., metavar="PATH", help="A trace, a checkpoint, or one of each."),
    output: Path = typer.Option(
        ..., "--output", "-o", metavar="FILE.html", help="The HTML file to write.", rich_help_panel=OUTPUT
    ),
    title: str | None = typer.Option(
        None,
        "--title",
        metavar="TEXT",
        help="Page title (default: from the input's name).",
        rich_help_panel=OUTPUT,
    ),
    config: ConfigFile = None,
    num_experts: NumExperts = None,
    top_k: TopK = None,
    score_function: ScoreFunction = None,
    cold_eps: ColdEps = default("cold_eps"),
    min_capacity: MinCapacity = default("min_capacity"),
    capacity_group: CapacityGroup = default("capacity_group"),
    path_window: PathWindow = None,
    weights: Weights = True,
    workers: Workers = None,
    scheduler: Scheduler = None,
    force: Force = False,
    allow_empty: bool = typer.Option(
        False,
        "--allow-empty",
        help="With check thresholds: a verdict of pass when there is nothing to judge (no MoE layer, "
        "no routed token) instead of exit 2.",
    ),
) -> None:
    """Write one self-contained HTML report: verdict, overview, per-layer table and figures.

    The file has no external references (no network, no other files); open it in any browser.

    Example: moediag report sample_traces/imbalanced.safetensors -o report.html
    """
    from moediag.api import report
    from moediag.io.inputs import detect_kind

    require_positive(cold_eps=cold_eps, capacity_group=capacity_group)
    if min_capacity < 0:
        raise UsageError("--min-capacity must be 0 or more")
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
        allow_empty=allow_empty,
        force=force,
        **explicit(
            ctx, cold_eps=cold_eps, capacity_group=capacity_group, min_capacity=min_capacity, weights=weights
        ),
    )
    echo_err(f"moediag: wrote {output} ({human_size(written.stat().st_size)})")
