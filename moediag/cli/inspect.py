"""``moediag inspect PATH``: tables (or JSON) for a trace or a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from moediag.cli.app import app, echo_err, finish
from moediag.cli.common import (
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
from moediag.cli.options import (
    OUTPUT,
    SCALE,
    CapacityGroup,
    ChunkTokens,
    ColdEps,
    MinCapacity,
    NumExperts,
    PathWindow,
    RedundancyThreshold,
    Sample,
    ScoreFunction,
    TopK,
    Weights,
    json_option,
)
from moediag.errors import UsageError
from moediag.options import DEFAULT_SAMPLE, default

if TYPE_CHECKING:
    from moediag.trace import RoutingSpec

SORT_KEYS = ("max_vio", "cv", "gini", "aux_loss", "aux_loss_unbiased", "z_loss", "max_mean")


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
    as_json: Annotated[bool, json_option("docs/json.md")] = False,
    detail: bool = typer.Option(
        False,
        "--detail",
        help="With --json: add co-activation, per-step load, margin histogram and drop rate by position.",
        rich_help_panel=OUTPUT,
    ),
    layer: int | None = typer.Option(
        None, "--layer", "-l", metavar="L", help="Show the load histogram of this layer."
    ),
    worst: int | None = typer.Option(
        None, "--worst", metavar="N", help="Show only the N worst layers, worst first."
    ),
    sort: str = typer.Option(
        "max_vio",
        "--sort",
        metavar="FIGURE",
        help=f"Figure that ranks layers for --worst: {', '.join(SORT_KEYS)}.",
    ),
    num_experts: NumExperts = None,
    top_k: TopK = None,
    score_function: ScoreFunction = None,
    cold_eps: ColdEps = default("cold_eps"),
    min_capacity: MinCapacity = default("min_capacity"),
    capacity_group: CapacityGroup = default("capacity_group"),
    path_window: PathWindow = None,
    weights: Weights = True,
    redundancy_threshold: RedundancyThreshold = default("redundancy_threshold"),
    sample: Sample = DEFAULT_SAMPLE,
    chunk_tokens: ChunkTokens = None,
    workers: int | None = typer.Option(
        None,
        "--workers",
        "-w",
        metavar="N",
        help=WORKERS_HELP + " Checkpoints: N layers' weights at once.",
        rich_help_panel=SCALE,
    ),
    scheduler: str | None = typer.Option(
        None,
        "--scheduler",
        metavar="ADDRESS",
        help=SCHEDULER_HELP + " Checkpoints: one task per layer.",
        rich_help_panel=SCALE,
    ),
) -> None:
    """Print what a trace or checkpoint says about routing: a verdict, an overview, one row per layer.

    Example: moediag inspect sample_traces/collapsed.safetensors --worst 3 --layer 2
    """
    from moediag.io.inputs import detect_kind

    if sort not in SORT_KEYS:
        raise UsageError(f"--sort must be one of {', '.join(SORT_KEYS)}")
    require_positive(cold_eps=cold_eps, capacity_group=capacity_group, chunk_tokens=chunk_tokens, worst=worst)
    if min_capacity < 0:
        raise UsageError("--min-capacity must be 0 or more")
    kind = detect_kind(path)
    # options of the other kind of input: derived from what was set, so defaults live in one place
    trace_only = ("worst", "sort", "detail", "num_experts", "top_k", "score_function", "cold_eps",
                  "capacity_group", "min_capacity", "chunk_tokens", "path_window")  # fmt: skip
    checkpoint_only = ("weights", "redundancy_threshold", "sample")
    unused = given_options(ctx, trace_only if kind == "checkpoint" else checkpoint_only)
    if unused:
        what = "traces" if kind == "checkpoint" else "checkpoints"
        verb = "applies" if len(unused) == 1 else "apply"
        echo_err(f"moediag: note: {', '.join(unused)} {verb} to {what} only; ignored for {path}")
    if kind == "checkpoint":
        from moediag.cli.inspect_checkpoint import inspect_checkpoint_command

        given = explicit(ctx, weights=weights, redundancy_threshold=redundancy_threshold)
        finish(
            inspect_checkpoint_command(
                path,
                as_json=as_json,
                layer=layer,
                sample=sample,
                workers=workers,
                scheduler=scheduler,
                **given,
            )
        )
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
        **explicit(
            ctx,
            cold_eps=cold_eps,
            capacity_group=capacity_group,
            min_capacity=min_capacity,
            chunk_tokens=chunk_tokens,
        ),
    )
    if as_json:
        print_json(analysis.to_dict(detail=detail))
        return
    from moediag.render.terminal.trace_table import render_trace

    render_trace(analysis, stdout_console(), worst=worst, layer=layer, sort_key=sort)
    from moediag.render.terminal.accuracy_table import render_accuracy

    render_accuracy(analysis, stdout_console())
