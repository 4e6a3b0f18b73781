"""Figures of a trace analysis, one function per kind, each returning a matplotlib ``Figure``.

matplotlib is imported lazily (Agg backend, no pyplot state): importing this module costs nothing.
Every figure has a title, axis labels with units, and uses colour-blind-safe colours: the Okabe-Ito
palette for lines and bars, ``cividis`` for sequential heatmaps, ``RdBu_r`` (a ColorBrewer diverging
map that survives the common colour-vision deficiencies) on a log scale for load relative to 1/E.

>>> from moediag.analysis import analyze_trace                       # doctest: +SKIP
>>> fig = make_figure(PlotKind.LOAD_HEATMAP, analyze_trace("t.safetensors"))   # doctest: +SKIP
>>> save_figure(fig, "load.png")                                      # doctest: +SKIP
"""

from __future__ import annotations

import enum
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moediag.errors import UsageError
from moediag.io import atomic

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from moediag.analysis import TraceAnalysis

#: Okabe & Ito (2008), "Color Universal Design": distinguishable under every common colour-vision deficiency
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
SEQUENTIAL_CMAP = "cividis"
DIVERGING_CMAP = "RdBu_r"
#: load relative to balanced (share * E) is clipped to [1/LOAD_RATIO_CLIP, LOAD_RATIO_CLIP] on the colour bar
LOAD_RATIO_CLIP = 8.0
#: at most this many layers are drawn as separate lines; more become a median line and a min-max band
MAX_LINES = 8
#: dead experts in the diverging load heatmap (its middle, balanced, is near-white)
DEAD_COLOUR = "black"
SUFFIXES = (".png", ".svg")


class PlotKind(str, enum.Enum):
    """The figures ``moediag plot --kind`` draws (and the report embeds)."""

    LOAD_HEATMAP = "load-heatmap"
    IMBALANCE = "imbalance"
    LOAD_HISTOGRAMS = "load-histograms"
    COACTIVATION = "coactivation"
    MARGIN = "margin"
    DROP_RATE = "drop-rate"
    STEPS = "steps"
    EXPERT_ACCURACY = "expert-accuracy"
    PATH_ACCURACY = "path-accuracy"
    EXPERTS_TOUCHED = "experts-touched"


#: one line per kind for ``--help`` and docs/report.md
DESCRIPTIONS: dict[PlotKind, str] = {
    PlotKind.LOAD_HEATMAP: "layer x expert load relative to balanced (1/E), log colour scale",
    PlotKind.IMBALANCE: "per-layer MaxVio, CV and dead experts",
    PlotKind.LOAD_HISTOGRAMS: "load per expert, one small panel per layer (--layer: one layer)",
    PlotKind.COACTIVATION: "P(expert j chosen | expert i chosen) for one layer (default: worst MaxVio)",
    PlotKind.MARGIN: "distribution of the top-k boundary margin s_(k) - s_(k+1)",
    PlotKind.DROP_RATE: "share of assignments a capacity limit drops, against the capacity factor",
    PlotKind.STEPS: "MaxVio and CV per training step (needs tokens.step or expert_counts steps)",
    PlotKind.EXPERT_ACCURACY: "accuracy per (layer, expert) (needs tokens.correct)",
    PlotKind.PATH_ACCURACY: "accuracy of the most frequent routing paths, Wilson 95% interval",
    PlotKind.EXPERTS_TOUCHED: "share of a layer's experts a decode batch of B tokens touches, beside uniform",
}


def parse_kinds(spec: str) -> list[PlotKind]:
    """``--kind`` values: one kind, a comma list (``imbalance,margin``) or ``all``; in order, no repeats."""
    names = [x.strip().lower() for x in spec.split(",") if x.strip()]
    if not names:
        raise UsageError("--kind: name a figure, a comma list of figures, or all")
    if "all" in names:
        return list(PlotKind)
    out: list[PlotKind] = []
    for name in names:
        try:
            kind = PlotKind(name)
        except ValueError:
            raise UsageError(
                f"--kind: {name!r} is not a figure (figures: {', '.join(k.value for k in PlotKind)}, or all)"
            ) from None
        if kind not in out:
            out.append(kind)
    return out


def missing_data(kind: PlotKind, trace: Any, layer: int | None = None) -> str | None:
    """What the trace lacks for ``kind`` (read from its tensor names, before any analysis), or None.

    ``trace`` is an opened :class:`moediag.trace.Trace`; the same conditions make the figure functions
    raise :class:`PlotUnavailableError` after the analysis."""
    infos = [trace.layers[layer]] if layer is not None else list(trace.layers.values())
    per_token = [i for i in infos if not i.count_only]
    if kind in (PlotKind.COACTIVATION, PlotKind.DROP_RATE, PlotKind.EXPERTS_TOUCHED) and not per_token:
        what = {PlotKind.COACTIVATION: "co-activation", PlotKind.DROP_RATE: "drop rates"}.get(
            kind, "experts touched"
        )
        return f"{what} need per-token routing (topk_ids or router_logits); the trace holds only counts"
    if kind is PlotKind.COACTIVATION and all((i.spec.top_k or 1) < 2 for i in per_token):
        return "co-activation needs top-k of 2 or more (each token here goes to one expert)"
    if kind is PlotKind.MARGIN and not any(i.has_logits for i in infos):
        return "the margin distribution needs layers.L.router_logits; the trace has only top-k ids or counts"
    if kind is PlotKind.STEPS and "step" not in trace.token_fields and not any(i.count_only for i in infos):
        return "per-step trends need tokens.step or per-step layers.L.expert_counts"
    if kind in (PlotKind.EXPERT_ACCURACY, PlotKind.PATH_ACCURACY) and "correct" not in trace.token_fields:
        what = "per-expert" if kind is PlotKind.EXPERT_ACCURACY else "per-path"
        return f"{what} accuracy needs tokens.correct"
    return None


class PlotUnavailableError(UsageError):
    """The analysis lacks what a figure needs (no logits, no steps, no correctness...)."""


# -- matplotlib, lazily ---------------------------------------------------------------------------------


def _rc() -> Any:
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


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


# -- data helpers -----------------------------------------------------------------------------------------


def _rows(analysis: TraceAnalysis, layer: int | None) -> list[dict[str, Any]]:
    rows = analysis.layers
    if layer is None:
        return rows
    for row in rows:
        if row["layer"] == layer:
            return [row]
    raise UsageError(
        f"layer {layer} is not in the trace (layers: {', '.join(str(r['layer']) for r in rows)})"
    )


def _ratio(load: Sequence[int]) -> list[float]:
    """Load of each expert relative to the balanced load (share * E; balanced = 1)."""
    total = float(sum(load))
    e = len(load)
    return [0.0 if total == 0 else c / total * e for c in load]


def _worst_layer(rows: list[dict[str, Any]]) -> int:
    scored = [r for r in rows if r.get("max_vio") is not None]
    if not scored:
        return int(rows[0]["layer"])
    return int(max(scored, key=lambda r: r["max_vio"])["layer"])


def _layer_ticks(ax: Axes, layers: Sequence[int], axis: str = "y") -> None:
    n = len(layers)
    step = max(1, math.ceil(n / 24))
    pos = list(range(0, n, step))
    labels = [str(layers[i]) for i in pos]
    if axis == "y":
        ax.set_yticks(pos, labels)
    else:
        ax.set_xticks(pos, labels)


def wilson(hits: float, total: float, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval (95% by default) for hits/total; (0, 1) for total 0."""
    if total <= 0:
        return 0.0, 1.0
    p = hits / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def accuracy_counts(value: Any) -> tuple[list[float], list[float]] | None:
    """(hits, totals) per expert from a layer's ``expert_accuracy`` (issue 7).

    Accepted shapes: ``{"hits": [E], "totals"|"total"|"tokens": [E]}``, or a list of per-expert dicts with
    ``hits`` and ``total``/``tokens`` (optionally ``expert``). Returns None when absent or unreadable.
    """
    if not value:
        return None
    if isinstance(value, dict):
        hits = _first(value, "hits", "correct")
        totals = _first(value, "totals", "total", "tokens", "counts", "count")
        if isinstance(hits, list) and isinstance(totals, list) and len(hits) == len(totals):
            return [float(x or 0) for x in hits], [float(x or 0) for x in totals]
        return None
    if isinstance(value, list) and all(isinstance(x, dict) for x in value):
        e = max((int(x.get("expert", i)) for i, x in enumerate(value)), default=-1) + 1
        h, t = [0.0] * e, [0.0] * e
        for i, x in enumerate(value):
            j = int(x.get("expert", i))
            h[j] = float(_first(x, "hits", "correct") or 0)
            t[j] = float(_first(x, "total", "totals", "tokens", "count") or 0)
        return h, t
    return None


def path_rows(value: Any) -> list[dict[str, Any]]:
    """Normalised per-path records ``{"path": str, "hits": float, "total": float}`` from a ``paths`` value.

    Accepted: a list of dicts with ``path`` (list of expert ids or a string), ``hits`` and
    ``total``/``tokens``/``count``; or ``{"paths": [...]}``. Most frequent first.
    """
    if isinstance(value, dict):
        value = _first(value, "frequent", "paths", "top", "items")
    if isinstance(value, list) and value and all(isinstance(x, dict) and "frequent" in x for x in value):
        value = next((w["frequent"] for w in value if w.get("frequent")), [])  # windows: the first with paths
    if not isinstance(value, list):
        return []
    out = []
    for x in value:
        if not isinstance(x, dict):
            continue
        path = x.get("path", x.get("experts"))
        label = "→".join(map(str, path)) if isinstance(path, (list, tuple)) else str(path)
        hits = _first(x, "hits", "correct")
        total = _first(x, "total", "totals", "tokens", "count")
        if hits is None or not total:
            continue
        row: dict[str, Any] = {"path": label, "hits": float(hits), "total": float(total)}
        if "below_overall" in x:  # the analysis' own flag, as the tables show it
            row["below"] = bool(x["below_overall"])
        out.append(row)
    return sorted(out, key=lambda r: -r["total"])


def _band_or_lines(
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


# -- figures ---------------------------------------------------------------------------------------------


def load_heatmap(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Layer x expert heatmap of load / balanced load on a symmetric log scale; black cells are dead."""
    import numpy as np
    from matplotlib.colors import LogNorm

    rows = _rows(analysis, layer)
    e = max(len(r["load"]) for r in rows)
    data = np.full((len(rows), e), np.nan)
    for i, r in enumerate(rows):
        ratio = _ratio(r["load"])
        data[i, : len(ratio)] = ratio
    data = np.where(data > 0, data, np.nan)  # dead experts (0) and padding show as "bad" (black)
    layers = [int(r["layer"]) for r in rows]
    with _rc():
        fig = _new_figure(min(14.0, max(8.0, 4.0 + e * 0.05)), min(12.0, max(3.0, 1.6 + 0.16 * len(rows))))
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
        _layer_ticks(ax, layers)
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
    rows = _rows(analysis, layer)
    layers = [int(r["layer"]) for r in rows]
    x = list(range(len(rows)))
    with _rc():
        fig = _new_figure(min(14.0, max(8.0, 4.0 + 0.18 * len(rows))), 6.0)
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
        _layer_ticks(axes[-1], layers, axis="x")
        axes[-1].set_xlabel("MoE layer")
    return fig


def load_histograms(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Load per expert, one small panel per layer (shared y); a dashed line marks the balanced load."""
    rows = _rows(analysis, layer)
    if len(rows) > 1:
        return _load_small_multiples(rows)
    r = rows[0]
    ratio = _ratio(r["load"])
    e = len(ratio)
    with _rc():
        fig = _new_figure(8.0, 3.2)
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
    top = max(1.5, max((max(_ratio(r["load"]), default=0.0) for r in rows), default=1.0) * 1.05)
    pitch_x = e * 1.08
    pitch_y = top / 0.66  # the rest of each row holds the panel title and the x tick labels

    def origin(idx: int) -> tuple[float, float]:
        return (idx % ncols) * pitch_x, (nrows - 1 - idx // ncols) * pitch_y

    yticks = [float(v) for v in MaxNLocator(nbins=3).tick_values(0, top) if 0 <= v <= top]
    xticks = [int(v) for v in MaxNLocator(nbins=4, integer=True).tick_values(0, e - 1) if 0 <= v <= e - 1]
    bars, frames, grid, balanced, xmarks = [], [], [], [], []
    for idx, r in enumerate(rows):
        x0, y0 = origin(idx)
        ratio = np.minimum(np.asarray(_ratio(r["load"]), dtype=float), top)
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
    with _rc():
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


#: above the dense co-activation limit the heatmap shows this many experts (the most chosen)
COACTIVATION_EXPERTS = 256


def coactivation_heatmap(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Row-normalised co-activation P(j | i) of one layer (default: the layer with the worst MaxVio)."""
    import numpy as np

    rows = analysis.layers
    with_pairs = [r for r in rows if not analysis.stats.layers[r["layer"]].count_only and r.get("tokens")]
    if layer is None:
        if not with_pairs:
            raise PlotUnavailableError("co-activation needs per-token routing (the trace holds only counts)")
        layer = _worst_layer(with_pairs)
    else:
        _rows(analysis, layer)
        if all(r["layer"] != layer for r in with_pairs):
            raise PlotUnavailableError(f"layer {layer} has no per-token routing, so no co-activation")
    stats = analysis.stats.layers[layer]
    k = stats.top_k or 1
    if k < 2:
        raise PlotUnavailableError(
            f"layer {layer} routes each token to one expert (top-k 1): no co-activation"
        )
    co = stats.coactivation
    if co.dense:
        sub = co.pairs
        shown = ""
    else:  # bounded like the statistic: the COACTIVATION_EXPERTS most chosen experts, never E^2 cells
        import torch

        top = torch.topk(co.diagonal, min(COACTIVATION_EXPERTS, co.num_experts)).indices.sort().values
        sub = co.among(top)
        shown = f"; the {top.numel()} most chosen of {co.num_experts} experts"
    diag = sub.diagonal().double()
    mat = (sub.double() / diag.clamp_min(1).unsqueeze(1)).numpy().copy()
    np.fill_diagonal(mat, np.nan)
    e = co.num_experts
    used = diag.numpy() > 0
    mat[~used, :] = np.nan
    with _rc():
        size = min(10.0, 3.5 + mat.shape[0] * 0.025)
        fig = _new_figure(size + 1.4, size)
        ax = fig.add_subplot()
        import matplotlib

        cmap = matplotlib.colormaps[SEQUENTIAL_CMAP].with_extremes(bad="white")
        im = ax.imshow(
            mat,
            cmap=cmap,
            interpolation="nearest",
            vmin=0,
            vmax=float(np.nanmax(mat)) if np.isfinite(mat).any() else 1.0,
        )
        ax.set_title(
            f"Layer {layer}: co-activation (baseline (k−1)/(E−1) = {(k - 1) / max(1, e - 1):.3f}{shown})"
        )
        ax.set_xlabel("expert j (also chosen)")
        ax.set_ylabel("expert i (chosen)")
        if shown:  # label the cells with the experts' own ids
            ticks = np.linspace(0, mat.shape[0] - 1, 6).round().astype(int)
            labels = [str(int(top[t])) for t in ticks]
            ax.set_xticks(ticks, labels)
            ax.set_yticks(ticks, labels)
        cb = fig.colorbar(im, ax=ax, shrink=0.85)
        cb.set_label("P(j in top-k | i in top-k)")
    return fig


def _margin_hist(analysis: TraceAnalysis, layer: int) -> dict[str, Any] | None:
    s = analysis.stats.layers[layer]
    return None if s.count_only else s.router.margin_histogram()


def margin_distribution(analysis: TraceAnalysis, layer: int | None = None, bins: int = 50) -> Figure:
    """Distribution of the top-k boundary margin: lines for a few layers, a layer x margin heatmap for many
    (``bins`` bins)."""
    import numpy as np

    rows = _rows(analysis, layer)
    hists = [(int(r["layer"]), h) for r in rows if (h := _margin_hist(analysis, int(r["layer"]))) is not None]
    if not hists:
        raise PlotUnavailableError(
            "the margin distribution needs router logits (the trace has only top-k ids)"
        )
    raw = len(hists[0][1]["counts"])
    group = max(1, raw // bins)
    width = hists[0][1]["bin_width"] * group
    shares = []
    for _, h in hists:
        c = np.asarray(h["counts"], dtype=float)
        c = c[: (len(c) // group) * group].reshape(-1, group).sum(1)
        total = c.sum() + h["above_max"] + h["below_zero"]
        shares.append(c / total if total else c)
    used = max((int(np.nonzero(sh)[0].max()) for sh in shares if sh.any()), default=len(shares[0]) - 1)
    keep = min(len(shares[0]), max(10, used + 2))  # drop the empty tail so the mass is legible
    shares = [sh[:keep] for sh in shares]
    edges = np.arange(keep + 1) * width
    with _rc():
        if len(hists) <= MAX_LINES:
            fig = _new_figure(8.0, 3.6)
            ax = fig.add_subplot()
            for i, ((lay, _), share) in enumerate(zip(hists, shares, strict=False)):
                ax.stairs(
                    100 * share,
                    edges,
                    color=OKABE_ITO[i % len(OKABE_ITO)],
                    label=f"layer {lay}",
                    linewidth=1.4,
                )
            ax.set_xlabel("top-k boundary margin s₍k₎ − s₍k+1₎ (router score units)")
            ax.set_ylabel(f"tokens per bin (%; bin width {width:g})")
            ax.legend(fontsize=7)
        else:
            fig = _new_figure(10.0, min(12.0, 1.6 + 0.16 * len(hists)))
            ax = fig.add_subplot()
            from matplotlib.colors import LogNorm

            mat = np.asarray(shares) * 100
            mat = np.where(mat > 0, mat, np.nan)
            import matplotlib

            cmap = matplotlib.colormaps[SEQUENTIAL_CMAP].with_extremes(bad="white")
            im = ax.imshow(
                mat,
                aspect="auto",
                interpolation="nearest",
                cmap=cmap,
                norm=LogNorm(),
                extent=(0, float(edges[-1]), len(hists) - 0.5, -0.5),
            )
            _layer_ticks(ax, [lay for lay, _ in hists])
            ax.set_xlabel("top-k boundary margin s₍k₎ − s₍k+1₎ (router score units)")
            ax.set_ylabel("MoE layer")
            cb = fig.colorbar(im, ax=ax, shrink=0.9)
            cb.set_label(f"tokens per bin (%, log scale; bin width {width:g})")
        ax.set_title("Top-k boundary margin (small = routing flips under small noise)")
    return fig


def drop_rate(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Share of assignments dropped at each capacity factor (the same under every drop policy)."""
    rows = [r for r in _rows(analysis, layer) if r.get("drop_rate")]
    if not rows:
        raise PlotUnavailableError("drop rates need per-token routing (the trace holds only counts)")
    # Both policies drop the same number of assignments (sum_i max(0, c_i - C) per group; docs/metrics.md):
    # they differ in which tokens drop, so the rate is one curve per layer (the position policy's).
    with _rc():
        fig = _new_figure(8.0, 4.0)
        ax = fig.add_subplot()
        cfs = list(rows[0]["drop_rate_total"])
        series = []
        for r in rows:
            vals = [r["drop_rate_total"].get(cf) for cf in cfs]
            if any(v is not None for v in vals):
                series.append((int(r["layer"]), [None if v is None else 100 * v for v in vals]))
        _band_or_lines(ax, [float(c) for c in cfs], series, "-", label="")
        ax.set_xticks([float(c) for c in cfs], [f"{float(c):g}" for c in cfs])
        ax.set_xlabel("capacity factor (capacity = CF × k × tokens ÷ E per group)")
        ax.set_ylabel("assignments dropped (%)")
        ax.set_title("Capacity drop rate (the same under every drop policy; only which tokens drop differs)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, ncol=2)
    return fig


def step_trends(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """MaxVio and CV per step (``tokens.step`` or the steps of count-only dumps)."""
    rows = _rows(analysis, layer)
    per_layer = []
    for r in rows:
        steps = analysis.stats.layers[int(r["layer"])].steps.compute()
        if steps and len(steps["steps"]) >= 1:
            per_layer.append((int(r["layer"]), steps))
    if not per_layer:
        raise PlotUnavailableError("per-step trends need tokens.step or per-step expert_counts in the trace")
    all_steps = sorted({s for _, st in per_layer for s in st["steps"]})
    with _rc():
        fig = _new_figure(8.0, 5.0)
        axes = fig.subplots(2, 1, sharex=True)
        for ax, key, label in (
            (axes[0], "max_vio", "MaxVio (max ÷ mean − 1)"),
            (axes[1], "cv", "CV (std ÷ mean, population)"),
        ):
            series = []
            for lay, st in per_layer:
                lookup = dict(zip(st["steps"], st[key], strict=False))
                series.append((lay, [lookup.get(s) for s in all_steps]))
            _band_or_lines(ax, [float(s) for s in all_steps], series)
            ax.set_ylabel(label)
            ax.set_ylim(bottom=0)
        from matplotlib.ticker import MaxNLocator

        axes[1].xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(10, len(all_steps))))
        axes[0].legend(fontsize=7)
        axes[0].set_title("Load imbalance per step")
        counts_only = all(analysis.stats.layers[lay].count_only for lay, _ in per_layer)
        axes[1].set_xlabel(
            "row of the counts dump (the dump records no step numbers)"
            if counts_only
            else "step (tokens.step)"
        )
    return fig


def expert_accuracy(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Accuracy per (layer, expert): a heatmap over layers, or bars with Wilson intervals for one layer."""
    import numpy as np

    rows = [
        (r, c) for r in _rows(analysis, layer) if (c := accuracy_counts(r.get("expert_accuracy"))) is not None
    ]
    if not rows:
        raise PlotUnavailableError("per-expert accuracy needs tokens.correct in the trace")
    with _rc():
        if len(rows) == 1:
            r, (hits, totals) = rows[0]
            e = len(hits)
            acc = [100 * h / t if t else math.nan for h, t in zip(hits, totals, strict=False)]
            lo_hi = [wilson(h, t) for h, t in zip(hits, totals, strict=False)]
            err = np.array(
                [
                    [
                        max(0.0, a - 100 * lo) if t else 0
                        for a, (lo, _), t in zip(acc, lo_hi, totals, strict=False)
                    ],
                    [
                        max(0.0, 100 * hi - a) if t else 0
                        for a, (_, hi), t in zip(acc, lo_hi, totals, strict=False)
                    ],
                ]
            )
            overall = 100 * sum(hits) / sum(totals) if sum(totals) else math.nan
            fig = _new_figure(min(14.0, 4.0 + 0.08 * e), 3.6)
            ax = fig.add_subplot()
            ax.bar(range(e), acc, yerr=err, color=OKABE_ITO[0], ecolor="black", error_kw={"linewidth": 0.6})
            ax.axhline(
                overall,
                color=OKABE_ITO[3],
                linestyle="--",
                linewidth=1,
                label=f"layer overall {overall:.1f}%",
            )
            if e <= 32:  # each bar says how many tokens its accuracy is measured on
                ax.set_xticks(range(e), [f"{j}\nn={int(t)}" for j, t in enumerate(totals)], fontsize=6)
                ax.set_xlabel("expert (n = tokens whose first choice it is)")
            else:
                ax.set_xlabel(f"expert (0..{e - 1}; tokens per expert: inspect --json)")
            ax.set_ylabel("accuracy (%, Wilson 95% interval)")
            ax.set_ylim(0, 100)
            ax.legend(fontsize=7)
            ax.set_title(f"Layer {r['layer']}: accuracy per expert (top-1 attribution)")
            return fig
        e = max(len(c[0]) for _, c in rows)
        mat = np.full((len(rows), e), np.nan)
        for i, (_, (hits, totals)) in enumerate(rows):
            for j, (h, t) in enumerate(zip(hits, totals, strict=False)):
                if t:
                    mat[i, j] = 100 * h / t
        annotate = e * len(rows) <= 256  # small grids carry the accuracy and its sample size in each cell
        width = max(6.5, 4.0 + e * (0.6 if annotate else 0.05))
        height = max(3.0, 1.6 + len(rows) * (0.45 if annotate else 0.16))
        fig = _new_figure(min(14.0, width), min(12.0, height))
        ax = fig.add_subplot()
        import matplotlib

        cmap = matplotlib.colormaps[SEQUENTIAL_CMAP].with_extremes(bad="white")
        im = ax.imshow(mat, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=100)
        if annotate:
            for i, (_, (_, totals)) in enumerate(rows):
                for j, t in enumerate(totals):
                    if t:
                        colour = "white" if mat[i, j] < 55 else "black"
                        label = f"{mat[i, j]:.0f}%\nn={int(t)}"
                        ax.text(j, i, label, ha="center", va="center", fontsize=5.5, color=colour)
        _layer_ticks(ax, [int(r["layer"]) for r, _ in rows])
        ax.set_xlabel(f"expert (0..{e - 1})")
        ax.set_ylabel("MoE layer")
        ax.set_title(
            "Accuracy per expert (top-1; white = no tokens)"
            + ("; n = tokens" if annotate else "; sample sizes: inspect --json")
        )
        cb = fig.colorbar(im, ax=ax, shrink=0.9)
        cb.set_label("accuracy (%)")
    return fig


def _paths_for(analysis: TraceAnalysis, layer: int | None) -> tuple[str, list[dict[str, Any]], float | None]:
    """(what the paths are, their rows, the overall accuracy they are judged against). For the model's
    path windows the overall accuracy is the window's (every token), as in inspect and the report; the
    underperforming paths come first so that the figure flags what the tables flag."""
    if layer is None:
        raw = analysis.summary.get("paths")
        window = (
            next((w for w in raw if isinstance(w, dict) and w.get("frequent")), None)
            if isinstance(raw, list)
            else None
        )
        if window is not None:
            rows = path_rows(window.get("underperforming") or [])
            seen = {r["path"] for r in rows}
            rows += [r for r in path_rows(window.get("frequent")) if r["path"] not in seen]
            span = window.get("layers") or []
            where = f"layers {span[0]}–{span[-1]}" if span else "across layers"
            return f"top-1 expert per layer, {where}", rows, window.get("accuracy")
        top = path_rows(raw)
        if top:
            return "top-1 expert per layer, across layers", top, None
        for r in analysis.layers:
            got = path_rows(r.get("paths"))
            if got:
                return f"layer {r['layer']} top-k set", got, None
        return "", [], None
    return f"layer {layer} top-k set", path_rows(_rows(analysis, layer)[0].get("paths")), None


def path_accuracy(analysis: TraceAnalysis, layer: int | None = None, top: int = 20) -> Figure:
    """The most frequent routing paths: accuracy with Wilson 95% intervals against the overall accuracy."""
    from moediag.stats.paths import DEFAULT_MIN_SUPPORT

    what, paths, window_accuracy = _paths_for(analysis, layer)
    if not paths:
        has_correct = any(r.get("accuracy") is not None for r in analysis.layers)
        raise PlotUnavailableError(
            f"no routing path has the {DEFAULT_MIN_SUPPORT} tokens an accuracy needs: over many layers "
            "nearly every path is unique on a short trace (a shorter window, inspect/report --path-window, "
            "gives fewer and larger paths)"
            if has_correct
            else "per-path accuracy needs tokens.correct in the trace"
        )
    flagged = [p for p in paths if p.get("below")]
    shown = (flagged + [p for p in paths if not p.get("below")])[: max(top, len(flagged))]
    shown = sorted(shown, key=lambda p: -p["total"])[::-1]
    if window_accuracy is not None:
        overall = 100 * window_accuracy
    else:  # no window figure: the accuracy over the paths drawn
        hits = sum(p["hits"] for p in paths)
        total = sum(p["total"] for p in paths)
        overall = 100 * hits / total if total else math.nan
    with _rc():
        fig = _new_figure(8.0, 1.2 + 0.28 * len(shown))
        ax = fig.add_subplot()
        acc = [100 * p["hits"] / p["total"] for p in shown]
        ci = [wilson(p["hits"], p["total"]) for p in shown]
        below = [
            p["below"] if "below" in p else 100 * hi < overall for p, (_, hi) in zip(shown, ci, strict=True)
        ]
        colours = [OKABE_ITO[3] if b else OKABE_ITO[0] for b in below]
        xerr = [
            [max(0.0, a - 100 * lo) for a, (lo, _) in zip(acc, ci, strict=False)],  # 0 - 1e-17 at p = 0
            [max(0.0, 100 * hi - a) for a, (_, hi) in zip(acc, ci, strict=False)],
        ]
        ax.barh(range(len(shown)), acc, xerr=xerr, color=colours, ecolor="black", error_kw={"linewidth": 0.6})
        ax.set_yticks(range(len(shown)), [f"{p['path']} (n={int(p['total'])})" for p in shown], fontsize=7)
        label = (
            f"overall {overall:.1f}% (every token)"
            if window_accuracy is not None
            else f"overall {overall:.1f}%"
        )
        ax.axvline(overall, color="black", linestyle="--", linewidth=1, label=label)
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy (%, Wilson 95% interval; vermillion = wholly below overall)")
        ax.set_ylabel("routing path (experts)")
        ax.set_title(f"Accuracy of the {len(shown)} most frequent paths ({what})")
        ax.legend(fontsize=7, loc="lower right")
    return fig


def experts_touched(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Touched share of a layer's experts against the decode batch size B, beside uniform routing."""
    rows = [r for r in _rows(analysis, layer) if r.get("experts_touched")]
    if not rows:
        raise PlotUnavailableError("experts touched need per-token routing (the trace holds only counts)")
    sizes = [int(b) for b in rows[0]["experts_touched"]]
    with _rc():
        fig = _new_figure(8.0, 4.0)
        ax = fig.add_subplot()
        series = [
            (int(r["layer"]), [_pct_or_none(r["experts_touched"][str(b)]["share"]) for b in sizes])
            for r in rows
        ]
        _band_or_lines(ax, [float(b) for b in sizes], series)
        uniform = [r["experts_touched"][str(b)]["uniform"] for b in sizes for r in rows[:1]]
        if all(u is not None for u in uniform):
            ax.plot(sizes, [100 * u for u in uniform], "--", color="black", label="uniform 1 − (1 − k/E)^B")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_ylim(0, 105)
        ax.set_xlabel("decode batch B (tokens a step)")
        ax.set_ylabel("experts touched (% of the layer's)")
        ax.set_title("Experts a decode step must read, by batch size (dashed: uniform routing)")
        ax.legend(fontsize=7)
    return fig


def _pct_or_none(x: float | None) -> float | None:
    return None if x is None else 100 * x


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


def figure_bytes(fig: Figure, fmt: str, dpi: int = 110) -> bytes:
    """The figure encoded as ``png`` or ``svg`` (no timestamps or versions in the metadata)."""
    import io

    buf = io.BytesIO()
    # "moediag" marks the file as moediag output, so a later -o may replace it (moediag.io.paths)
    meta: dict[str, Any] = {"Software": "moediag"} if fmt == "png" else {"Date": None, "Creator": "moediag"}
    with _rc():
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta, facecolor="white")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` atomically as PNG or SVG, chosen by the suffix. Returns the path written."""
    target = Path(path)
    fmt = target.suffix.lower()
    if fmt not in SUFFIXES:
        raise UsageError(f"{target}: the output must end in .png or .svg")
    data = figure_bytes(fig, fmt[1:], dpi)
    write_atomic(target, data)
    return target


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``target``, then rename: a failed write leaves nothing."""
    atomic.write_atomic(target, data)
