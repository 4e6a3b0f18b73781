"""Figures of the load: the layer x expert heatmap, the imbalance bars per layer, and the load histograms
(one layer, or small multiples of every layer)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from moediag.render.plots.axes import layer_ticks
from moediag.render.plots.data import layer_rows, load_ratio
from moediag.render.plots.style import DIVERGING_CMAP, OKABE_ITO, new_figure, rc

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from moediag.analysis import TraceAnalysis

#: load relative to balanced (share * E) is clipped to [1/LOAD_RATIO_CLIP, LOAD_RATIO_CLIP] on the colour bar
LOAD_RATIO_CLIP = 8.0

#: dead experts in the diverging load heatmap (its middle, balanced, is near-white)
DEAD_COLOUR = "black"


def load_heatmap(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Layer x expert heatmap of load / balanced load on a symmetric log scale; black cells are dead."""
    import numpy as np
    from matplotlib.colors import LogNorm

    rows = layer_rows(analysis, layer)
    e = max(len(r["load"]) for r in rows)
    data = np.full((len(rows), e), np.nan)
    for i, r in enumerate(rows):
        ratio = load_ratio(r["load"])
        data[i, : len(ratio)] = ratio
    data = np.where(data > 0, data, np.nan)  # dead experts (0) and padding show as "bad" (black)
    layers = [int(r["layer"]) for r in rows]
    with rc():
        fig = new_figure(min(14.0, max(8.0, 4.0 + e * 0.05)), min(12.0, max(3.0, 1.6 + 0.16 * len(rows))))
        ax = fig.add_subplot()
        import matplotlib

        cmap = matplotlib.colormaps[DIVERGING_CMAP].with_extremes(bad=DEAD_COLOUR)
        norm = LogNorm(vmin=1 / LOAD_RATIO_CLIP, vmax=LOAD_RATIO_CLIP, clip=False)
        im = ax.imshow(
            np.clip(data, 1 / LOAD_RATIO_CLIP, LOAD_RATIO_CLIP),
            aspect="auto",
            interpolation="nearest",
            cmap=cmap,
            norm=norm,
        )
        layer_ticks(ax, layers)
        ax.set_xlabel(f"expert (0..{e - 1})")
        ax.set_ylabel("MoE layer")
        ax.set_title(f"Expert load relative to balanced (1/E = 1/{e}); black = dead (no tokens)")
        cb = fig.colorbar(im, ax=ax, extend="both", shrink=0.9)
        ticks: list[float] = [1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8]
        cb.ax.minorticks_off()
        cb.set_ticks(ticks, labels=["1/8", "1/4", "1/2", "1", "2", "4", "8"])
        cb.set_label("load ÷ balanced (share × E, log)")
    return fig


def imbalance_bars(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Three stacked bar charts per layer: MaxVio, CV and the number of dead experts."""
    rows = layer_rows(analysis, layer)
    layers = [int(r["layer"]) for r in rows]
    x = list(range(len(rows)))
    with rc():
        fig = new_figure(min(14.0, max(8.0, 4.0 + 0.18 * len(rows))), 6.0)
        axes = fig.subplots(3, 1, sharex=True)
        from moediag.analysis.verdict import threshold

        # guides at `moediag check`'s thresholds (configured, else default), so the picture and the gate agree
        config = getattr(analysis, "check_config", None)
        specs = (
            ("max_vio", "MaxVio\n(max ÷ mean − 1)", OKABE_ITO[0], threshold("max_vio", config)),
            ("cv", "CV\n(std ÷ mean)", OKABE_ITO[1], threshold("max_cv", config)),
            ("dead", "dead experts\n(count)", OKABE_ITO[3], None),
        )
        for ax, (key, label, colour, guide) in zip(axes, specs, strict=False):
            if key == "dead":
                ys: list[float] = [float(len(r["dead_experts"])) for r in rows]
            else:
                ys = [math.nan if r.get(key) is None else r[key] for r in rows]
            ax.bar(x, ys, color=colour, width=0.8)
            ax.set_ylabel(label)
            if guide:
                name = "MaxVio" if key == "max_vio" else "CV"
                ax.axhline(
                    guide,
                    color="black",
                    linestyle="--",
                    linewidth=0.8,
                    label=f"{name} {guide:g}: moediag check's limit",
                )
                ax.legend(loc="upper right", fontsize=7)
            if key == "dead":
                from matplotlib.ticker import MaxNLocator

                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_title("Load imbalance per layer (balanced: MaxVio 0, CV 0, no dead experts)")
        layer_ticks(axes[-1], layers, axis="x")
        axes[-1].set_xlabel("MoE layer")
    return fig


def load_histograms(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Load per expert, one small panel per layer (shared y); a dashed line marks the balanced load."""
    rows = layer_rows(analysis, layer)
    if len(rows) > 1:
        return _load_small_multiples(rows)
    r = rows[0]
    ratio = load_ratio(r["load"])
    e = len(ratio)
    with rc():
        fig = new_figure(8.0, 3.2)
        ax = fig.add_subplot()
        ax.bar(range(e), ratio, width=0.8, color=OKABE_ITO[0], linewidth=0)
        ax.axhline(1.0, color=OKABE_ITO[3], linestyle="--", linewidth=0.8)
        dead = len(r["dead_experts"])
        ax.set_title(f"Layer {r['layer']}: load per expert ({dead} dead; dashed = balanced)")
        ax.set_xlabel(f"expert (0..{e - 1})")
        ax.set_ylabel("load ÷ balanced load")
        ax.set_xlim(-0.6, e - 0.4)
        ax.set_ylim(0, max(1.5, max(ratio, default=0.0) * 1.05))
    return fig


def _load_small_multiples(rows: list[dict[str, Any]]) -> Figure:
    """All panels in one axes, each a block of data coordinates: one polygon collection for the bars and
    one line collection each for frames, grid and balanced lines, so 61 x 256 draws in a fraction of a
    second (an axes per panel, with its ticks, costs seconds). Panel (i, j) spans x in
    [j * pitch_x, j * pitch_x + E] and y in [base_i, base_i + top]; tick labels are plain text."""
    import numpy as np
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import offset_copy

    n = len(rows)
    ncols = min(8, n)
    nrows = math.ceil(n / ncols)
    e = max(len(r["load"]) for r in rows)
    top = max(1.5, max((max(load_ratio(r["load"]), default=0.0) for r in rows), default=1.0) * 1.05)
    pitch_x = e * 1.08
    pitch_y = top / 0.66  # the rest of each row holds the panel title and the x tick labels

    def origin(idx: int) -> tuple[float, float]:
        return (idx % ncols) * pitch_x, (nrows - 1 - idx // ncols) * pitch_y

    yticks = [float(v) for v in MaxNLocator(nbins=3).tick_values(0, top) if 0 <= v <= top]
    xticks = [int(v) for v in MaxNLocator(nbins=4, integer=True).tick_values(0, e - 1) if 0 <= v <= e - 1]
    bars, frames, grid, balanced, xmarks = [], [], [], [], []
    for idx, r in enumerate(rows):
        x0, y0 = origin(idx)
        ratio = np.minimum(np.asarray(load_ratio(r["load"]), dtype=float), top)
        lefts = x0 + np.arange(len(ratio), dtype=float) + 0.1  # a gap of 0.2 of a bar between bars
        rects = np.empty((len(ratio), 4, 2))
        rects[:, :, 0] = np.column_stack([lefts, lefts + 0.8, lefts + 0.8, lefts])
        rects[:, :, 1] = np.column_stack(
            [np.full_like(ratio, y0), np.full_like(ratio, y0), y0 + ratio, y0 + ratio]
        )
        bars.extend(rects[ratio > 0])
        frames.append([(x0, y0), (x0 + e, y0), (x0 + e, y0 + top), (x0, y0 + top)])
        grid += [[(x0, y0 + v), (x0 + e, y0 + v)] for v in yticks if 0 < v < top]
        balanced.append([(x0, y0 + 1.0), (x0 + e, y0 + 1.0)])
        if idx + ncols >= n:  # the lowest panel of its column: x tick marks
            xmarks += [[(x0 + v + 0.5, y0), (x0 + v + 0.5, y0 - 0.04 * top)] for v in xticks]
    with rc():
        height = max(2.8, 0.9 + 1.2 * nrows)  # room for the y label when there are few rows
        fig = Figure(figsize=(min(16.0, 2.0 * ncols), height))
        ax = fig.add_axes((0.06, 0.55 / height, 0.93, 1 - 1.35 / height))
        ax.add_collection(LineCollection(grid, colors="0.85", linewidths=0.5))
        ax.add_collection(PolyCollection(bars, facecolors=OKABE_ITO[0], edgecolors="none", linewidths=0))
        ax.add_collection(LineCollection(balanced, colors=OKABE_ITO[3], linestyles="--", linewidths=0.8))
        ax.add_collection(PolyCollection(frames, facecolors="none", edgecolors="black", linewidths=0.6))
        ax.add_collection(LineCollection(xmarks, colors="black", linewidths=0.6))
        ax.set_xlim(-0.02 * e, (ncols - 1) * pitch_x + e * 1.01)
        ax.set_ylim(-0.12 * pitch_y, (nrows - 1) * pitch_y + top * 1.02)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        above = offset_copy(ax.transData, fig=fig, y=2, units="points")
        left = offset_copy(ax.transData, fig=fig, x=-2, units="points")
        below = offset_copy(ax.transData, fig=fig, y=-3, units="points")
        for idx, r in enumerate(rows):
            x0, y0 = origin(idx)
            dead = r["dead_experts"]
            title = f"layer {r['layer']}" + (f" ({len(dead)} dead)" if dead else "")
            ax.text(x0 + e / 2, y0 + top, title, transform=above, ha="center", va="bottom", fontsize=8)
            if idx % ncols == 0:
                for v in yticks:
                    ax.text(x0, y0 + v, f"{v:g}", transform=left, ha="right", va="center", fontsize=6)
            if idx + ncols >= n:
                for v in xticks:
                    ax.text(x0 + v + 0.5, y0, str(v), transform=below, ha="center", va="top", fontsize=6)
        fig.suptitle("Load per expert, one panel per layer (dashed line = balanced load)")
        fig.supxlabel("expert")
        fig.supylabel("load ÷ balanced (share × E)")
    return fig
