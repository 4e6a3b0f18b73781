"""``moediag plot TRACE --kind KIND[,KIND...|all] -o FILE|DIR/``: figures of a trace from one analysis."""

from __future__ import annotations

from pathlib import Path

import typer

from moediag.cli.app import app, echo_err
from moediag.cli.common import progress_bar
from moediag.cli.help import EXTRA_PANELS
from moediag.cli.options import OUTPUT, Force, NumExperts, ScoreFunction, TopK
from moediag.errors import UsageError
from moediag.io.outputs import check_output
from moediag.render.plots.kinds import DESCRIPTIONS, SUFFIXES, PlotKind

EXTRA_PANELS["plot"] = ("Figures (--kind)", [(k.value, DESCRIPTIONS[k]) for k in PlotKind])


def plot_targets(kinds: list[PlotKind], output: Path, fmt: str) -> dict[PlotKind, Path]:
    """Where each figure goes: ``output`` itself for one kind and a .png/.svg name; otherwise ``output``
    is a folder (created if needed) holding ``KIND.FORMAT``."""
    if output.suffix.lower() in SUFFIXES and not output.is_dir():
        if len(kinds) > 1:
            raise UsageError(
                f"-o {output}: {len(kinds)} figures go into a folder; name one, e.g. -o figures/"
            )
        return {kinds[0]: output}
    if output.suffix and not output.is_dir():
        raise UsageError(f"-o {output}: a figure must end in .png or .svg (or name a folder, e.g. figures/)")
    if output.exists() and not output.is_dir():
        raise UsageError(f"-o {output}: exists and is not a folder")
    return {kind: output / f"{kind.value}.{fmt}" for kind in kinds}


def complete_kinds(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    """Shell completion of --kind: the figure names and all, after any comma list already typed."""
    head, _, last = incomplete.rpartition(",")
    prefix = f"{head}," if head else ""
    names = [k.value for k in PlotKind] + ([] if head else ["all"])
    return [prefix + n for n in names if n.startswith(last)]


@app.command("plot")
def plot_cmd(
    path: Path = typer.Argument(..., metavar="TRACE", help="A trace (.safetensors or folder of shards)."),
    kind: str = typer.Option(
        ...,
        "--kind",
        "-k",
        metavar="KIND[,KIND...]|all",
        autocompletion=complete_kinds,
        help="The figures: one kind, a comma list, or all (the ones the trace has data for); see Figures.",
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        metavar="FILE|DIR/",
        help="FILE.png or FILE.svg for one figure; a folder for several (each written as KIND.png).",
        rich_help_panel=OUTPUT,
    ),
    fmt: str = typer.Option(
        "png",
        "--format",
        "-f",
        metavar="png|svg",
        help="Format of figures written into a folder.",
        rich_help_panel=OUTPUT,
    ),  # fmt: skip
    dpi: int = typer.Option(
        110, "--dpi", metavar="N", help="PNG resolution (dots per inch).", rich_help_panel=OUTPUT
    ),
    layer: int | None = typer.Option(
        None, "--layer", "-l", metavar="L", help="Only this layer (the model's own index)."
    ),
    num_experts: NumExperts = None,
    top_k: TopK = None,
    score_function: ScoreFunction = None,
    force: Force = False,
) -> None:
    """Draw figures of a trace as PNG or SVG from one analysis (written atomically; nothing is left on
    failure).

    What each figure needs is checked before the trace is analysed: a named figure the trace has no
    data for is an error; with --kind all it is skipped with a note.

    Example: moediag plot sample_traces/collapsed.safetensors --kind all -o figures/
    """
    from moediag.api import inspect_trace
    from moediag.cli.inspect import routing_overrides
    from moediag.io.inputs import detect_kind
    from moediag.render.plots.kinds import missing_data, parse_kinds

    kinds = parse_kinds(kind)
    fmt = fmt.lower().lstrip(".")
    if "." + fmt not in SUFFIXES:
        raise UsageError(f"--format {fmt}: figures are png or svg")
    targets = plot_targets(kinds, output, fmt)
    if dpi < 10:
        raise UsageError("--dpi must be at least 10")
    for target in targets.values():  # each figure file (in a folder: the folder itself may exist)
        check_output(target, [path], force=force)
    if detect_kind(path) != "trace":
        raise UsageError(
            f"{path}: plot draws traces; for a checkpoint use 'moediag report {path} -o FILE.html'"
        )
    from moediag.trace import open_trace

    trace = open_trace(path, overrides=routing_overrides(num_experts, top_k, score_function))
    if layer is not None and layer not in trace.layers:
        raise UsageError(
            f"--layer {layer}: not in the trace (layers: {', '.join(map(str, sorted(trace.layers)))})",
            path,
        )
    every = kind.strip().lower() == "all"
    for k in list(targets):
        reason = missing_data(k, trace, layer)
        if reason is None:
            continue
        if not every:
            raise UsageError(f"--kind {k.value}: {reason}", path)
        echo_err(f"moediag: note: {path}: skipped {k.value}: {reason}")
        del targets[k]
    if not targets:  # pragma: no cover - load-heatmap needs nothing beyond a valid trace
        raise UsageError("no figure can be drawn from this trace", path)
    from moediag.render.plots.output import save_figure
    from moediag.render.plots.registry import make_figure

    analysis = inspect_trace(trace, command="plot", progress=progress_bar)
    figures = {k: make_figure(k, analysis, layer) for k in targets}  # all drawn before any is written
    if next(iter(targets.values())) != output:
        output.mkdir(parents=True, exist_ok=True)
    with progress_bar("drawing", len(figures)) as advance:
        for k, fig in figures.items():
            save_figure(fig, targets[k], dpi=dpi)
            advance(1)
    if next(iter(targets.values())) == output:
        echo_err(f"moediag: wrote {next(iter(targets.values()))}")
    else:
        echo_err(f"moediag: wrote {len(targets)} figures to {output}: {', '.join(k.value for k in targets)}")
