"""The look every figure shares, and matplotlib imported lazily (Agg backend, no pyplot state).

Colour-blind-safe colours: the Okabe-Ito palette for lines and bars, ``cividis`` for sequential heatmaps,
``RdBu_r`` (a ColorBrewer diverging map that survives the common colour-vision deficiencies) for load
relative to 1/E. :func:`rc` is the style a figure is drawn and saved under; :func:`new_figure` a figure
outside pyplot.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


#: Okabe & Ito (2008), "Color Universal Design": distinguishable under every common colour-vision deficiency
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SEQUENTIAL_CMAP = "cividis"
DIVERGING_CMAP = "RdBu_r"


def rc() -> Any:
    """The style every figure is drawn and saved under (imports matplotlib, Agg unless pyplot is in use)."""
    import matplotlib
    from cycler import cycler

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    return matplotlib.rc_context(
        {
            "font.size": 9.0,
            "axes.titlesize": 10.0,
            "axes.labelsize": 9.0,
            "svg.fonttype": "none",  # text stays text: small, searchable, no embedded glyphs
            "svg.hashsalt": "moediag",  # stable element ids: identical bytes for identical input
            "axes.prop_cycle": cycler(color=list(OKABE_ITO)),
        }
    )


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")
