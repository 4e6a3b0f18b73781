"""Terminal tables for accuracy per expert and per path (shown by ``inspect`` when the trace has
``tokens.correct``); rich is imported only by the terminal renderers."""

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
    """The experts whose accuracy is most surely low (top-1 attribution): those whose 95% interval lies wholly
    below their layer's accuracy first, then by the interval's upper end, so an expert with few tokens and a
    wide interval does not crowd out a well-measured poor one."""
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
    shown = rows[:limit]
    # every token passes every layer, so the layers' accuracies usually agree: then one figure says it
    same = len({overall for _, overall, _ in shown}) == 1
    t = Table(title="Worst experts by accuracy (top-1 attribution)")
    where = f" ({_pct(shown[0][1])} in every layer shown)" if same else ""
    t.caption = (
        f"{flagged} expert(s) with a 95% interval wholly below their layer's accuracy{where}. Order: those "
        "first, then by the upper end of the interval (the experts most surely below par, not the ones with "
        "the fewest tokens)"
    )
    columns = ["layer", "expert", "tokens", "accuracy", "95% CI"] + ([] if same else ["layer acc."])
    for col in columns + ["loss", "flag"]:
        t.add_column(col, justify="right")
    for layer, overall, r in shown:
        cells = [str(layer), str(r["expert"]), str(r["tokens"]), _pct(r["accuracy"]), _ci(r)]
        cells += [] if same else [_pct(overall)]
        t.add_row(
            *cells,
            _loss(r["mean_loss"]),
            Text("below", style="red") if r["below_overall"] else "",
        )
    return t


def paths_tables(analysis: TraceAnalysis, limit: int = 10) -> list[Table]:
    """One table per path window (the full depth, then each ``--path-window``): underperforming paths
    first, else the most frequent ones."""
    windows = analysis.summary.get("paths") or []
    tables = []
    for w in windows:
        if w["accuracy"] is None or not (w["underperforming"] or w["frequent"]):
            continue
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
        tables.append(t)
    return tables


def render_accuracy(analysis: TraceAnalysis, console: Console) -> None:
    """Print the accuracy tables when the trace has accuracy data; nothing otherwise."""
    experts = worst_experts_table(analysis)
    for table in ([experts] if experts is not None else []) + paths_tables(analysis):
        console.print(table)
