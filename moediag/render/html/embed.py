"""Figures into the page: inline SVG (ids prefixed so figures never collide), or base64 PNG for big
heatmaps, or a placeholder when figures are off (golden tests)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from moediag.render.html.markup import e
from moediag.render.plots.axes import MAX_LINES
from moediag.render.plots.kinds import DESCRIPTIONS, PlotKind, PlotUnavailableError
from moediag.render.plots.output import figure_bytes
from moediag.render.plots.registry import make_figure

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from moediag.analysis import TraceAnalysis

#: a heatmap with more cells than this (or small multiples with more panels) is embedded as PNG: an SVG
#: of 61 x 256 rectangles is larger and slower to paint than one image
PNG_CELLS = 4096
PNG_PANELS = 16
PNG_DPI = 110


def big_heatmap(cells: int) -> bool:
    """Whether a heatmap of this many cells goes in as PNG rather than SVG."""
    return cells > PNG_CELLS


_XMLNS = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
_ID = re.compile(r'id="([^"]+)"')


def inline_svg(svg: str, prefix: str) -> str:
    """Matplotlib's SVG made fit to inline in HTML: no XML prolog, DOCTYPE, namespace URLs or RDF metadata,
    and element ids prefixed so several figures in one page never collide."""
    svg = svg[svg.index("<svg") :]
    svg = _METADATA.sub("", svg)
    svg = _XMLNS.sub("", svg, count=3)
    ids = set(_ID.findall(svg))
    if ids:

        def swap(m: re.Match[str]) -> str:
            head, name = m.group(1), m.group(2)
            return f"{head}{prefix}{name}" if name in ids else m.group(0)

        svg = re.sub(r'(id="|href="#|url\(#)([^")]+)', swap, svg)
    return svg.replace("xlink:href=", "href=")


def prefer_png(kind: PlotKind, analysis: TraceAnalysis) -> bool:
    rows = analysis.layers
    e = max((len(r["load"]) for r in rows), default=0)
    if kind in (PlotKind.LOAD_HEATMAP, PlotKind.EXPERT_ACCURACY):
        return len(rows) * e > PNG_CELLS
    if kind == PlotKind.COACTIVATION:
        return e * e > PNG_CELLS
    if kind == PlotKind.LOAD_HISTOGRAMS:
        return len(rows) > PNG_PANELS
    return kind == PlotKind.MARGIN and len(rows) > MAX_LINES


class FigureEmbedder:
    """Turns figures into ``<figure>`` HTML; ``enabled=False`` puts a placeholder instead (golden tests)."""

    def __init__(self, enabled: bool = True, progress: Callable[[int], None] | None = None) -> None:
        self.enabled = enabled
        self.count = 0
        self.progress = progress  # called with 1 after each figure is drawn (the slow part of a report)

    def __call__(self, make: Callable[[], Figure], caption: str, alt: str, png: bool = False) -> str:
        self.count += 1
        cap = f"<figcaption>{caption}</figcaption>"
        if not self.enabled:
            return f'<figure class="fig"><div class="placeholder">[figure: {e(alt)}]</div>{cap}</figure>'
        fig = make()
        if png:
            data = base64.b64encode(figure_bytes(fig, "png", PNG_DPI)).decode("ascii")
            body = f'<img src="data:image/png;base64,{data}" alt="{e(alt)}">'
        else:
            svg = figure_bytes(fig, "svg").decode("utf-8")
            body = inline_svg(svg, f"f{self.count}-").replace(
                "<svg", f'<svg role="img" aria-label="{e(alt)}"', 1
            )
        if self.progress is not None:
            self.progress(1)
        return f'<figure class="fig">{body}{cap}</figure>'


def try_figure(
    embed: FigureEmbedder, kind: PlotKind, analysis: TraceAnalysis, layer: int | None, caption: str
) -> tuple[str | None, str | None]:
    """(figure html, None), or (None, the reason the trace cannot give this figure)."""
    try:
        fig = make_figure(kind, analysis, layer)  # fails fast when data is absent
    except PlotUnavailableError as exc:
        return None, exc.message
    return embed(lambda: fig, caption, DESCRIPTIONS[kind], prefer_png(kind, analysis)), None
