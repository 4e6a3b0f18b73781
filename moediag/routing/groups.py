"""Group-limited routing: which groups a group rule keeps (``max``, ``top2_sum``, ``topk_sum``)."""

from __future__ import annotations

import torch

from moediag.trace.schema import GROUP_SCORES

# How group-limited routing scores a group (trace metadata ``group_score``, docs/trace-format.md,
# GROUP_SCORES): ``max`` its best score (DeepSeek-V2), ``top2_sum`` the sum of its best 2 (DeepSeek-V3 in
# transformers, SGLang, vLLM), ``topk_sum`` the sum of its best ``top_k // topk_group`` (Megatron-Core
# ``group_limited_topk``, for every score function).


def default_group_score(score_function: str | None) -> str:
    """The rule of a trace or config that does not name one: ``top2_sum`` for sigmoid routers, else
    ``max`` (what moediag always did, and what DeepSeek-V3 and -V2 do)."""
    return "top2_sum" if score_function == "sigmoid" else "max"


def group_score_from_config(group_key: str | None, score_function: str | None) -> str:
    """The rule a model config implies: Megatron-Core's keys (``moe_router_num_groups``) mean its
    ``topk_sum``; any other config (DeepSeek's ``n_group``, ...) the family's default."""
    if group_key is not None and group_key.startswith("moe_router_"):
        return "topk_sum"
    return default_group_score(score_function)


def group_mask(
    sel: torch.Tensor,
    n_group: int,
    topk_group: int,
    score_function: str,
    group_score: str | None = None,
    top_k: int | None = None,
) -> torch.Tensor:
    """Boolean [n, E]: experts in the ``topk_group`` best groups of each token, groups scored by
    ``group_score`` (:data:`GROUP_SCORES`; None = :func:`default_group_score`). ``topk_sum`` needs
    ``top_k``."""
    n, e = sel.shape
    size = e // n_group
    grouped_sel = sel.view(n, n_group, size)
    rule = group_score or default_group_score(score_function)
    if rule == "max":
        best = 1
    elif rule == "top2_sum":
        best = 2
    elif rule == "topk_sum":
        if top_k is None:
            raise ValueError("group_score topk_sum needs top_k")
        best = max(1, top_k // topk_group)
    else:
        raise ValueError(f"unknown group_score {rule!r}: expected {', '.join(GROUP_SCORES)}")
    best = min(best, size)
    if best == 1:
        group_scores = grouped_sel.amax(dim=-1)
    else:
        group_scores = grouped_sel.topk(best, dim=-1).values.sum(dim=-1)
    keep = group_scores.topk(topk_group, dim=-1).indices
    mask = torch.zeros(n, n_group, dtype=torch.bool, device=sel.device)
    mask.scatter_(1, keep, True)
    return mask.unsqueeze(-1).expand(n, n_group, e // n_group).reshape(n, e)
