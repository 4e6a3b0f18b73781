"""Every :class:`~moediag.render.plots.kinds.PlotKind` mapped to the function that draws it, and
:func:`make_figure`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from moediag.errors import UsageError
from moediag.render.plots.accuracy import expert_accuracy, path_accuracy
from moediag.render.plots.kinds import PlotKind
from moediag.render.plots.load import imbalance_bars, load_heatmap, load_histograms
from moediag.render.plots.routing import (
    coactivation_heatmap,
    drop_rate,
    experts_touched,
    margin_distribution,
    step_trends,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from moediag.analysis import TraceAnalysis

Plotter = Callable[["TraceAnalysis", "int | None"], "Figure"]

#: exhaustive: every PlotKind has exactly one function (tests loop over the enum)
PLOTTERS: dict[PlotKind, Plotter] = {
    PlotKind.LOAD_HEATMAP: load_heatmap,
    PlotKind.IMBALANCE: imbalance_bars,
    PlotKind.LOAD_HISTOGRAMS: load_histograms,
    PlotKind.COACTIVATION: coactivation_heatmap,
    PlotKind.MARGIN: margin_distribution,
    PlotKind.DROP_RATE: drop_rate,
    PlotKind.STEPS: step_trends,
    PlotKind.EXPERT_ACCURACY: expert_accuracy,
    PlotKind.PATH_ACCURACY: path_accuracy,
    PlotKind.EXPERTS_TOUCHED: experts_touched,
}


def make_figure(kind: PlotKind | str, analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """The figure of ``kind``; raises :class:`PlotUnavailableError` when the trace lacks its data."""
    try:
        kind = PlotKind(kind)
    except ValueError:
        raise UsageError(
            f"unknown plot kind {kind!r} (kinds: {', '.join(k.value for k in PlotKind)})"
        ) from None
    return PLOTTERS[kind](analysis, layer)
