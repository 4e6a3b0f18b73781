"""Terminal tables for a checkpoint analysis (rich is imported only by the terminal renderers).

First a one-line verdict, then the figures behind it (structure, parameters, dense-equivalent view),
then one row per MoE layer. Fits 80 columns; with many layers only the ones with findings are listed.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from moediag.analysis.verdict import checkpoint_verdict, human
from moediag.checkpoint.analysis import CheckpointAnalysis
from moediag.render.words import quantisation

MAX_ROWS = 40


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def verdict(analysis: CheckpointAnalysis) -> tuple[str, str]:
    """The verdict line and its style (:func:`moediag.analysis.verdict.checkpoint_verdict`)."""
    v = checkpoint_verdict(analysis)
    return v.text, v.style


def overview_table(analysis: CheckpointAnalysis) -> Table:
    s = analysis.summary()
    meta = analysis.meta()
    t = Table(title="Checkpoint", show_header=False, box=None, pad_edge=False, title_justify="left")
    t.add_column("figure", style="bold", no_wrap=True)
    t.add_column("value", overflow="fold")
    files = f"{meta['files']} file(s), {meta['tensors']} tensors" + (
        f", index {meta['index']}" if meta["index"] else ""
    )
    t.add_row("path", f"{meta['path']} ({files})")
    fam = s["family"] or "unknown"
    if s["family_source"] == "tensor names":
        fam += " (guessed from tensor names; no config.json)"
    t.add_row("family", fam)
    layers = f"{s['moe_layers']} MoE, {s['dense_layers']} dense"
    if s["mtp_layers"]:
        layers += f", {s['mtp_layers']} MTP (not counted as active)"
    if len(s["stacks"]) > 1:
        layers += " in " + ", ".join(st["name"] or "(root)" for st in s["stacks"])
    t.add_row("layers", layers)
    if s["is_moe"]:
        routing = f"{s['num_experts']} routed"
        if s["shared_experts"]:
            routing += f" + {s['shared_experts']} shared"
        routing += f", top-{s['top_k'] if s['top_k'] is not None else '?'}"
        if s["score_function"]:
            routing += f", {s['score_function']}"
        if s["norm_topk_prob"] is not None:
            routing += ", renormalised" if s["norm_topk_prob"] else ", not renormalised"
        if s["n_group"]:
            routing += f", {s['topk_group']} of {s['n_group']} groups"
            if s.get("group_score"):
                routing += f" (group score {s['group_score']})"
        if s["routed_scaling_factor"] not in (None, 1.0):
            routing += f", scale {s['routed_scaling_factor']:g}"
        if s["selection_bias"]:
            routing += ", selection bias"
        if s["router_bias"]:
            routing += ", logit bias"
        t.add_row("experts", routing)
        if s["expert_intermediate_size"]:
            t.add_row(
                "sizes", f"hidden {s['hidden_size']}, expert intermediate {s['expert_intermediate_size']}"
            )
    t.add_row(
        "total params",
        human(s["total_params"]) + (f" (+{human(s['mtp_params'])} MTP)" if s["mtp_params"] else ""),
    )
    if s["is_moe"]:
        t.add_row("active / token", f"{human(s['active_params'])} ({_pct(s['active_share'])} of total)")
        t.add_row(
            "routed experts",
            f"{human(s['expert_params'])} ({_pct(s['expert_share'])} of total)"
            + (f"; shared {human(s['shared_expert_params'])}" if s["shared_expert_params"] else ""),
        )
        de = s["dense_equivalent"]
        t.add_row(
            "dense-equivalent",
            f"compute like a {human(de['compute_params'])} dense model "
            f"(~{human(de['flops_per_token'])} FLOPs/token); capacity like {human(de['capacity_params'])}",
        )
    if s["quantization"]:
        t.add_row("quantisation", quantisation(s["quantization"]))
    return t


def _row_findings(d: dict[str, Any]) -> int:
    return (
        len(d.get("redundant_pairs") or []) * 10
        + len(d.get("router_norm_outliers") or [])
        + len(d.get("zero_experts") or []) * 10
    )


def layers_table(analysis: CheckpointAnalysis, max_rows: int = MAX_ROWS) -> tuple[Table, str | None]:
    rows = [lr.to_dict() for lr in analysis.layers]
    note = None
    if len(rows) > max_rows:
        flagged = [r for r in rows if _row_findings(r)]
        flagged.sort(key=lambda r: -_row_findings(r))
        shown = flagged[: max_rows // 2]
        if not shown:
            shown = rows[:5] + rows[-5:]
        note = f"{len(rows) - len(shown)} of {len(rows)} layers not shown (--layer N or --json for all)"
        rows = sorted(shown, key=lambda r: (r["stack"], r["layer"]))
    multi = len({r["stack"] for r in rows}) > 1
    t = Table(title="MoE layers", title_justify="left", pad_edge=False)
    t.add_column("layer", no_wrap=True)
    t.add_column("E", justify="right")
    t.add_column("k", justify="right")
    t.add_column("router norm\nmin/med/max", justify="right", no_wrap=True)
    t.add_column("outliers", overflow="fold")
    t.add_column("bias\nmin..max", justify="right", no_wrap=True)
    t.add_column("dup pairs", overflow="fold")
    t.add_column("distinct", justify="right")
    for r in rows:
        label = f"{r['stack']}.{r['layer']}" if multi else str(r["layer"])
        if r["kind"] == "attention":
            label += " attn"
        if r["mtp"]:
            label += " mtp"
        ns = r["router_norm_stats"]
        norms = f"{ns['min']:.3g}/{ns['median']:.3g}/{ns['max']:.3g}" if ns else "—"
        outl = r["router_norm_outliers"]
        outliers = Text("—" if outl is None else (", ".join(f"{i} {d}" for i, _, d in outl[:4]) or "none"))
        if outl:
            outliers.stylize("yellow")
        b = r["bias"] or r["router_bias"]
        bias = f"{b['min']:.3g}..{b['max']:.3g}" if b else "—"
        pairs = r["redundant_pairs"]
        if pairs is None:
            dup = Text("—" if r["weights_note"] is None else "skipped")
        elif not pairs:
            dup = Text("none")
        else:
            dup = Text(
                ", ".join(f"{i}={j}" for i, j, _ in pairs[:4]) + (" ..." if len(pairs) > 4 else ""),
                style="bold red",
            )
        distinct = "—" if r["distinct_experts"] is None else str(r["distinct_experts"])
        t.add_row(
            label,
            str(r["num_experts"]),
            "?" if r["top_k"] is None else str(r["top_k"]),
            norms,
            outliers,
            bias,
            dup,
            distinct,
        )
    return t, note


def render_checkpoint(analysis: CheckpointAnalysis, console: Console) -> None:
    """Print the verdict, the overview and the per-layer table of a checkpoint analysis."""
    line, style = verdict(analysis)
    console.print(Text(line, style=style))
    console.print()
    console.print(overview_table(analysis))
    if analysis.layers:
        console.print()
        table, note = layers_table(analysis)
        console.print(table)
        if note:
            console.print(Text(note, style="dim"))
    s = analysis.summary()
    for n in s["notes"]:
        console.print(Text(f"note: {n}", style="dim"))
