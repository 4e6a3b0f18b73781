"""Terminal tables for ``moediag compare DENSE SPARSE``: compute accounting, framing, quality per compute."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def _n(x: int | float | None) -> str:
    if x is None:
        return "—"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.2f}{unit}"
    return f"{x:,.0f}" if isinstance(x, int) or float(x).is_integer() else f"{x:.3g}"


def _b(x: int | None) -> str:
    if x is None:
        return "—"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= size:
            return f"{x / size:.2f} {unit}"
    return f"{x} B"


def _f(x: float | None, digits: int = 3, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def models_table(doc: dict[str, Any]) -> Table:
    """Side by side: the per-model figures of ``doc["models"]`` (A then B)."""
    ma, mb = doc["models"]
    t = Table(title=f"A = {ma['path']}\nB = {mb['path']}  (FLOPs at seq-len {ma['seq_len']})")
    t.add_column("")
    t.add_column("A", justify="right")
    t.add_column("B", justify="right")
    fr = doc["framing"]
    rows = (
        ("kind", "MoE" if ma["moe"] else "dense", "MoE" if mb["moe"] else "dense"),
        ("total params", _n(ma["total_params"]), _n(mb["total_params"])),
        ("active params / token", _n(ma["active_params"]), _n(mb["active_params"])),
        ("FLOPs / token", _n(ma["flops_per_token"]), _n(mb["flops_per_token"])),
        ("  of which attention", _n(ma["attention_flops_per_token"]), _n(mb["attention_flops_per_token"])),
        ("weight bytes", _b(ma["weight_bytes"]), _b(mb["weight_bytes"])),
        (
            "dense eq. (compute)",
            _n(fr["dense_equivalent"][0]["compute_matched_params"]),
            _n(fr["dense_equivalent"][1]["compute_matched_params"]),
        ),
        (
            "dense eq. (capacity)",
            _n(fr["dense_equivalent"][0]["capacity_matched_params"]),
            _n(fr["dense_equivalent"][1]["capacity_matched_params"]),
        ),
    )
    for r in rows:
        t.add_row(*r)
    return t


def framing_line(fr: dict[str, Any]) -> Text:
    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.0%}"

    what = {
        "both": "both compute-matched and capacity-matched",
        "compute-matched": "compute-matched",
        "capacity-matched": "capacity-matched",
        "neither": "NEITHER compute- nor capacity-matched",
    }[fr["matched"]]
    style = "bold red" if fr["matched"] == "neither" else "bold"
    return Text(
        f"framing: {what} (FLOPs a token {pct(fr['compute_off'])} apart, total parameters "
        f"{pct(fr['capacity_off'])} apart; tolerance {fr['tolerance']:.0%})",
        style=style,
    )


def _pm(x: float | None, ci: list[float | None]) -> str:
    """``+0.300±0.006``: the difference and its 95% half-width (the intervals are symmetric)."""
    lo, hi = ci
    if x is None:
        return "—"
    return f"{x:+.3f}" if lo is None or hi is None else f"{x:+.3f}±{(hi - lo) / 2:.3f}"


def _ab(a: float | None, b: float | None, digits: int = 3) -> str:
    return f"{_f(a, digits)}→{_f(b, digits)}"


def quality_table(q: dict[str, Any]) -> Table:
    """One row per domain (and all): A's figure -> B's, the paired difference B - A with its interval."""
    t = Table(
        title=f"quality on the same {q['tokens']:,} evaluation tokens (B - A, paired, 95%)",
        box=box.SIMPLE,
        pad_edge=False,
    )
    for col in ("domain", "loss A→B", "Δloss", "acc A→B", "Δacc", "B is"):
        t.add_column(col, justify="left" if col == "domain" else "right", no_wrap=True)
    for name, row in [("all", q["overall"])] + [(r["domain"], r) for r in q["domains"]]:
        verdict = ""
        if name in q["worse_domains"] and row is not q["overall"]:
            verdict = "worse"
        elif name in q["better_domains"] and row is not q["overall"]:
            verdict = "better"
        t.add_row(
            str(name),
            _ab(row["loss_a"], row["loss_b"], 2),
            _pm(row["loss_delta"], row["loss_delta_ci"]),
            _ab(row["accuracy_a"], row["accuracy_b"]),
            _pm(row["accuracy_delta"], row["accuracy_delta_ci"]),
            verdict,
        )
    return t


def per_flop_line(q: dict[str, Any]) -> Text | None:
    ov = q["overall"]
    a, b = ov["accuracy_per_gflop_a"], ov["accuracy_per_gflop_b"]
    if a is None or b is None:
        return None
    return Text(f"accuracy per GFLOP a token: A {a:.4g}, B {b:.4g} (B/A {b / a:.2f})")


def render_model_compare(doc: dict[str, Any], console: Console) -> None:
    """The model sections of a checkpoint comparison (``models``, ``framing``, ``quality``)."""
    console.print(framing_line(doc["framing"]))
    console.print(models_table(doc))
    if doc.get("quality"):
        console.print(quality_table(doc["quality"]))
        line = per_flop_line(doc["quality"])
        if line is not None:
            console.print(line)
