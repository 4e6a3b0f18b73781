"""Figures of a trace analysis (and the report's checkpoint and compare figures), as matplotlib ``Figure``s.

matplotlib is imported lazily, inside the functions that draw (Agg backend, no pyplot state): importing
this package costs nothing. Every figure has a title, axis labels with units, and colour-blind-safe
colours (:mod:`~moediag.render.plots.style`).

Modules: ``kinds`` (what ``--kind`` can draw, and what a trace lacks for each), ``style`` (palette, rc,
a new figure), ``data`` and ``axes`` (what figures read and the drawing helpers they share), one module per
figure family (``load``, ``routing``, ``accuracy``, ``checkpoint``, ``compare``), ``registry`` (kind ->
function, :func:`make_figure`) and ``output`` (bytes and atomic files).

>>> from moediag.analysis import analyze_trace                       # doctest: +SKIP
>>> fig = make_figure(PlotKind.LOAD_HEATMAP, analyze_trace("t.safetensors"))   # doctest: +SKIP
>>> save_figure(fig, "load.png")                                      # doctest: +SKIP
"""

from moediag.render.plots.kinds import (
    DESCRIPTIONS,
    SUFFIXES,
    PlotKind,
    PlotUnavailableError,
    missing_data,
    parse_kinds,
)
from moediag.render.plots.output import figure_bytes, save_figure
from moediag.render.plots.registry import PLOTTERS, make_figure

__all__ = [
    "DESCRIPTIONS",
    "PLOTTERS",
    "SUFFIXES",
    "PlotKind",
    "PlotUnavailableError",
    "figure_bytes",
    "make_figure",
    "missing_data",
    "parse_kinds",
    "save_figure",
]
