"""Top-k selection and the top-k boundary margin."""

from __future__ import annotations

import torch

from moediag.routing.groups import group_mask


def select(
    sel: torch.Tensor,
    top_k: int,
    *,
    n_group: int | None = None,
    topk_group: int | None = None,
    score_function: str = "softmax",
    group_score: str | None = None,
) -> torch.Tensor:
    """Top-k expert ids [n, k] (int64) over selection scores, group limits applied when given."""
    if n_group and topk_group and n_group > 1:
        allowed = group_mask(sel, n_group, topk_group, score_function, group_score, top_k)
        sel = sel.masked_fill(~allowed, float("-inf"))
    return sel.topk(top_k, dim=-1).indices


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
    return finite_or_nan(low - high)


def finite_or_nan(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.full_like(x, float("nan")))
