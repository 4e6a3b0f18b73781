"""Score functions and top-k policies of real MoE routers, shared by analysis, record and replay.

Policies (shared/design/metrics.md, "score functions seen in real models"):

``softmax``       softmax over all E, then top-k (Mixtral, Qwen-MoE, OLMoE, DBRX; DeepSeek-V2). Optional
                  renormalisation of the k weights (``norm_topk_prob``).
``topk_softmax``  top-k on the logits, then softmax over the k (GPT-OSS, Granite, Megatron's default).
``sigmoid``       sigmoid scores; a selection-only bias (DeepSeek-V3 ``e_score_correction_bias``) is added
                  for choosing, and group-limited top-k keeps the ``topk_group`` best of ``n_group`` groups
                  (group score = sum of the top-2 biased scores, as DeepSeek-V3). Weights are the unbiased
                  sigmoid scores of the chosen experts, renormalised when ``norm_topk_prob``.

Group limits with ``softmax`` follow DeepSeek-V2 (group score = the group's max score).

For load-balancing losses and router entropy every policy needs a distribution over all E experts
(``distribution``): the softmax of the logits for ``softmax`` and ``topk_softmax`` (what Megatron's aux
loss uses), and for ``sigmoid`` the sigmoid scores normalised to sum to 1 per token (what Megatron and
DeepSeek-V3's sequence-wise aux loss use).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moediag.blocked import per_row

SCORE_FUNCTIONS = ("softmax", "sigmoid", "topk_softmax")


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
    """Per-expert scores before choosing: softmax or sigmoid (the logits themselves for topk_softmax)."""
    z = logits.float()
    if score_function == "softmax":
        return torch.softmax(z, dim=-1)
    if score_function == "sigmoid":
        return torch.sigmoid(z)
    if score_function == "topk_softmax":
        return z
    raise ValueError(f"unknown score function {score_function!r}")


def selection_scores(
    logits: torch.Tensor, score_function: str, selection_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """The values top-k is taken over: scores plus the selection-only bias."""
    s = scores(logits, score_function)
    if selection_bias is not None:
        s = s + selection_bias.to(s.dtype)
    return s


def group_mask(sel: torch.Tensor, n_group: int, topk_group: int, score_function: str) -> torch.Tensor:
    """Boolean [n, E]: experts in the ``topk_group`` best groups of each token."""
    n, e = sel.shape
    grouped = sel.view(n, n_group, e // n_group)
    if score_function == "sigmoid" and e // n_group >= 2:
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    else:
        group_scores = grouped.max(dim=-1).values
    keep = group_scores.topk(topk_group, dim=-1).indices
    mask = torch.zeros(n, n_group, dtype=torch.bool, device=sel.device)
    mask.scatter_(1, keep, True)
    return mask.unsqueeze(-1).expand(n, n_group, e // n_group).reshape(n, e)


def select(
    sel: torch.Tensor,
    top_k: int,
    *,
    n_group: int | None = None,
    topk_group: int | None = None,
    score_function: str = "softmax",
) -> torch.Tensor:
    """Top-k expert ids [n, k] (int64) over selection scores, group limits applied when given."""
    if n_group and topk_group and n_group > 1:
        allowed = group_mask(sel, n_group, topk_group, score_function)
        sel = sel.masked_fill(~allowed, float("-inf"))
    return sel.topk(top_k, dim=-1).indices


def weights(
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


def margin(sel: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Top-k boundary margin per token: the lowest chosen selection score minus the highest unchosen one.

    Without group limits this is s_(k) - s_(k+1). Negative values mean the recorded choice is not the
    plain top-k of these scores (group limits, or routing rules the scores do not capture).
    Tokens with an empty slot (id -1) use only the filled slots. Returns float32 [n] (NaN when k = E).
    """
    n, e = sel.shape
    valid = ids >= 0
    safe = ids.clamp_min(0)
    chosen = torch.zeros(n, e, dtype=torch.bool, device=sel.device)
    chosen.scatter_(1, safe, valid)
    low = sel.masked_fill(~chosen, float("inf")).min(dim=-1).values
    high = sel.masked_fill(chosen, float("-inf")).max(dim=-1).values
    out = low - high
    return torch.where(torch.isfinite(out), out, torch.full_like(out, float("nan")))


@dataclass
class Routing:
    """One chunk of one layer, routed."""

    ids: torch.Tensor  # [n, k] int64, -1 for an empty slot
    weights: torch.Tensor | None  # [n, k] float32
    probs: torch.Tensor | None  # [n, E] distribution for losses/entropy, when logits exist
    selection: torch.Tensor | None  # [n, E] selection scores, when logits exist


def route(
    logits: torch.Tensor,
    *,
    top_k: int,
    score_function: str,
    norm_topk_prob: bool | None = None,
    selection_bias: torch.Tensor | None = None,
    n_group: int | None = None,
    topk_group: int | None = None,
) -> Routing:
    """Route logits [n, E] the way the model does."""
    sel = selection_scores(logits, score_function, selection_bias)
    ids = select(sel, top_k, n_group=n_group, topk_group=topk_group, score_function=score_function)
    return Routing(
        ids=ids,
        weights=weights(logits, ids, score_function, norm_topk_prob),
        probs=distribution(logits, score_function),
        selection=sel,
    )
