"""Two checkpoints: router-row cosine per expert and the selection-bias change per expert."""

from __future__ import annotations

import os
from typing import Any

import torch

from moediag.compare.result import Comparison
from moediag.compare.traces import UNRELATED_COSINE
from moediag.errors import InvalidInputError, UsageError


def _routers(path: str | os.PathLike[str]) -> tuple[Any, dict[tuple[str, int], Any]]:
    from moediag.checkpoint.config import normalise_config
    from moediag.checkpoint.inventory import open_inventory
    from moediag.checkpoint.layouts import detect_layout

    inv = open_inventory(path)
    layout = detect_layout(inv, normalise_config(inv.config))
    return inv, {(blk.stack, blk.layer): blk for blk in layout.blocks if blk.router is not None}


def compare_checkpoints(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> Comparison:
    """Router-row cosine and selection-bias change per expert, per MoE layer present in both."""
    inv_a, ra = _routers(a)
    inv_b, rb = _routers(b)
    notes: list[str] = []
    common = sorted(set(ra) & set(rb), key=lambda x: (x[0], x[1]))
    if not common:
        raise UsageError(f"{a} and {b} have no MoE router in common")
    if set(ra) != set(rb):
        notes.append(f"router sets differ; comparing the {len(common)} common layer(s)")
    rows: list[dict[str, Any]] = []
    for key in common:
        blk_a, blk_b = ra[key], rb[key]
        wa = inv_a.read(blk_a.router).double()
        wb = inv_b.read(blk_b.router).double()
        if wa.shape != wb.shape:
            raise InvalidInputError(
                f"layer {key[1]}: router {blk_a.router} is {list(wa.shape)} in {a} "
                f"but {list(wb.shape)} in {b}",
                b,
            )
        cos = torch.nn.functional.cosine_similarity(wa, wb, dim=1)
        bias_delta = None
        if blk_a.selection_bias and blk_b.selection_bias:
            bias_delta = inv_b.read(blk_b.selection_bias).double() - inv_a.read(blk_a.selection_bias).double()
        rows.append(
            {
                "layer": key[1],
                "stack": key[0],
                "num_experts": int(wa.shape[0]),
                "router_cosine": [float(x) for x in cos.tolist()],
                "router_cosine_min": float(cos.min()),
                "router_cosine_mean": float(cos.mean()),
                "router_cosine_min_expert": int(cos.argmin()),
                "selection_bias_delta": None if bias_delta is None else bias_delta.tolist(),
                "selection_bias_delta_max_abs": None if bias_delta is None else float(bias_delta.abs().max()),
                "top1_agreement": None,
                "topk_overlap": None,
                "load_js_divergence": None,
                "max_vio_delta": None,
                "cv_delta": None,
            }
        )
    cosines = [r["router_cosine_min"] for r in rows]
    mean_cosine = sum(r["router_cosine_mean"] for r in rows) / len(rows)
    if mean_cosine < UNRELATED_COSINE:
        notes.append(
            f"the routers' mean row cosine is {mean_cosine:.2f} (a fine-tune of the same base keeps rows "
            "near 1): router rows and selection biases are compared by expert id, and two separately "
            "trained models need not give the same role the same id"
        )
    summary = {
        "layers_compared": [r["layer"] for r in rows],
        "router_cosine_min": min(cosines),
        "router_cosine_mean": mean_cosine,
        "selection_bias_delta_max_abs": max(
            (
                r["selection_bias_delta_max_abs"]
                for r in rows
                if r["selection_bias_delta_max_abs"] is not None
            ),
            default=None,
        ),
    }
    return Comparison(str(a), str(b), "checkpoints", rows, summary, None, notes)
