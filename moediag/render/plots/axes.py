"""Drawing helpers several figures share: layer tick labels, and a few series as lines or many as a band."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes


from moediag.render.plots.style import OKABE_ITO

#: at most this many layers are drawn as separate lines; more become a median line and a min-max band
MAX_LINES = 8


def layer_ticks(ax: Axes, layers: Sequence[int], axis: str = "y") -> None:
    n = len(layers)
    step = max(1, math.ceil(n / 24))
    pos = list(range(0, n, step))
    labels = [str(layers[i]) for i in pos]
    if axis == "y":
        ax.set_yticks(pos, labels)
    else:
        ax.set_xticks(pos, labels)


def band_or_lines(
    ax: Axes,
    x: Sequence[float],
    series: list[tuple[int, list[float | None]]],
    style: str = "-",
    label: str = "",
) -> None:
    """Up to MAX_LINES series as lines labelled by layer; more as median line plus min-max band."""
    if not series:
        return
    if len(series) <= MAX_LINES:
        for i, (layer, ys) in enumerate(series):
            ax.plot(
                x,
                [math.nan if y is None else y for y in ys],
                style,
                color=OKABE_ITO[i % len(OKABE_ITO)],
                marker="o",
                markersize=3,
                label=f"{label}layer {layer}",
            )
        return
    cols = list(zip(*[[math.nan if y is None else y for y in ys] for _, ys in series], strict=False))
    lo = [min((v for v in c if not math.isnan(v)), default=math.nan) for c in cols]
    hi = [max((v for v in c if not math.isnan(v)), default=math.nan) for c in cols]
    med = []
    for c in cols:
        vals = sorted(v for v in c if not math.isnan(v))
        med.append(vals[len(vals) // 2] if vals else math.nan)
    colour = OKABE_ITO[0] if style == "-" else OKABE_ITO[3]
    ax.fill_between(x, lo, hi, color=colour, alpha=0.25, label=f"{label}min-max over {len(series)} layers")
    ax.plot(x, med, style, color=colour, marker="o", markersize=3, label=f"{label}median layer")
