"""Terminal tables for a trace analysis (rich is imported only by the terminal renderers)."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from moediag.analysis import TraceAnalysis

BAR = "█▏▎▍▌▋▊▉"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def verdict(analysis: TraceAnalysis) -> tuple[str, str]:
    """The verdict line and its style (:func:`moediag.analysis.verdict.trace_verdict`, as every output)."""
    v = analysis.verdict()
    return v.text, v.style


def overview_table(analysis: TraceAnalysis) -> Table:
    s = analysis.summary
    t = Table(title="Overview", show_header=False, box=None, pad_edge=False)
    t.add_column("figure", style="bold")
    t.add_column("value")
    meta = analysis.trace_meta
    t.add_row("trace", f"{analysis.path} ({meta.get('shards', 1)} shard(s))")
    if meta.get("model"):
        t.add_row("model", str(meta["model"]))
    t.add_row("tokens", _fmt(s["tokens"]))
    t.add_row("MoE layers", _fmt(s["layers"]))
    t.add_row("experts / top-k", f"{_fmt(s['num_experts'])} / {_fmt(s['top_k'])}")
    for key, label in (
        ("max_vio", "MaxVio"),
        ("cv", "CV"),
        ("entropy_norm", "load entropy (norm.)"),
        ("aux_loss", "aux loss (balanced=1)"),
        ("aux_loss_unbiased", "aux loss, unbiased top-k (Megatron's log)"),
        ("z_loss", "z-loss"),
    ):
        fig = s[key]
        if fig["mean"] is None:
            t.add_row(label, "—")
        else:
            t.add_row(
                label, f"mean {_fmt(fig['mean'])}, worst {_fmt(fig['worst'])} (layer {fig['worst_layer']})"
            )
    t.add_row("HF aux loss (pooled, balanced=k)", _fmt(s["hf_aux_loss"]))
    slots = sum(len(r["load"]) for r in analysis.layers)
    t.add_row(
        "dead / cold experts (all layers)",
        f"{s['dead_experts']} / {s['cold_experts']} of {slots} ({s['layers']} layers x {s['num_experts']})",
    )
    if s["excluded_nonfinite"]:
        t.add_row("rows excluded (NaN/Inf logits)", str(s["excluded_nonfinite"]))
    return t


LAYER_COLUMNS = ("layer", "MaxVio", "CV", "H", "dead", "cold", "aux", "z-loss", "conf", "drop", "same")


def layer_legend() -> str:
    """What each column of the layer table means (moediag/analysis/figures.py, as ``moediag explain``)."""
    from moediag.analysis.figures import legend

    return (
        f"{legend(list(LAYER_COLUMNS))}. drop is at capacity factor 1.0 (any drop policy). "
        "moediag explain COLUMN says more."
    )


def layer_table(analysis: TraceAnalysis, worst: int | None = None, sort_key: str = "max_vio") -> Table:
    rows = analysis.layers
    title = "Layers"
    if worst is not None:

        def badness(row: dict[str, Any]) -> float:
            value = row.get(sort_key)
            return float("-inf") if value is None else float(value)

        rows = sorted(rows, key=badness, reverse=True)
        rows = rows[:worst]
        title = f"Worst {len(rows)} layers by {sort_key}"
    t = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 0, 0, 1),
    )
    for col in LAYER_COLUMNS:
        t.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        drop = r.get("drop_rate_total")
        drop1 = None if not drop else drop.get("1.0")
        dead = len(r["dead_experts"])
        t.add_row(
            str(r["layer"]),
            _fmt(r["max_vio"], 2),
            _fmt(r["cv"], 2),
            _fmt(r["entropy_norm"], 2),
            Text(str(dead), style="red" if dead else ""),
            str(len(r["cold_experts"])),
            _fmt(r["aux_loss"], 3),
            _fmt(r["z_loss"], 2),
            _fmt(r["confidence"], 2),
            _pct(drop1),
            _pct(r.get("consecutive_same_rate")),
        )
    return t


def histogram_table(analysis: TraceAnalysis, layer: int, width: int = 40, max_rows: int = 64) -> Table:
    """A unicode-bar load histogram for one layer; long expert lists show the top and bottom."""
    row = analysis.layer(layer)
    load = row["load"]
    total = sum(load) or 1
    e = len(load)
    mean = total / e
    peak = max(load) or 1
    order = list(range(e))
    if e > max_rows:
        by_load = sorted(order, key=lambda i: -load[i])
        half = max_rows // 2
        order = by_load[:half] + [-1] + by_load[-half:]
    t = Table(title=f"Layer {layer}: load per expert (mean {mean:.1f}; │ marks the mean)")
    t.add_column("expert", justify="right")
    t.add_column("count", justify="right")
    t.add_column("share", justify="right")
    t.add_column("load", no_wrap=True)
    dead = set(row["dead_experts"])
    for i in order:
        if i < 0:
            t.add_row("…", "", "", f"({e - max_rows} experts not shown)")
            continue
        cells = load[i] / peak * width
        full = int(cells)
        frac = int((cells - full) * 8)
        bar = "█" * full + (BAR[frac] if frac else "")
        mean_col = int(mean / peak * width)
        if len(bar) < mean_col:
            bar = bar.ljust(mean_col) + "│"
        label = "dead" if i in dead else ""
        t.add_row(
            str(i),
            str(load[i]),
            f"{100 * load[i] / total:.2f}%",
            Text(bar + (" " + label if label else ""), style="red" if i in dead else "cyan"),
        )
    return t


def render_trace(
    analysis: TraceAnalysis,
    console: Console,
    *,
    worst: int | None = None,
    layer: int | None = None,
    sort_key: str = "max_vio",
) -> None:
    text, style = verdict(analysis)
    console.print(Text(text, style=style))
    console.print(overview_table(analysis))
    console.print(layer_table(analysis, worst, sort_key))
    console.print(layer_legend(), style="dim")
    if layer is not None:
        console.print(histogram_table(analysis, layer))
