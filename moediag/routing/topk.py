"""Top-k selection and the top-k boundary margin.

:func:`topk_indices` is ``x.topk(k, dim=-1).indices`` with the same result, ties included, in ~30% less
time on CPU: torch's CPU top-k compares floats with a NaN-aware comparator (is x NaN and y not, or x > y),
and the same partial sort over int32 keys that order like the floats compares plainly. Both run one
algorithm (the kernel picks partial sort or nth_element from k and E alone) with a comparator that agrees
on every pair of non-NaN values, so they return the same indices in the same order. Non-negative floats
(probabilities; a softmax never returns -0.0) order like their bit patterns read as int32, a free view;
other floats through the usual sign flip, after ``+ 0.0`` turns -0.0 into the 0.0 it equals. NaN has no
place in routing (rows must be finite), and other devices and dtypes keep ``torch.topk``.
"""

from __future__ import annotations

import torch

from moediag.routing.groups import group_mask


def ordered_keys(x: torch.Tensor, nonnegative: bool = False) -> torch.Tensor:
    """int32 keys of float32 ``x`` (no NaN) that compare as the values do: equal keys for equal values.

    ``nonnegative``: the caller knows x holds no negative value and no -0.0 (a softmax): the bits as they are.
    """
    if nonnegative:
        return x.view(torch.int32)
    bits = (x + 0.0).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def topk_indices(x: torch.Tensor, k: int, *, nonnegative: bool = False) -> torch.Tensor:
    """``x.topk(k, dim=-1).indices`` for scores without NaN: the same ids in the same order (module
    docstring), through :func:`ordered_keys` for float32 on CPU. ``nonnegative`` as for ``ordered_keys``."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return x.topk(k, dim=-1).indices
    return ordered_keys(x, nonnegative).topk(k, dim=-1).indices


def topk_values(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x.topk(k, dim=-1)`` as (values, indices) for non-negative scores without -0.0 (a softmax): on CPU
    the values are the keys' bits read back as float32, the same numbers, with no gather."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        out = x.topk(k, dim=-1)
        return out.values, out.indices
    keys, idx = ordered_keys(x, nonnegative=True).topk(k, dim=-1)
    return keys.view(torch.float32), idx


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
    return topk_indices(sel, top_k)


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
