"""The one routing path: router logits and/or recorded choices -> :class:`Routed`, what accumulators read.

>>> from moediag.routing import route                                  # doctest: +SKIP
>>> r = route(logits, spec=spec, bias=selection_bias)                  # doctest: +SKIP
>>> r.ids, r.weights, r.margin                                         # doctest: +SKIP

``inspect`` (:func:`moediag.analysis.layer_batch`), ``replay``, ``compare`` (and a live monitor) call
:func:`route`; nothing else turns logits into choices, weights or margins.

Score functions (shared/design/metrics.md, "score functions seen in real models"):

``softmax``       softmax over all E, then top-k (Mixtral, Qwen-MoE, OLMoE, DBRX; DeepSeek-V2). Optional
                  renormalisation of the k weights (``norm_topk_prob``).
``topk_softmax``  top-k on the logits, then softmax over the k (GPT-OSS, Granite, Megatron's default).
``sigmoid``       sigmoid scores; a selection-only bias (DeepSeek-V3 ``e_score_correction_bias``) is added
                  for choosing, and group-limited top-k keeps the ``topk_group`` best of ``n_group`` groups
                  (group score = sum of the top-2 biased scores, as DeepSeek-V3). Weights are the unbiased
                  sigmoid scores of the chosen experts, renormalised when ``norm_topk_prob``.

Group limits with ``softmax`` follow DeepSeek-V2 (group score = the group's max score).

**Margin** (docs/metrics.md), defined here only: per token, the lowest *chosen* score minus the highest
*unchosen* score among the experts the routing rule allows (the ``topk_group`` groups it kept; every expert
without group limits), in probability units: the softmax probability for ``softmax`` and ``topk_softmax``
(the softmax is monotonic in the logits, so the order is the logits' order), the sigmoid score for
``sigmoid``, plus the selection bias when there is one (the bias is part of what the rule compares; for
``topk_softmax`` the softmax of the biased logits). When the
rule chose the experts the margin is never negative; a negative margin means recorded choices that are not
the rule's top-k. NaN when no allowed expert is left unchosen (k = E, or k = the allowed experts).

For load-balancing losses and router entropy every policy needs a distribution over all E experts
(``distribution``): the softmax of the logits for ``softmax`` and ``topk_softmax`` (what Megatron's aux
loss uses), and for ``sigmoid`` the sigmoid scores normalised to sum to 1 per token (what Megatron and
DeepSeek-V3's sequence-wise aux loss use).

:func:`route` is pure torch and device-agnostic, and makes no host synchronisation (no ``.item()``, no
data-dependent Python branch): checking the input (ids in range, finite logits) is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch

from moediag.blocked import per_row
from moediag.stats.batch import LayerBatch

SCORE_FUNCTIONS = ("softmax", "sigmoid", "topk_softmax")


class RoutingRule(Protocol):
    """What :func:`route` needs to know about a layer's router (trace ``RoutingSpec`` and checkpoint
    ``RouterSpec`` both qualify)."""

    @property
    def top_k(self) -> int | None: ...
    @property
    def score_function(self) -> str | None: ...
    @property
    def norm_topk_prob(self) -> bool | None: ...
    @property
    def n_group(self) -> int | None: ...
    @property
    def topk_group(self) -> int | None: ...


def grouped(rule: RoutingRule) -> bool:
    """True when the rule routes within ``topk_group`` of ``n_group`` expert groups."""
    return bool(rule.n_group and rule.topk_group and rule.n_group > 1)


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


def group_mask(sel: torch.Tensor, n_group: int, topk_group: int, score_function: str) -> torch.Tensor:
    """Boolean [n, E]: experts in the ``topk_group`` best groups of each token."""
    n, e = sel.shape
    grouped_sel = sel.view(n, n_group, e // n_group)
    if score_function == "sigmoid" and e // n_group >= 2:
        group_scores = grouped_sel.topk(2, dim=-1).values.sum(dim=-1)
    else:
        group_scores = grouped_sel.max(dim=-1).values
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


def margin(sel: torch.Tensor, ids: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Top-k boundary margin per token: the lowest chosen score minus the highest unchosen allowed one.

    ``sel``: scores in probability units ([n, E]); ``allowed``: boolean [n, E] of the experts the rule may
    choose (None = all). Without group limits this is s_(k) - s_(k+1). Negative values mean the choice is
    not the top-k of these scores. Tokens with an empty slot (id -1) use only the filled slots.
    Returns float32 [n], NaN when no allowed expert is unchosen.
    """
    n, e = sel.shape
    valid = ids >= 0
    safe = ids.clamp_min(0)
    chosen = torch.zeros(n, e, dtype=torch.bool, device=sel.device)
    chosen.scatter_(1, safe, valid)
    low = sel.masked_fill(~chosen, float("inf")).amin(dim=-1)
    others = chosen if allowed is None else chosen | ~allowed
    high = sel.masked_fill(others, float("-inf")).amax(dim=-1)
    return _finite_or_nan(low - high)


def _finite_or_nan(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.full_like(x, float("nan")))


@dataclass
class Routed:
    """One chunk of one layer, routed: the routing fields of :class:`moediag.stats.LayerBatch`.

    Logit-derived fields are None when only recorded ids were given.
    """

    ids: torch.Tensor  # [n, k] int64, -1 for an empty slot (recorded ids only)
    top1: torch.Tensor  # [n] int64: the chosen expert with the highest score (the first slot without logits)
    weights: torch.Tensor | None = None  # [n, k] float32 combine weights (recorded, else computed)
    logits: torch.Tensor | None = None  # [n, E] float32
    probs: torch.Tensor | None = None  # [n, E] distribution for losses and entropy
    margin: torch.Tensor | None = None  # [n] top-k boundary margin (module docstring)
    hf_ids: torch.Tensor | None = None  # [n, k] softmax-then-top-k, as transformers' aux loss routes
    lse: torch.Tensor | None = None  # [n] logsumexp of the logits
    entropy: torch.Tensor | None = None  # [n] entropy of ``probs`` (when ``probs`` is the softmax)
    confidence: torch.Tensor | None = None  # [n] max of ``probs`` (when ``probs`` is the softmax)
    softmax: torch.Tensor | None = None  # [n, E] softmax of the logits
    filled: bool = False  # chosen here: no empty slot

    def to(self, device: torch.device | str) -> Routed:
        """The same routing with every tensor on ``device``."""
        out = Routed(self.ids.to(device), self.top1.to(device), filled=self.filled)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and f.name not in ("ids", "top1"):
                setattr(out, f.name, value.to(device))
        return out

    def batch(self, *, num_experts: int, top_k: int, index: torch.Tensor) -> LayerBatch:
        """The :class:`~moediag.stats.LayerBatch` of these rows (token fields are the caller's to add)."""
        out = LayerBatch(num_experts=num_experts, top_k=top_k, ids=self.ids, top1=self.top1, index=index)
        for f in fields(self):
            if f.name not in ("ids", "top1"):
                setattr(out, f.name, getattr(self, f.name))
        return out

    def select(self, keep: torch.Tensor) -> Routed:
        """The rows where ``keep`` is true."""
        out = Routed(self.ids[keep], self.top1[keep], filled=self.filled)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor) and f.name not in ("ids", "top1"):
                setattr(out, f.name, value[keep])
        return out


def _choice_scores(
    logits: torch.Tensor, score_function: str, bias: torch.Tensor | None, softmax: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(what top-k is taken over, the same order in probability units) for one score function."""
    if score_function == "topk_softmax":  # top-k on the logits; the softmax keeps their order
        if bias is None:
            return logits, softmax if softmax is not None else torch.softmax(logits, dim=-1)
        choice = logits + bias.to(logits.dtype)
        return choice, torch.softmax(choice, dim=-1)
    own = score_function == "softmax" and softmax is not None
    prob = softmax if own and softmax is not None else scores(logits, score_function)
    if bias is not None:
        prob = prob + bias.to(prob.dtype)
    return prob, prob


def _allowed(choice: torch.Tensor, rule: RoutingRule, score_function: str) -> torch.Tensor | None:
    if not grouped(rule):
        return None
    assert rule.n_group is not None and rule.topk_group is not None
    return group_mask(choice, rule.n_group, rule.topk_group, score_function)


def choose(
    logits: torch.Tensor, *, spec: RoutingRule, bias: torch.Tensor | None = None, top_k: int | None = None
) -> torch.Tensor:
    """Only the chosen expert ids [n, k] (int64) of :func:`route` (the cheap path for what-ifs and noise)."""
    sf = _score_function(spec)
    k = _top_k(spec, top_k)
    choice, _ = _choice_scores(logits.float(), sf, bias)
    allowed = _allowed(choice, spec, sf)
    if allowed is not None:
        choice = choice.masked_fill(~allowed, float("-inf"))
    return choice.topk(k, dim=-1).indices


def _score_function(spec: RoutingRule) -> str:
    sf = spec.score_function
    if sf not in SCORE_FUNCTIONS:
        raise ValueError(f"unknown score function {sf!r}")
    return sf


def _top_k(spec: RoutingRule, top_k: int | None) -> int:
    k = spec.top_k if top_k is None else top_k
    if k is None:
        raise ValueError("top_k unknown: pass top_k or a spec with one")
    return int(k)


def route(
    logits: torch.Tensor | None,
    *,
    spec: RoutingRule,
    ids: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    top_k: int | None = None,
) -> Routed:
    """Route one chunk of one layer the way the model does: the one routing path of moediag.

    ``logits`` [n, E] (finite rows; None when only ``ids`` were recorded), ``ids`` [n, k] recorded choices
    (-1 = empty slot; chosen here by the rule when None), ``weights`` [n, k] recorded combine weights
    (computed when None), ``bias`` [E] the selection-only bias, ``top_k`` overrides ``spec.top_k``.
    Every output stays on the device of the inputs.
    """
    if logits is None:
        if ids is None:
            raise ValueError("route needs logits or ids")
        ids = ids.to(torch.int64)
        return Routed(ids=ids, top1=ids[:, 0], weights=None if weights is None else weights.float())
    sf = _score_function(spec)
    k = _top_k(spec, top_k) if ids is None or top_k is not None or spec.top_k else int(ids.shape[1])
    z = logits.float()
    e = z.shape[1]
    parts = softmax_parts(z)
    softmax = parts.softmax
    choice, prob = _choice_scores(z, sf, bias, softmax)
    allowed = _allowed(choice, spec, sf)
    chosen_here = ids is None
    if ids is None:
        masked = choice if allowed is None else choice.masked_fill(~allowed, float("-inf"))
        if k < e:
            # one top-k of k + 1 gives the choice and the first unchosen allowed expert
            idx = masked.topk(k + 1, dim=-1).indices
            ids = idx[:, :k].contiguous()  # every accumulator flattens ids: copy once, not in each
            pair = prob.gather(1, idx[:, k - 1 :])
            boundary = pair[:, 0] - pair[:, 1]
            if allowed is not None:  # fewer than k + 1 allowed experts: nothing unchosen to compare with
                boundary = torch.where(allowed.gather(1, idx[:, k:]).squeeze(1), boundary, float("nan"))
            token_margin = _finite_or_nan(boundary)
        else:
            ids = masked.topk(k, dim=-1).indices
            token_margin = torch.full((z.shape[0],), float("nan"), device=z.device)
        top1 = ids[:, 0]
    else:
        ids = ids.to(torch.int64)
        token_margin = margin(prob, ids, allowed)
        picked = choice.gather(1, ids.clamp_min(0)).masked_fill(ids < 0, float("-inf"))
        top1 = ids.gather(1, picked.argmax(dim=1, keepdim=True)).squeeze(1)
    if weights is None:
        weights = combine_weights(z, ids.clamp_min(0), sf, spec.norm_topk_prob, softmax=softmax)
    probs = distribution(z, sf) if sf == "sigmoid" else softmax
    own = probs is softmax
    # transformers' aux loss always routes softmax -> top-k, whatever the model does
    same_as_hf = sf == "softmax" and allowed is None and bias is None and chosen_here
    return Routed(
        ids=ids,
        top1=top1,
        weights=weights.float(),
        logits=z,
        probs=probs,
        margin=token_margin,
        hf_ids=ids if same_as_hf else softmax.topk(k, dim=-1).indices,
        lse=parts.lse,
        entropy=parts.entropy if own else None,
        confidence=parts.confidence if own else None,
        softmax=softmax,
        filled=chosen_here,
    )
