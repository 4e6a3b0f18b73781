"""Score functions: router logits -> scores in probability units, the loss distribution, combine weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moediag.stats.blocked import per_row


def distribution(logits: torch.Tensor, score_function: str) -> torch.Tensor:
    """Per-token probability distribution over experts used by aux losses and entropy (float32)."""
    z = logits.float()
    if score_function in ("softmax", "topk_softmax"):
        return torch.softmax(z, dim=-1)
    if score_function == "sigmoid":
        s = torch.sigmoid(z)
        return s / s.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    raise ValueError(f"unknown score function {score_function!r}")


@dataclass
class SoftmaxParts:
    """The softmax of router logits and the per-token figures that come with it at no extra pass."""

    softmax: torch.Tensor  # [n, E] float32
    lse: torch.Tensor  # [n] logsumexp of the logits (z-loss)
    entropy: torch.Tensor  # [n] entropy of the softmax, nats
    confidence: torch.Tensor  # [n] the largest softmax probability


def softmax_parts(logits: torch.Tensor) -> SoftmaxParts:
    """One fused softmax, plus logsumexp, entropy and confidence without a log-softmax pass.

    The softmax peaks at exp(0) / S on the arg-max, with S = sum_i exp(z_i - max z), so log S =
    -log(max p), logsumexp = max z + log S, and log p_i = z_i - max z - log S gives the entropy
    H = log S - sum_i p_i (z_i - max z): both terms are small when the router is confident, so there is
    no cancellation. (amax, not max(): the reduction without indices is ~10x faster on CPU.)
    Rows must be finite (a -inf logit gives a NaN entropy): analysis and replay drop non-finite rows first.
    """
    z = logits.float()
    row_max = z.amax(dim=-1)
    softmax = torch.softmax(z, dim=-1)
    confidence = softmax.amax(dim=-1)
    log_s = -confidence.log()
    spread = per_row(lambda p, zz, m: (p * (zz - m.unsqueeze(1))).sum(dim=-1), softmax, z, row_max)
    return SoftmaxParts(softmax, row_max + log_s, log_s - spread, confidence)


def scores(logits: torch.Tensor, score_function: str) -> torch.Tensor:
    """Per-expert scores in probability units: the softmax (``softmax``, ``topk_softmax``) or the sigmoid."""
    z = logits.float()
    if score_function in ("softmax", "topk_softmax"):
        return torch.softmax(z, dim=-1)
    if score_function == "sigmoid":
        return torch.sigmoid(z)
    raise ValueError(f"unknown score function {score_function!r}")


def combine_weights(
    logits: torch.Tensor,
    ids: torch.Tensor,
    score_function: str,
    norm_topk_prob: bool | None,
    softmax: torch.Tensor | None = None,
) -> torch.Tensor:
    """The combine weights of the chosen experts (before any routed scaling factor).

    ``softmax``: the softmax of ``logits`` when the caller already has it (saves a pass).
    """
    z = logits.float()
    if score_function == "topk_softmax":
        return torch.softmax(z.gather(1, ids), dim=-1)
    if score_function == "softmax" and softmax is not None:
        w = softmax.gather(1, ids)
    else:
        w = scores(z, score_function).gather(1, ids)
    if norm_topk_prob:
        w = w / w.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    return w
