"""Terminal tables for ``moediag replay`` (rich is imported only by the terminal renderers).

Takes the ``--json`` document (:meth:`moediag.replay.ReplayResult.to_dict`), so what people read and
what machines read are the same numbers.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from moediag.analysis.verdict import replay_verdict


def _pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f}%"


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def headline(doc: dict[str, Any]) -> tuple[str, str]:
    """The verdict line and its style: do the trace and the checkpoint belong together
    (:func:`moediag.analysis.verdict.replay_verdict`)?"""
    v = replay_verdict(doc)
    return v.text, v.style


def layer_table(doc: dict[str, Any]) -> Table:
    settings = doc["meta"]["settings"]
    layers = doc["layers"]
    whatif = any("whatif_topk_overlap" in r for r in layers)
    caption = ["agree: same top-k set as recorded"]
    if whatif:
        caption.append("MaxVio own→what-if: the model's routing, then the what-if's")
        caption.append("kept: share of those choices a what-if keeps")
    if settings["ep_size"] is not None:
        caption.append("EP bal: mean / max rank load, contiguous → placement")
    if settings.get("nodes"):
        caption.append("node bal: the same per node")
    t = Table(
        caption="; ".join(caption),
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    # with a what-if the load is the what-if's: say so, beside the model's own (recorded routing replayed)
    cols = ["layer", "E", "k", "top-1", "agree", "MaxVio own→what-if" if whatif else "MaxVio"]
    if whatif:
        cols.append("kept")
    if settings["capacity_factor"] is not None:
        cols.append(f"drop@{settings['capacity_factor']:g}")
    if settings["noise"] is not None:
        cols.append("flip")
    if settings["ep_size"] is not None:
        cols.append("EP bal")
    if settings.get("nodes"):
        cols.append("node bal")
    for c in cols:
        t.add_column(c, justify="right", no_wrap=True)
    for r in layers:
        k = str(r["top_k"]) if r["whatif_top_k"] == r["top_k"] else f"{r['top_k']}→{r['whatif_top_k']}"
        row = [
            str(r["layer"]),
            str(r["num_experts"]),
            k,
            _pct(r["top1_agreement"]),
            _pct(r["topk_agreement"]),
            f"{_f(r.get('max_vio_before'))}→{_f(r['stats']['max_vio'])}"
            if whatif
            else _f(r["stats"]["max_vio"]),
        ]
        if whatif:
            row.append(_pct(r.get("whatif_topk_overlap")))
        if "capacity" in r:
            row.append(_pct(r["capacity"]["drop_rate"]))
        if "noise" in r:
            row.append(_pct(r["noise"]["flip_share"]))
        if "ep" in r:
            ep = r["ep"]
            row.append(f"{_f(ep['balancedness_before'])}→{_f(ep['balancedness_after'])}")
            if "node_balancedness_after" in ep:
                row.append(f"{_f(ep['node_balancedness_before'])}→{_f(ep['node_balancedness_after'])}")
        t.add_row(*row)
    return t


def render_replay(doc: dict[str, Any], console: Console) -> None:
    text, style = headline(doc)
    console.print(Text(text, style=style))
    console.print(layer_table(doc))
    s = doc["summary"]
    settings = doc["meta"]["settings"]
    if settings.get("capacity_factor") is not None:
        floor = settings.get("min_capacity") or 0
        console.print(
            f"drop@{settings['capacity_factor']:g}: share of assignments over capacity"
            + (f" (at least {floor} per expert and group)" if floor else "")
            + ", the same under every drop policy; where they drop "
            + f"({settings['drop_policy']}) is in --json, capacity.drop_rate_by_position",
            style="dim",
        )
    if "balancedness_after_mean" in s:
        settings = doc["meta"]["settings"]
        console.print(
            f"EP {settings['ep_size']} ranks, placement {settings['placement']}: balancedness mean "
            f"{_f(s['balancedness_before_mean'], 3)} (contiguous) → {_f(s['balancedness_after_mean'], 3)}"
        )
        if s.get("busiest_rank_inflation_before_max") is not None:
            volume = s.get("a2a_bytes_per_token")
            console.print(
                f"busiest rank: up to {_f(s['busiest_rank_inflation_before_max'], 2)}× a balanced step's "
                f"time (contiguous) → {_f(s['busiest_rank_inflation_after_max'], 2)}×; all-to-all "
                + ("—" if volume is None else f"{volume / 1e3:,.1f} kB")
                + " a token over all layers (dispatch + combine, bf16)"
            )
    plan = s.get("replica_plan")
    if plan is not None:
        verdict = "reached" if plan["reached"] else "NOT reached (best tried)"
        console.print(
            f"target balancedness {plan['target_balancedness']}: {verdict} with {plan['replicas']} replicas "
            f"(lowest layer {_f(plan['balancedness_min'], 3)})"
        )
    from moediag.replay import skip_lines

    for line in skip_lines(doc["skipped"]) if doc["skipped"] else []:
        console.print(f"skipped {line}")
