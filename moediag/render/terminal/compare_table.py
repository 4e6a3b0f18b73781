"""Terminal tables for ``moediag compare`` (rich is imported only by the terminal renderers)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from moediag.compare import Comparison


def _f(value: Any, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def headline(cmp: Comparison) -> tuple[str, str]:
    s = cmp.summary
    if cmp.inputs == "checkpoints":
        bias = s["selection_bias_delta_max_abs"]
        return (
            f"router rows: min cosine {_f(s['router_cosine_min'])}, mean {_f(s['router_cosine_mean'])}; "
            + (f"largest selection-bias change {_f(bias)}" if bias is not None else "no selection bias"),
            "bold",
        )
    js = s["load_js_divergence"]
    parts = [f"load shift: worst JS divergence {_f(js['worst'])} (layer {js['worst_layer']})"]
    if s["tokens_match"]:
        parts.append(
            f"top-1 agreement mean {_pct(s['top1_agreement']['mean'])}, "
            f"top-k overlap mean {_pct(s['topk_overlap']['mean'])}"
        )
    if s.get("accuracy_delta") is not None:
        parts.append(
            f"accuracy {_pct(s['accuracy_a'])} -> {_pct(s['accuracy_b'])}; "
            f"{s['shifted_experts']} expert(s) shifted"
        )
    return "; ".join(parts), "bold"


def layer_table(cmp: Comparison) -> Table:
    t = Table(title=f"A = {cmp.a}\nB = {cmp.b}")
    if cmp.inputs == "checkpoints":
        for col in ("layer", "E", "cos min", "(expert)", "cos mean", "|Δbias| max"):
            t.add_column(col, justify="right")
        for r in cmp.layers:
            t.add_row(
                str(r["layer"]),
                str(r["num_experts"]),
                _f(r["router_cosine_min"]),
                str(r["router_cosine_min_expert"]),
                _f(r["router_cosine_mean"]),
                _f(r["selection_bias_delta_max_abs"]),
            )
        return t
    t.caption = "top-1: same first choice (random 1/E); top-k: mean |A∩B|/k (random k/E); JS: base 2"
    # accuracy is not per layer: every token passes every layer, so it is in the headline once
    for col in ("layer", "E", "top-1", "top-k", "JS", "MaxVio A→B", "ΔCV", "dead A→B"):
        t.add_column(col, justify="right")
    for r in cmp.layers:
        dead = "—" if r.get("dead_a") is None else f"{r['dead_a']}→{r['dead_b']}"
        t.add_row(
            str(r["layer"]),
            str(r["num_experts"]),
            _pct(r["top1_agreement"]),
            _pct(r["topk_overlap"]),
            _f(r["load_js_divergence"]),
            f"{_f(r['max_vio_a'], 2)}→{_f(r['max_vio_b'], 2)}",
            _f(r["cv_delta"], 2, True),
            Text(dead, style="red" if (r.get("dead_b") or 0) > (r.get("dead_a") or 0) else ""),
        )
    return t


def shift_table(cmp: Comparison, limit: int = 15) -> Table | None:
    """Experts whose accuracy moved (interval of B - A excludes 0), largest drop first."""
    rows = [
        (r["layer"], x) for r in cmp.layers for x in (r.get("expert_accuracy_shift") or []) if x["shifted"]
    ]
    if not rows:
        return None
    rows.sort(key=lambda lx: lx[1]["delta"])
    t = Table(
        title=f"Accuracy shift per expert (top-1 attribution; {len(rows)} shifted, 95% interval of B - A)"
    )
    for col in ("layer", "expert", "tokens A/B", "acc A", "acc B", "Δ", "Δ 95% CI"):
        t.add_column(col, justify="right")
    for layer, x in rows[:limit]:
        t.add_row(
            str(layer),
            str(x["expert"]),
            f"{x['tokens_a']}/{x['tokens_b']}",
            _pct(x["accuracy_a"]),
            _pct(x["accuracy_b"]),
            Text(_f(x["delta"], 3, True), style="red" if x["delta"] < 0 else "green"),
            f"[{_f(x['delta_ci_low'], 3, True)}, {_f(x['delta_ci_high'], 3, True)}]",
        )
    return t


def path_table(cmp: Comparison, limit: int = 10) -> Table | None:
    if not cmp.paths:
        return None
    t = Table(title="Accuracy shift per frequent path (top-1 experts across all MoE layers)")
    for col in ("path", "share A/B", "acc A", "acc B", "Δ", "shifted"):
        t.add_column(col, justify="right")
    for x in cmp.paths[:limit]:
        path = "-".join(map(str, x["path"]))
        t.add_row(
            path if len(path) <= 40 else path[:39] + "…",
            f"{_pct(x['share_a'])}/{_pct(x['share_b'])}",
            _pct(x["accuracy_a"]),
            _pct(x["accuracy_b"]),
            _f(x["delta"], 3, True),
            "yes" if x["shifted"] else "no",
        )
    return t


VERDICT_STYLES = {"worse": "bold red", "better": "bold green", "unchanged": "bold"}


def render_compare(cmp: Comparison, console: Console) -> None:
    verdict = cmp.summary.get("verdict")
    if verdict:
        console.print(Text(verdict["line"], style=VERDICT_STYLES[verdict["status"]]))
    text, style = headline(cmp)
    console.print(Text(text, style="" if verdict else style))
    console.print(layer_table(cmp))
    for table in (shift_table(cmp), path_table(cmp)):
        if table is not None:
            console.print(table)
