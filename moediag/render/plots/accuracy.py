"""Figures of accuracy (``tokens.correct``): per expert, and per routing path with Wilson intervals."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from moediag.render.plots.axes import layer_ticks
from moediag.render.plots.data import accuracy_counts, layer_rows, path_rows, wilson
from moediag.render.plots.kinds import PlotUnavailableError
from moediag.render.plots.style import OKABE_ITO, SEQUENTIAL_CMAP, new_figure, rc

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from moediag.analysis import TraceAnalysis


def expert_accuracy(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Accuracy per (layer, expert): a heatmap over layers, or bars with Wilson intervals for one layer."""
    import numpy as np

    rows = [
        (r, c)
        for r in layer_rows(analysis, layer)
        if (c := accuracy_counts(r.get("expert_accuracy"))) is not None
    ]
    if not rows:
        raise PlotUnavailableError("per-expert accuracy needs tokens.correct in the trace")
    with rc():
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
            fig = new_figure(min(14.0, 4.0 + 0.08 * e), 3.6)
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
        fig = new_figure(min(14.0, width), min(12.0, height))
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
        layer_ticks(ax, [int(r["layer"]) for r, _ in rows])
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
    return f"layer {layer} top-k set", path_rows(layer_rows(analysis, layer)[0].get("paths")), None


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
    with rc():
        fig = new_figure(8.0, 1.2 + 0.28 * len(shown))
        ax = fig.add_subplot()
        acc = [100 * p["hits"] / p["total"] for p in shown]
        ci = [wilson(p["hits"], p["total"]) for p in shown]
        # vermillion marks the analysis' own flag (below_overall), as the tables do: no judgement here
        colours = [OKABE_ITO[3] if p.get("below") else OKABE_ITO[0] for p in shown]
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
