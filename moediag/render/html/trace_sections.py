"""The trace's sections of the report, in order: overview, layers, then one section per figure the trace
can give (the others are listed as omitted, with the reason), and what routing costs a server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moediag.render.html.embed import FigureEmbedder, try_figure
from moediag.render.html.markup import e, fmt, kv_table, pct
from moediag.render.html.page import Section
from moediag.render.html.trace_tables import dead_cold_table, layer_table, overview_rows, path_table
from moediag.render.plots.kinds import PlotKind

if TYPE_CHECKING:  # pragma: no cover
    from moediag.analysis import TraceAnalysis


def trace_sections(
    analysis: TraceAnalysis, embed: FigureEmbedder
) -> tuple[list[Section], list[tuple[str, str]]]:
    sections: list[Section] = []
    omitted: list[tuple[str, str]] = []

    def add(
        sid: str, title: str, kind: PlotKind, caption: str, extra: str = "", layer: int | None = None
    ) -> None:
        fig, why = try_figure(embed, kind, analysis, layer, caption)
        if fig is None:
            omitted.append((title, why or "not available"))
            return
        sections.append(Section(sid, title, fig + extra))

    imbalance, _ = try_figure(
        embed,
        PlotKind.IMBALANCE,
        analysis,
        None,
        "MaxVio, CV and dead experts per layer; dashed lines: check's default limits.",
    )
    sections.append(Section("overview", "Overview", kv_table(overview_rows(analysis)) + (imbalance or "")))
    sections.append(
        Section(
            "layers",
            "Layers",
            "<p>One row per MoE layer; click a heading to sort (with scripts on). "
            "— means the trace lacks what the figure needs.</p>"
            + layer_table(analysis)
            + dead_cold_table(analysis),
        )
    )
    add(
        "load-heatmap",
        "Load per layer and expert",
        PlotKind.LOAD_HEATMAP,
        "Each cell is an expert's load divided by the balanced load k·T/E (1 = balanced, log scale): red is "
        "overloaded, blue underloaded, black dead.",
    )
    add(
        "load-histograms",
        "Load histograms",
        PlotKind.LOAD_HISTOGRAMS,
        "Load per expert in expert order, one panel per layer; the dashed line is the balanced load.",
    )
    add(
        "coactivation",
        "Co-activation",
        PlotKind.COACTIVATION,
        "Row i: how often each other expert j is in the same token's top-k when i is (the layer with the "
        "worst MaxVio). Bright columns are experts that pair with everyone.",
    )
    add(
        "margin",
        "Top-k margin",
        PlotKind.MARGIN,
        "The gap between the k-th and (k+1)-th router score per token. Mass near 0 means many tokens sit on "
        "the boundary and would switch experts under small perturbations.",
    )
    add(
        "drop-rate",
        "Capacity drop rate",
        PlotKind.DROP_RATE,
        "Share of assignments a capacity limit C = ⌈CF·k·T/E⌉ per group would drop, by capacity factor.",
    )
    add("steps", "Per-step trends", PlotKind.STEPS, "Imbalance per training step (tokens.step) or dump row.")
    add(
        "expert-accuracy",
        "Per-expert accuracy",
        PlotKind.EXPERT_ACCURACY,
        "Accuracy of the tokens whose first choice is each expert.",
    )
    add(
        "path-accuracy",
        "Per-path accuracy",
        PlotKind.PATH_ACCURACY,
        "The most frequent routing paths; vermillion bars lie wholly below the overall accuracy.",
        extra=path_table(analysis),
    )
    return sections, omitted


# -- serving cost ---------------------------------------------------------------------------------------


def _bytes(x: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= size:
            return f"{x / size:,.2f} {unit}"
    return f"{x:,.0f} B"


def serving_section(trace: TraceAnalysis, checkpoint: Any, embed: FigureEmbedder) -> Section | None:
    """ "What routing costs a server": experts a decode batch touches (figure) and, with a checkpoint
    analysis, the weight bytes a step reads and the dense model of equal bandwidth, per B."""
    touched = trace.summary.get("experts_touched")
    if not touched:
        return None
    fig, _ = try_figure(
        embed,
        PlotKind.EXPERTS_TOUCHED,
        trace,
        None,
        "Share of a layer's experts the B tokens of a decode batch chose (B consecutive token slots of the "
        "trace), beside 1 − (1 − k/E)^B for uniform routing. A step reads every touched expert's weights.",
    )
    cost = None
    from moediag.checkpoint.analysis import CheckpointAnalysis

    if isinstance(checkpoint, CheckpointAnalysis):
        from moediag.checkpoint.compute import trace_serving_cost

        cost = trace_serving_cost(trace, checkpoint)
    head = "<tr><th>B</th><th>experts touched</th><th>uniform</th><th>batches</th>"
    if cost:
        head += "<th>weight bytes a step</th><th>bytes a token</th><th>dense model, equal bandwidth</th>"
    rows = []
    for b, row in touched.items():
        cells = [b, pct(row["share"]), pct(row["uniform"]), fmt(row["batches"])]
        if cost:
            c = cost[b]
            cells += [
                _bytes(c["step_bytes"]),
                _bytes(c["bytes_per_token"]),
                f"{fmt(c['equal_bandwidth_dense_params'])} params",
            ]
        rows.append("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in cells) + "</tr>")
    missing = ""
    if cost:
        first = next(iter(cost.values()))
        blocks = len(first["per_layer_source"])
        if first["layers_from_trace"] < blocks:
            missing = (
                f" {blocks - first['layers_from_trace']} of the checkpoint's {blocks} MoE layers have no "
                "trace layer of the same index and expert count: uniform routing is assumed for them."
            )
    note = (
        "<p>Weight bytes a step: every non-expert weight plus the touched share of each MoE layer's routed "
        f"experts, as stored in the checkpoint (docs/compare.md).{e(missing)}</p>"
        if cost
        else "<p>Give a checkpoint too (<code>moediag report TRACE CHECKPOINT</code>) for the weight bytes "
        "a step reads.</p>"
    )
    table = f'<table class="data"><thead>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return Section("serving", "What routing costs a server", (fig or "") + table + note)
