"""Figures of routing choices: co-activation, the top-k margin, capacity drop rates, per-step trends and
the experts a decode batch touches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moediag.render.plots.axes import MAX_LINES, band_or_lines, layer_ticks
from moediag.render.plots.data import layer_rows, worst_layer
from moediag.render.plots.kinds import PlotUnavailableError
from moediag.render.plots.style import OKABE_ITO, SEQUENTIAL_CMAP, new_figure, rc

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from moediag.analysis import TraceAnalysis

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
        layer = worst_layer(with_pairs)
    else:
        layer_rows(analysis, layer)
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
    with rc():
        size = min(10.0, 3.5 + mat.shape[0] * 0.025)
        fig = new_figure(size + 1.4, size)
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

    rows = layer_rows(analysis, layer)
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
    with rc():
        if len(hists) <= MAX_LINES:
            fig = new_figure(8.0, 3.6)
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
            fig = new_figure(10.0, min(12.0, 1.6 + 0.16 * len(hists)))
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
            layer_ticks(ax, [lay for lay, _ in hists])
            ax.set_xlabel("top-k boundary margin s₍k₎ − s₍k+1₎ (router score units)")
            ax.set_ylabel("MoE layer")
            cb = fig.colorbar(im, ax=ax, shrink=0.9)
            cb.set_label(f"tokens per bin (%, log scale; bin width {width:g})")
        ax.set_title("Top-k boundary margin (small = routing flips under small noise)")
    return fig


def drop_rate(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Share of assignments dropped at each capacity factor (the same under every drop policy)."""
    rows = [r for r in layer_rows(analysis, layer) if r.get("drop_rate")]
    if not rows:
        raise PlotUnavailableError("drop rates need per-token routing (the trace holds only counts)")
    # Both policies drop the same number of assignments (sum_i max(0, c_i - C) per group; docs/metrics.md):
    # they differ in which tokens drop, so the rate is one curve per layer (the position policy's).
    with rc():
        fig = new_figure(8.0, 4.0)
        ax = fig.add_subplot()
        cfs = list(rows[0]["drop_rate_total"])
        series = []
        for r in rows:
            vals = [r["drop_rate_total"].get(cf) for cf in cfs]
            if any(v is not None for v in vals):
                series.append((int(r["layer"]), [None if v is None else 100 * v for v in vals]))
        band_or_lines(ax, [float(c) for c in cfs], series, "-", label="")
        ax.set_xticks([float(c) for c in cfs], [f"{float(c):g}" for c in cfs])
        ax.set_xlabel("capacity factor (capacity = CF × k × tokens ÷ E per group)")
        ax.set_ylabel("assignments dropped (%)")
        ax.set_title("Capacity drop rate (the same under every drop policy; only which tokens drop differs)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, ncol=2)
    return fig


def step_trends(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """MaxVio and CV per step (``tokens.step`` or the steps of count-only dumps)."""
    rows = layer_rows(analysis, layer)
    per_layer = []
    for r in rows:
        steps = analysis.stats.layers[int(r["layer"])].steps.compute()
        if steps and len(steps["steps"]) >= 1:
            per_layer.append((int(r["layer"]), steps))
    if not per_layer:
        raise PlotUnavailableError("per-step trends need tokens.step or per-step expert_counts in the trace")
    all_steps = sorted({s for _, st in per_layer for s in st["steps"]})
    with rc():
        fig = new_figure(8.0, 5.0)
        axes = fig.subplots(2, 1, sharex=True)
        for ax, key, label in (
            (axes[0], "max_vio", "MaxVio (max ÷ mean − 1)"),
            (axes[1], "cv", "CV (std ÷ mean, population)"),
        ):
            series = []
            for lay, st in per_layer:
                lookup = dict(zip(st["steps"], st[key], strict=False))
                series.append((lay, [lookup.get(s) for s in all_steps]))
            band_or_lines(ax, [float(s) for s in all_steps], series)
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


def experts_touched(analysis: TraceAnalysis, layer: int | None = None) -> Figure:
    """Touched share of a layer's experts against the decode batch size B, beside uniform routing."""
    rows = [r for r in layer_rows(analysis, layer) if r.get("experts_touched")]
    if not rows:
        raise PlotUnavailableError("experts touched need per-token routing (the trace holds only counts)")
    sizes = [int(b) for b in rows[0]["experts_touched"]]
    with rc():
        fig = new_figure(8.0, 4.0)
        ax = fig.add_subplot()
        series = [
            (int(r["layer"]), [_pct_or_none(r["experts_touched"][str(b)]["share"]) for b in sizes])
            for r in rows
        ]
        band_or_lines(ax, [float(b) for b in sizes], series)
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
