"""Terminal tables for accuracy per expert and per path (shown by ``inspect`` when the trace has
``tokens.correct``); rich is imported only by renderers."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from moediag.analysis import TraceAnalysis


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _ci(row: dict[str, Any]) -> str:
    return "—" if row["ci_low"] is None else f"{100 * row['ci_low']:.1f}–{100 * row['ci_high']:.1f}%"


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def worst_experts_table(analysis: TraceAnalysis, limit: int = 10) -> Table | None:
    """The experts with the lowest interval upper bound (top-1 attribution), flagged ones first."""
    rows = [
        (layer["layer"], layer["accuracy"], r)
        for layer in analysis.layers
        for r in (layer.get("expert_accuracy") or [])
        if r["accuracy"] is not None
    ]
    if not rows:
        return None
    flagged = sum(1 for _, _, r in rows if r["below_overall"])
    rows.sort(key=lambda x: (not x[2]["below_overall"], x[2]["ci_high"], x[2]["accuracy"]))
    t = Table(title="Worst experts by accuracy (top-1 attribution)")
    t.caption = f"{flagged} expert(s) with a 95% interval wholly below their layer's accuracy"
    for col in ("layer", "expert", "tokens", "accuracy", "95% CI", "layer acc.", "loss", "flag"):
        t.add_column(col, justify="right")
    for layer, overall, r in rows[:limit]:
        t.add_row(
            str(layer),
            str(r["expert"]),
            str(r["tokens"]),
            _pct(r["accuracy"]),
            _ci(r),
            _pct(overall),
            _loss(r["mean_loss"]),
            Text("below", style="red") if r["below_overall"] else "",
        )
    return t


def paths_table(analysis: TraceAnalysis, limit: int = 10) -> Table | None:
    """Underperforming paths first, then the most frequent ones, for each path window."""
    windows = analysis.summary.get("paths") or []
    shown = [w for w in windows if w["accuracy"] is not None and (w["underperforming"] or w["frequent"])]
    if not shown:
        return None
    w = shown[0]
    rows = w["underperforming"][:limit] or w["frequent"][:limit]
    what = "underperforming" if w["underperforming"] else "most frequent"
    exact = "exact" if w["exact"] else f"counts may miss up to {w['max_undercount']} tokens per path"
    t = Table(title=f"Paths over layers {w['layers'][0]}..{w['layers'][-1]}: {what}")
    t.caption = f"overall accuracy {_pct(w['accuracy'])}; {exact}"
    for col in ("path", "tokens", "share", "accuracy", "95% CI", "loss"):
        t.add_column(col, justify="right")
    for r in rows:
        path = "-".join(map(str, r["path"]))
        t.add_row(
            path if len(path) <= 32 else path[:31] + "…",
            str(r["tokens"]),
            _pct(r["share"]),
            _pct(r["accuracy"]),
            _ci(r),
            _loss(r["mean_loss"]),
        )
    return t


def render_accuracy(analysis: TraceAnalysis, console: Console) -> None:
    """Print the accuracy tables when the trace has accuracy data; nothing otherwise."""
    for table in (worst_experts_table(analysis), paths_table(analysis)):
        if table is not None:
            console.print(table)
