"""The figure of ``moediag compare A B --html``: load shift (Jensen-Shannon divergence) per layer, and the
top-k overlap on the same tokens against its random baseline k/E."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from moediag.render.plots.style import OKABE_ITO, new_figure, rc

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def compare_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Per-layer JS divergence bars (top) and top-k overlap against its baseline k/E (bottom)."""
    layers = [int(r["layer"]) for r in rows]
    x = list(range(len(rows)))
    js = [r.get("load_js_divergence") for r in rows]
    ov = [r.get("topk_overlap") for r in rows]
    base = [r.get("topk_overlap_baseline") for r in rows]
    with rc():
        fig = new_figure(9.0, 5.0)
        top, bottom = fig.subplots(2, 1, sharex=True)
        top.bar(x, [0.0 if v is None else v for v in js], color=OKABE_ITO[0], width=0.8)
        top.set_title("Load shift between A and B per layer (Jensen-Shannon divergence)")
        top.set_ylabel("JS divergence (bits, 0-1)")
        top.set_ylim(0, max([0.01, *(v for v in js if v is not None)]) * 1.15)
        if any(v is not None for v in ov):
            bottom.plot(
                x,
                [float("nan") if v is None else v for v in ov],
                marker="o",
                color=OKABE_ITO[1],
                label="top-k overlap |A∩B|/k",
            )
        bottom.plot(
            x,
            [float("nan") if v is None else v for v in base],
            linestyle="--",
            color=OKABE_ITO[7],
            label="random baseline k/E",
        )
        bottom.set_ylim(0, 1.05)
        bottom.set_title("Router saturation: top-k overlap on the same tokens against k/E")
        bottom.set_ylabel("overlap (share of k)")
        bottom.set_xlabel("MoE layer (model index)")
        bottom.legend(loc="lower left", fontsize=8)
        step = max(1, -(-len(x) // 24))
        bottom.set_xticks(x[::step], [str(v) for v in layers[::step]])
    return fig
