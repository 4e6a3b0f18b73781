"""Figures of a checkpoint result for the report: per-expert vectors as bars (router norms, biases) and
matrices as heatmaps (expert redundancy, router row similarity)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from moediag.render.plots.style import OKABE_ITO, SEQUENTIAL_CMAP, new_figure, rc

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def vector_figure(title: str, label: str, per_layer: list[tuple[int, list[float]]]) -> Figure:
    """One bar panel per layer (the first 8): a per-expert value such as the router row norm."""
    with rc():
        fig = new_figure(10.0, 1.0 + 1.3 * min(len(per_layer), 8))
        axes = fig.subplots(min(len(per_layer), 8), 1, squeeze=False)
        for ax, (layer, vals) in zip(axes[:, 0], per_layer[:8], strict=False):
            ax.bar(range(len(vals)), vals, color=OKABE_ITO[0], width=0.9)
            ax.set_ylabel(f"layer {layer}", fontsize=8)
        axes[0, 0].set_title(title + (f" (first 8 of {len(per_layer)} layers)" if len(per_layer) > 8 else ""))
        axes[-1, 0].set_xlabel("expert")
        fig.supylabel(label)
    return fig


def matrix_figure(title: str, label: str, layer: int, mat: list[list[float]]) -> Figure:
    """An expert x expert heatmap of one layer (cosine similarities: -1..1, or 0..1 when none is negative)."""
    import matplotlib

    with rc():
        fig = new_figure(7.0, 6.0)
        ax = fig.add_subplot()
        im = ax.imshow(
            mat,
            cmap=matplotlib.colormaps[SEQUENTIAL_CMAP],
            interpolation="nearest",
            vmin=-1 if min(min(r) for r in mat) < 0 else 0,
            vmax=1,
        )
        ax.set_title(f"{title}, layer {layer}")
        ax.set_xlabel("expert")
        ax.set_ylabel("expert")
        fig.colorbar(im, ax=ax, shrink=0.85).set_label(label)
    return fig
