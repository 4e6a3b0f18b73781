"""What ``moediag plot --kind`` can draw: the kinds, one line about each, and what a trace lacks for one.

Nothing here draws or imports matplotlib: ``moediag plot --help`` and the data checks made before an
analysis read this module alone.
"""

from __future__ import annotations

import enum
from typing import Any

from moediag.errors import UsageError

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
