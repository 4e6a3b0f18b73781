"""``moediag plot PATH --kind KIND [--layer L] -o FILE.png|.svg``: one figure of a trace."""

from __future__ import annotations

from pathlib import Path

import typer

from moediag.cli.app import app, echo_err
from moediag.cli.common import progress_bar
from moediag.errors import UsageError
from moediag.render.plots import DESCRIPTIONS, SUFFIXES, PlotKind

_KINDS_HELP = "; ".join(f"{k.value}: {DESCRIPTIONS[k]}" for k in PlotKind)


@app.command("plot")
def plot_cmd(
    path: Path = typer.Argument(..., metavar="TRACE", help="A trace (.safetensors or folder of shards)."),
    kind: PlotKind = typer.Option(
        ..., "--kind", "-k", help=f"The figure. {_KINDS_HELP}.", case_sensitive=False
    ),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write it: FILE.png or FILE.svg."),
    layer: int | None = typer.Option(None, "--layer", "-l", help="Only this layer (the model's own index)."),
    num_experts: int | None = typer.Option(
        None, "--num-experts", help="Experts per layer, if the trace lacks it."
    ),
    top_k: int | None = typer.Option(None, "--top-k", help="Experts per token, if the trace lacks it."),
    score_function: str | None = typer.Option(
        None, "--score-function", help="softmax | sigmoid | topk_softmax, if the trace lacks it."
    ),
    dpi: int = typer.Option(110, "--dpi", help="PNG resolution (dots per inch)."),
) -> None:
    """Draw one figure of a trace as PNG or SVG (written atomically; nothing is left on failure).

    Example: moediag plot sample_traces/collapsed.safetensors --kind load-heatmap -o load.png
    """
    from moediag.api import inspect_trace
    from moediag.cli.inspect import routing_overrides
    from moediag.inputs import detect_kind
    from moediag.render.plots import make_figure, save_figure
    from moediag.trace import open_trace

    if output.suffix.lower() not in SUFFIXES:
        raise UsageError(f"-o {output}: the file must end in .png or .svg")
    if dpi < 10:
        raise UsageError("--dpi must be at least 10")
    if detect_kind(path) != "trace":
        raise UsageError(
            f"{path}: plot draws traces; for a checkpoint use 'moediag report {path} -o FILE.html'"
        )
    trace = open_trace(path, overrides=routing_overrides(num_experts, top_k, score_function))
    if layer is not None and layer not in trace.layers:
        raise UsageError(
            f"--layer {layer}: not in the trace (layers: {', '.join(map(str, sorted(trace.layers)))})",
            path,
        )
    analysis = inspect_trace(trace, command="plot", progress=progress_bar)
    fig = make_figure(kind, analysis, layer)
    save_figure(fig, output, dpi=dpi)
    echo_err(f"moediag: wrote {output}")
