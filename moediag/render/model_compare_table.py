"""Terminal tables for ``moediag compare DENSE SPARSE``: compute accounting, framing, quality per compute."""

from __future__ import annotations

from typing import Any

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


def _ci(ci: list[float | None], digits: int = 3) -> str:
    lo, hi = ci
    return "—" if lo is None or hi is None else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


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


def quality_table(q: dict[str, Any]) -> Table:
    t = Table(title=f"quality on the same {q['tokens']:,} evaluation tokens (B - A, paired, 95% intervals)")
    for col in ("domain", "tokens", "loss A", "loss B", "Δloss", "acc A", "acc B", "Δacc", "acc/GFLOP A", "B"):
        t.add_column(col, justify="right" if col != "domain" else "left")
    for row in [{"domain": "all", **q["overall"]}, *q["domains"]]:
        flag = ""
        if row is not q["overall"] and (row["domain"] in q["worse_domains"]):
            flag = " worse"
        t.add_row(
            str(row["domain"]) + flag,
            f"{row['tokens']:,}",
            _f(row["loss_a"]),
            _f(row["loss_b"]),
            _f(row["loss_delta"], signed=True) + " " + _ci(row["loss_delta_ci"]),
            _f(row["accuracy_a"]),
            _f(row["accuracy_b"]),
            _f(row["accuracy_delta"], signed=True) + " " + _ci(row["accuracy_delta_ci"]),
            _n(row["accuracy_per_gflop_a"]),
            _n(row["accuracy_per_gflop_b"]),
        )
    return t


def render_model_compare(doc: dict[str, Any], console: Console) -> None:
    """The model sections of a checkpoint comparison (``models``, ``framing``, ``quality``)."""
    console.print(framing_line(doc["framing"]))
    console.print(models_table(doc))
    if doc.get("quality"):
        console.print(quality_table(doc["quality"]))
