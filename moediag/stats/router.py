"""Router behaviour and losses from logits: aux loss sums, z-loss, entropy, confidence, margins.

State is sums over valid tokens (float64) and fixed-bin histograms, so merges are exact up to float64
rounding. The aux loss needs the layer's load counts too; :class:`LayerStats` combines them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moediag.stats.batch import LayerBatch
from moediag.stats.blocked import column_sums
from moediag.stats.load import bincount
from moediag.stats.state import Accumulator

#: margin histogram: MARGIN_BINS equal bins over [0, MARGIN_MAX]; values outside go to under/over counts
MARGIN_BINS = 200
MARGIN_MAX = 1.0
#: share of tokens whose margin is below each of these is reported exactly
MARGIN_THRESHOLDS = (0.001, 0.01, 0.05, 0.1)


class RouterStats(Accumulator):
    num_experts: int
    top_k: int
    tokens: int
    prob_sum: torch.Tensor
    lse_sq_sum: float
    entropy_sum: float
    confidence_sum: float
    hf_counts: torch.Tensor
    softmax_sum: torch.Tensor
    margin_tokens: int
    margin_sum: float
    margin_hist: torch.Tensor
    margin_under: int
    margin_over: int
    margin_below: torch.Tensor

    def __init__(self, num_experts: int, top_k: int) -> None:
        self.add_setting("num_experts", num_experts)
        self.add_setting("top_k", top_k)
        self.add_state("tokens", 0)  # tokens with logits
        self.add_state("prob_sum", torch.zeros(num_experts, dtype=torch.float64))  # sum_t p_{t,i}
        self.add_state("lse_sq_sum", 0.0)  # sum_t logsumexp(z_t)^2
        self.add_state("entropy_sum", 0.0)  # sum_t H(p_t) in nats
        self.add_state("confidence_sum", 0.0)  # sum_t max_i p_{t,i}
        # softmax -> top-k counts, as transformers' aux loss routes
        self.add_state("hf_counts", torch.zeros(num_experts, dtype=torch.int64))
        self.add_state("softmax_sum", torch.zeros(num_experts, dtype=torch.float64))
        self.add_state("margin_tokens", 0)
        self.add_state("margin_sum", 0.0)
        self.add_state("margin_hist", torch.zeros(MARGIN_BINS, dtype=torch.int64))
        self.add_state("margin_under", 0)
        self.add_state("margin_over", 0)
        self.add_state("margin_below", torch.zeros(len(MARGIN_THRESHOLDS), dtype=torch.int64))

    def update(self, batch: LayerBatch) -> None:
        if batch.logits is None or batch.probs is None or len(batch) == 0:
            return
        z = batch.logits
        p = batch.probs
        self.tokens += len(batch)
        p_sum = column_sums(p)
        self.prob_sum += p_sum
        lse = (batch.lse if batch.lse is not None else torch.logsumexp(z, dim=-1)).double()
        self.lse_sq_sum += float((lse * lse).sum())
        # per-row reductions in float32 are the same whatever the chunking; the sums over rows are float64
        entropy = batch.entropy if batch.entropy is not None else -(p * p.clamp_min(1e-30).log()).sum(-1)
        self.entropy_sum += float(entropy.double().sum())
        confidence = batch.confidence if batch.confidence is not None else p.amax(-1)  # amax: ~10x max()
        self.confidence_sum += float(confidence.double().sum())
        softmax = batch.softmax if batch.softmax is not None else torch.softmax(z, dim=-1)
        self.softmax_sum += p_sum if softmax is p else column_sums(softmax)
        if batch.hf_ids is not None:
            self.hf_counts += bincount(batch.hf_ids, self.num_experts, batch.filled)
        if batch.margin is not None:
            m = batch.margin[~torch.isnan(batch.margin)].double()
            self.margin_tokens += m.numel()
            self.margin_sum += float(m.sum())
            self.margin_under += int((m < 0).sum())
            self.margin_over += int((m > MARGIN_MAX).sum())
            inside = m[(m >= 0) & (m <= MARGIN_MAX)]
            idx = (inside / MARGIN_MAX * MARGIN_BINS).long().clamp_max(MARGIN_BINS - 1)
            self.margin_hist += torch.bincount(idx, minlength=MARGIN_BINS)
            for i, th in enumerate(MARGIN_THRESHOLDS):
                self.margin_below[i] += int((m < th).sum())

    def aux_loss(self, counts: torch.Tensor) -> float | None:
        """E * sum_i f_i P_i with f_i = c_i / sum c and P_i the mean probability (balanced = 1)."""
        total = float(counts.sum())
        if self.tokens == 0 or total == 0:
            return None
        f = counts.double() / total
        p = self.prob_sum / self.tokens
        return float(self.num_experts * (f * p).sum())

    def margin_quantile(self, q: float) -> float | None:
        """Quantile from the histogram (resolution MARGIN_MAX / MARGIN_BINS); None without margins."""
        if self.margin_tokens == 0:
            return None
        target = q * self.margin_tokens
        seen = self.margin_under
        if seen >= target and self.margin_under:
            return 0.0
        width = MARGIN_MAX / MARGIN_BINS
        for i, c in enumerate(self.margin_hist.tolist()):
            if seen + c >= target and c:
                return (i + (target - seen) / c) * width
            seen += c
        return MARGIN_MAX

    def compute(self, counts: torch.Tensor) -> dict[str, Any]:
        n = self.tokens
        has = n > 0
        log_e = math.log(self.num_experts) if self.num_experts > 1 else None
        entropy = self.entropy_sum / n if has else None
        margins = self.margin_tokens > 0
        return {
            "aux_loss": self.aux_loss(counts),
            # Megatron's logged load-balancing loss: the loads of a plain top-k of the scores (no selection
            # bias, no group limits). Every score function orders experts as the logits do, so this is
            # the softmax top-k that transformers' aux loss counts too
            "aux_loss_unbiased": self.aux_loss(self.hf_counts),
            "z_loss": self.lse_sq_sum / n if has else None,
            "router_entropy": entropy,
            "router_entropy_norm": entropy / log_e if entropy is not None and log_e else None,
            "confidence": self.confidence_sum / n if has else None,
            "margin_mean": self.margin_sum / self.margin_tokens if margins else None,
            "margin_median": self.margin_quantile(0.5),
            "margin_p10": self.margin_quantile(0.1),
            "margin_below": (
                {
                    str(th): int(c) / self.margin_tokens
                    for th, c in zip(MARGIN_THRESHOLDS, self.margin_below.tolist(), strict=True)
                }
                if margins
                else None
            ),
        }

    def margin_histogram(self) -> dict[str, Any] | None:
        if self.margin_tokens == 0:
            return None
        return {
            "bin_width": MARGIN_MAX / MARGIN_BINS,
            "counts": self.margin_hist.tolist(),
            "below_zero": self.margin_under,
            "above_max": self.margin_over,
        }
