"""The one function that routes a chunk: :func:`route` (and :func:`choose`, its ids-only path)."""

from __future__ import annotations

import torch

from moediag.routing.groups import group_mask
from moediag.routing.routed import Routed
from moediag.routing.rule import RoutingRule, grouped, score_function_of, top_k_of
from moediag.routing.scores import combine_weights, distribution, scores, softmax_parts
from moediag.routing.topk import finite_or_nan, margin, topk_indices, topk_values


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


def _allowed(choice: torch.Tensor, rule: RoutingRule, score_function: str, top_k: int) -> torch.Tensor | None:
    if not grouped(rule):
        return None
    assert rule.n_group is not None and rule.topk_group is not None
    return group_mask(choice, rule.n_group, rule.topk_group, score_function, rule.group_score, top_k)


def choose(
    logits: torch.Tensor, *, spec: RoutingRule, bias: torch.Tensor | None = None, top_k: int | None = None
) -> torch.Tensor:
    """Only the chosen expert ids [n, k] (int64) of :func:`route` (the cheap path for what-ifs and noise)."""
    sf = score_function_of(spec)
    k = top_k_of(spec, top_k)
    choice, _ = _choice_scores(logits.float(), sf, bias)
    allowed = _allowed(choice, spec, sf, k)
    if allowed is not None:
        choice = choice.masked_fill(~allowed, float("-inf"))
    return topk_indices(choice, k)


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
    sf = score_function_of(spec)
    k = top_k_of(spec, top_k) if ids is None or top_k is not None or spec.top_k else int(ids.shape[1])
    z = logits.float()
    e = z.shape[1]
    parts = softmax_parts(z)
    softmax = parts.softmax
    choice, prob = _choice_scores(z, sf, bias, softmax)
    allowed = _allowed(choice, spec, sf, k)
    chosen_here = ids is None
    if ids is None:
        masked = choice if allowed is None else choice.masked_fill(~allowed, float("-inf"))
        plain = choice is softmax and allowed is None  # probabilities as they are: no negative, no -0.0
        if k < e:
            # one top-k of k + 1 gives the choice and the first unchosen allowed expert
            if plain:  # the top-k values are the probabilities: the weights and the margin need no gather
                top, idx = topk_values(masked, k + 1)
                pair = top[:, k - 1 :]
                if weights is None:  # combine_weights' softmax.gather(1, ids): the same floats
                    weights = top[:, :k].contiguous()
                    if spec.norm_topk_prob:
                        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
            else:
                idx = topk_indices(masked, k + 1)
                pair = prob.gather(1, idx[:, k - 1 :])
            ids = idx[:, :k].contiguous()  # every accumulator flattens ids: copy once, not in each
            boundary = pair[:, 0] - pair[:, 1]
            if allowed is not None:  # fewer than k + 1 allowed experts: nothing unchosen to compare with
                boundary = torch.where(allowed.gather(1, idx[:, k:]).squeeze(1), boundary, float("nan"))
            token_margin = finite_or_nan(boundary)
        else:
            ids = topk_indices(masked, k, nonnegative=plain)
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
        hf_ids=ids if same_as_hf else topk_indices(softmax, k, nonnegative=True),
        lse=parts.lse,
        entropy=parts.entropy if own else None,
        confidence=parts.confidence if own else None,
        softmax=softmax,
        filled=chosen_here,
    )
