"""One layer's accumulators together, and the model-level accumulator over all layers.

``update(batch)``, ``merge(other)`` and ``compute()`` follow torchmetrics: state is sufficient statistics,
``merge`` folds in an accumulator of the tokens that come after (chunks, shards, machines).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from moediag import options
from moediag.stats.accuracy import ExpertAccuracyStats
from moediag.stats.batch import LayerBatch
from moediag.stats.capacity import CAPACITY_FACTORS, DEFAULT_GROUP_TOKENS, CapacityStats
from moediag.stats.coactivation import CoactivationStats
from moediag.stats.imbalance import cv, entropy_norm, gini, max_mean, max_vio, min_mean
from moediag.stats.load import LoadStats, StepLoadStats
from moediag.stats.paths import DEFAULT_CAPACITY, ChunkPaths, PathStats, windows
from moediag.stats.router import RouterStats
from moediag.stats.sequences import ConsecutiveStats, SeqAuxStats
from moediag.stats.specialisation import DEFAULT_VOCAB_CAPACITY, SpecialisationStats
from moediag.stats.state import Accumulator
from moediag.stats.touched import ExpertsTouchedStats


@dataclass(frozen=True)
class StatsOptions:
    """Analysis settings that change figures (recorded in the JSON ``meta``)."""

    cold_eps: float = options.default("cold_eps")
    capacity_factors: tuple[float, ...] = CAPACITY_FACTORS
    capacity_group_tokens: int = DEFAULT_GROUP_TOKENS
    #: capacity floor per expert and group (DeepSpeed's ``min_capacity``); 0 = none
    min_capacity: int = options.default("min_capacity")
    #: extra path windows ``(first, last)`` of MoE layers, inclusive (the full depth is always computed)
    path_windows: tuple[tuple[int, int], ...] = ()
    path_capacity: int = DEFAULT_CAPACITY
    vocab_capacity: int = DEFAULT_VOCAB_CAPACITY


class LayerStats(Accumulator):
    """All statistics of one MoE layer (declared state: moediag.stats.state)."""

    layer: int
    num_experts: int
    top_k: int | None
    options: StatsOptions
    load: LoadStats
    steps: StepLoadStats
    router: RouterStats
    capacity: CapacityStats
    seq_aux: SeqAuxStats
    consecutive: ConsecutiveStats
    coactivation: CoactivationStats
    accuracy: ExpertAccuracyStats
    specialisation: SpecialisationStats
    touched: ExpertsTouchedStats
    count_only: bool
    has_logits: bool
    excluded_nonfinite: int

    def __init__(
        self, layer: int, num_experts: int, top_k: int | None, options: StatsOptions | None = None
    ) -> None:
        options = options or StatsOptions()
        k = top_k or 1
        self.add_setting("layer", layer)
        self.add_setting("num_experts", num_experts)
        self.add_setting("top_k", top_k)
        self.add_setting("options", options)
        self.add_child("load", LoadStats(num_experts, options.cold_eps))
        self.add_child("steps", StepLoadStats(num_experts))
        self.add_child("router", RouterStats(num_experts, k))
        self.add_child(
            "capacity",
            CapacityStats(
                num_experts,
                k,
                options.capacity_factors,
                options.capacity_group_tokens,
                options.min_capacity,
            ),
        )
        self.add_child("seq_aux", SeqAuxStats(num_experts, k))
        self.add_child("consecutive", ConsecutiveStats(num_experts))
        self.add_child("coactivation", CoactivationStats(num_experts))
        self.add_child("accuracy", ExpertAccuracyStats(num_experts))
        self.add_child("specialisation", SpecialisationStats(num_experts, k, options.vocab_capacity))
        self.add_child("touched", ExpertsTouchedStats(num_experts))
        self.add_state("count_only", False, "or")
        self.add_state("has_logits", False, "or")
        self.add_state("excluded_nonfinite", 0)

    def update(self, batch: LayerBatch) -> None:
        if batch.logits is not None:
            self.has_logits = True
        self.load.update(batch)
        self.steps.update(batch)
        self.router.update(batch)
        self.capacity.update(batch)
        self.seq_aux.update(batch)
        self.consecutive.update(batch)
        self.coactivation.update(batch)
        self.accuracy.update(batch)
        self.specialisation.update(batch)
        self.touched.update(batch)

    def update_counts(self, counts: torch.Tensor) -> None:
        """Count-only data: ``expert_counts`` [S, E] rows."""
        self.count_only = True
        self.load.add_counts(counts.sum(0))
        self.steps.add_rows(counts, first_step=len(self.steps.by_step))

    def compute(self) -> dict[str, Any]:
        out = core_figures(
            self.layer, self.num_experts, self.top_k, self.load, self.router, self.count_only, self.has_logits
        )
        if self.count_only:
            out.update(
                {
                    "seq_aux_loss": None,
                    "drop_rate": None,
                    "consecutive_same_rate": None,
                    "consecutive_same_baseline": None,
                }
            )
        else:
            out.update(self.seq_aux.compute())
            out.update(self.capacity.compute())
            out.update(self.consecutive.compute())
        out.update(self.accuracy.compute())
        if self.count_only:
            out["specialisation"] = None
        else:
            spec = self.specialisation.compute()
            spec["consecutive_same_rate"] = out["consecutive_same_rate"]
            spec["consecutive_same_baseline"] = out["consecutive_same_baseline"]
            out["specialisation"] = spec
        out["experts_touched"] = None if self.count_only else self.touched.compute(self.top_k)
        out["excluded_nonfinite"] = self.excluded_nonfinite
        return out


def core_figures(
    layer: int,
    num_experts: int,
    top_k: int | None,
    load: LoadStats,
    router: RouterStats,
    count_only: bool,
    has_logits: bool,
) -> dict[str, Any]:
    """The figures every layer row starts with (inspect's and the live windows'): identity, tokens, source,
    load and imbalance, then the router's figures (None for count-only data, which has no router)."""
    out: dict[str, Any] = {"layer": layer, "num_experts": num_experts, "top_k": top_k}
    out["tokens"] = None if count_only else load.tokens
    out["source"] = "counts" if count_only else ("logits" if has_logits else "topk_ids")
    out.update(load.compute())
    figures = router.compute(load.counts)
    out.update({key: None for key in figures} if count_only else figures)
    return out


_IMBALANCE = {
    "max_vio": (max_vio, "max"),
    "max_mean": (max_mean, "max"),
    "min_mean": (min_mean, "min"),
    "cv": (cv, "max"),
    "gini": (gini, "max"),
    "entropy_norm": (entropy_norm, "min"),
}


class ModelStats(Accumulator):
    """Every layer's statistics plus the model-level figures (the pooled transformers aux loss)."""

    options: StatsOptions
    layers: dict[int, LayerStats]
    paths: dict[tuple[int, ...], PathStats]

    def __init__(self, options: StatsOptions | None = None) -> None:
        self.add_setting("options", options or StatsOptions())
        # layer -> its statistics, merged layer by layer (a layer on one side only is taken over)
        self.add_state("layers", {}, "each")
        #: path window (its layers) -> frequent top-1 paths over it
        self.add_state("paths", {}, "each")

    def chunk_paths(self, start: int, n: int) -> ChunkPaths:
        """A collector for one chunk's first choices; pass it to :meth:`update_paths` after every layer."""
        return ChunkPaths(start, n)

    def update_paths(self, chunk: ChunkPaths) -> None:
        for window in windows(sorted(chunk.top1), self.options.path_windows):
            if window not in self.paths:
                self.paths[window] = PathStats(list(window), self.options.path_capacity)
            self.paths[window].update(chunk)

    def layer(self, layer: int, num_experts: int, top_k: int | None) -> LayerStats:
        if layer not in self.layers:
            self.layers[layer] = LayerStats(layer, num_experts, top_k, self.options)
        return self.layers[layer]

    def hf_aux_loss(self) -> float | None:
        """transformers' ``load_balancing_loss_func`` over all layers' logits pooled along tokens
        (balanced = k): E * sum_i (H_i / N) (Q_i / N), H = softmax-top-k counts, Q = softmax sums."""
        with_logits = [s for s in self.layers.values() if s.router.tokens > 0]
        if not with_logits or len({s.num_experts for s in with_logits}) != 1:
            return None
        n = sum(s.router.tokens for s in with_logits)
        hf = sum((s.router.hf_counts for s in with_logits), torch.zeros_like(with_logits[0].router.hf_counts))
        q = sum(
            (s.router.softmax_sum for s in with_logits), torch.zeros_like(with_logits[0].router.softmax_sum)
        )
        e = with_logits[0].num_experts
        return float(e * ((hf.double() / n) * (q / n)).sum())

    def compute(self) -> dict[str, Any]:
        layers = [self.layers[k].compute() for k in sorted(self.layers)]
        summary: dict[str, Any] = {
            "layers": len(layers),
            "tokens": max((x["tokens"] for x in layers if x["tokens"] is not None), default=None),
            "num_experts": sorted({x["num_experts"] for x in layers}),
            "top_k": sorted({x["top_k"] for x in layers if x["top_k"] is not None}),
            "hf_aux_loss": self.hf_aux_loss(),
        }
        for key in ("num_experts", "top_k"):
            if len(summary[key]) == 1:
                summary[key] = summary[key][0]
            elif not summary[key]:
                summary[key] = None
        figures = dict.fromkeys(_IMBALANCE, None) | {
            "aux_loss": "max",
            "aux_loss_unbiased": "max",
            "seq_aux_loss": "max",
            "z_loss": "max",
        }
        for key in list(_IMBALANCE) + ["aux_loss", "aux_loss_unbiased", "seq_aux_loss", "z_loss"]:
            worst_is = _IMBALANCE[key][1] if key in _IMBALANCE else figures[key]
            vals = [(x[key], x["layer"]) for x in layers if x.get(key) is not None]
            if not vals:
                summary[key] = {"mean": None, "worst": None, "worst_layer": None}
                continue
            # figures come from float32 scores whose last bits can differ with the chunk shape (vectorised
            # exp): values equal to 6 significant digits are a tie, given to the lowest layer, so the
            # worst layer does not depend on chunking
            sign = 1 if worst_is == "max" else -1
            pick = max(vals, key=lambda t: (sign * float(f"{t[0]:.6g}"), -t[1]))
            summary[key] = {
                "mean": sum(v for v, _ in vals) / len(vals),
                "worst": pick[0],
                "worst_layer": pick[1],
            }
        summary["dead_experts"] = sum(len(x["dead_experts"]) for x in layers)
        summary["cold_experts"] = sum(len(x["cold_experts"]) for x in layers)
        summary["excluded_nonfinite"] = sum(x["excluded_nonfinite"] for x in layers)
        accs = [(x["accuracy"], x["layer"]) for x in layers if x.get("accuracy") is not None]
        summary["accuracy"] = accs[0][0] if accs else None
        flagged = [r for x in layers for r in (x.get("expert_accuracy") or []) if r["below_overall"]]
        summary["below_overall_experts"] = len(flagged) if accs else None
        summary["experts_touched"] = touched_summary(layers)
        windows_by_depth = sorted(self.paths, key=lambda w: (-len(w), w))
        summary["paths"] = [self.paths[w].compute() for w in windows_by_depth] or None
        return {"summary": summary, "layers": layers}


def touched_summary(layers: list[dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """``summary.experts_touched``: per B, the mean over layers of the touched share and of the
    uniform-routing share (moediag.stats.touched), and the fewest batches any layer counted."""
    rows = [x["experts_touched"] for x in layers if x.get("experts_touched")]
    if not rows:
        return None
    out: dict[str, dict[str, Any]] = {}
    for b in rows[0]:
        shares = [r[b]["share"] for r in rows if r[b]["share"] is not None]
        uniform = [r[b]["uniform"] for r in rows if r[b]["uniform"] is not None]
        out[b] = {
            "share": sum(shares) / len(shares) if shares else None,
            "uniform": sum(uniform) / len(uniform) if uniform else None,
            "batches": min(r[b]["batches"] for r in rows),
        }
    return out
