"""``moediag inspect PATH``: tables (or JSON) for a trace or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from moediag.cli.app import app, echo_err, finish
from moediag.cli.common import (
    PATH_WINDOW_HELP,
    SCHEDULER_HELP,
    WORKERS_HELP,
    explicit,
    given_options,
    parse_path_windows,
    print_json,
    progress_bar,
    require_positive,
    stdout_console,
)
from moediag.errors import UsageError
from moediag.options import BY_NAME, default

if TYPE_CHECKING:
    from moediag.trace import RoutingSpec

SORT_KEYS = ("max_vio", "cv", "gini", "aux_loss", "z_loss", "max_mean")


def routing_overrides(
    num_experts: int | None, top_k: int | None, score_function: str | None
) -> RoutingSpec | None:
    """Kept for callers of the CLI module: :func:`moediag.api.routing_overrides`."""
    from moediag.api import routing_overrides as overrides

    return overrides(num_experts, top_k, score_function)


@app.command("inspect")
def inspect_cmd(
    ctx: typer.Context,
    path: Path = typer.Argument(
        ..., metavar="PATH", help="A trace (.safetensors or folder of shards) or a checkpoint."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the machine-readable result (docs/json.md)."),
    detail: bool = typer.Option(
        False,
        "--detail",
        help="With --json: add co-activation, per-step load, margin histogram and drop rate by position.",
    ),
    layer: int | None = typer.Option(None, "--layer", "-l", help="Show the load histogram of this layer."),
    worst: int | None = typer.Option(None, "--worst", help="Show only the N worst layers, worst first."),
    sort: str = typer.Option(
        "max_vio", "--sort", help=f"Figure that ranks layers for --worst: {', '.join(SORT_KEYS)}."
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
    chunk_tokens: int | None = typer.Option(
        None, "--chunk-tokens", help="Tokens read per chunk (memory bound)."
    ),
    weights: bool = typer.Option(
        True,
        "--weights/--no-weights",
        help="Checkpoints: read weights for router and redundancy diagnostics.",
    ),
    redundancy_threshold: float = typer.Option(
        default("redundancy_threshold"), "--redundancy-threshold", help=BY_NAME["redundancy_threshold"].help
    ),
    path_window: list[str] | None = typer.Option(
        None, "--path-window", metavar="FIRST:LAST", help=PATH_WINDOW_HELP
    ),
    workers: int | None = typer.Option(None, "--workers", "-w", metavar="N", help=WORKERS_HELP),
    scheduler: str | None = typer.Option(None, "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP),
) -> None:
    """Print what a trace or checkpoint says about routing: a verdict, an overview, one row per layer.

    Example: moediag inspect sample_traces/collapsed.safetensors --worst 3 --layer 2
    """
    from moediag.inputs import detect_kind

    if sort not in SORT_KEYS:
        raise UsageError(f"--sort must be one of {', '.join(SORT_KEYS)}")
    require_positive(cold_eps=cold_eps, capacity_group=capacity_group, chunk_tokens=chunk_tokens, worst=worst)
    kind = detect_kind(path)
    # options of the other kind of input: derived from what was set, so defaults live in one place
    trace_only = ("worst", "sort", "detail", "num_experts", "top_k", "score_function", "cold_eps",
                  "capacity_group", "chunk_tokens", "workers", "scheduler", "path_window")  # fmt: skip
    checkpoint_only = ("weights", "redundancy_threshold")
    unused = given_options(ctx, trace_only if kind == "checkpoint" else checkpoint_only)
    if unused:
        what = "traces" if kind == "checkpoint" else "checkpoints"
        verb = "applies" if len(unused) == 1 else "apply"
        echo_err(f"moediag: note: {', '.join(unused)} {verb} to {what} only; ignored for {path}")
    if kind == "checkpoint":
        from moediag.cli.inspect_checkpoint import inspect_checkpoint_command

        given = explicit(ctx, weights=weights, redundancy_threshold=redundancy_threshold)
        finish(inspect_checkpoint_command(path, as_json=as_json, layer=layer, **given))
        return
    from moediag.api import inspect_trace
    from moediag.trace import open_trace

    trace = open_trace(path, overrides=routing_overrides(num_experts, top_k, score_function))
    if layer is not None and layer not in trace.layers:
        raise UsageError(
            f"--layer {layer}: not in the trace (layers: {', '.join(map(str, sorted(trace.layers)))})",
            path,
        )
    analysis = inspect_trace(
        trace,
        path_windows=parse_path_windows(path_window, trace.layers),
        workers=workers,
        scheduler=scheduler,
        progress=progress_bar,
        **explicit(ctx, cold_eps=cold_eps, capacity_group=capacity_group, chunk_tokens=chunk_tokens),
    )
    if as_json:
        print_json(analysis.to_dict(detail=detail))
        return
    from moediag.render.trace_table import render_trace

    render_trace(analysis, stdout_console(), worst=worst, layer=layer, sort_key=sort)
    from moediag.render.accuracy_table import render_accuracy

    render_accuracy(analysis, stdout_console())
