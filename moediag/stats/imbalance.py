"""Imbalance figures from expert load counts c_i (pure functions; shared/design/metrics.md).

All take a 1-D tensor of non-negative counts. Figures that are undefined for an empty load (no
assignments) return None. "Mean" is over experts; the standard deviation is the population one.
"""

from __future__ import annotations

import math

import torch


def _f64(counts: torch.Tensor) -> torch.Tensor:
    return counts.to(torch.float64)


def load_share(counts: torch.Tensor) -> list[float] | None:
    total = float(counts.sum())
    return None if total == 0 else (_f64(counts) / total).tolist()


def max_vio(counts: torch.Tensor) -> float | None:
    """max_i c_i / (sum c / E) - 1 (DeepSeek loss-free balancing, Eq. 4). Balanced: 0."""
    total = float(counts.sum())
    if total == 0:
        return None
    return float(counts.max()) / (total / counts.numel()) - 1.0


def max_mean(counts: torch.Tensor) -> float | None:
    mean = float(_f64(counts).mean())
    return None if mean == 0 else float(counts.max()) / mean


def min_mean(counts: torch.Tensor) -> float | None:
    mean = float(_f64(counts).mean())
    return None if mean == 0 else float(counts.min()) / mean


def cv(counts: torch.Tensor) -> float | None:
    """Coefficient of variation with the population standard deviation. Balanced: 0."""
    c = _f64(counts)
    mean = float(c.mean())
    if mean == 0:
        return None
    return float(c.std(unbiased=False)) / mean


def entropy(counts: torch.Tensor) -> float | None:
    """Shannon entropy (nats) of the load distribution."""
    total = float(counts.sum())
    if total == 0:
        return None
    p = _f64(counts) / total
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def entropy_norm(counts: torch.Tensor) -> float | None:
    """H(c / sum c) / log E. Balanced: 1. None for E = 1."""
    h = entropy(counts)
    e = counts.numel()
    return None if h is None or e < 2 else h / math.log(e)


def effective_experts(counts: torch.Tensor) -> float | None:
    """exp(H): the number of equally loaded experts with the same entropy. Balanced: E."""
    h = entropy(counts)
    return None if h is None else math.exp(h)


def gini(counts: torch.Tensor) -> float | None:
    """Standard Gini coefficient of the counts (0 = equal, (E-1)/E = one expert takes everything)."""
    c = torch.sort(_f64(counts)).values
    total = float(c.sum())
    if total == 0:
        return None
    n = c.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return float((2.0 * (i * c).sum()) / (n * total) - (n + 1) / n)


def dead_experts(counts: torch.Tensor) -> list[int]:
    """Experts with no assignment. A layer with no assignments at all (a dense layer recorded as zeros, or
    every token masked) has no dead experts: there is nothing to judge them by."""
    if int(counts.sum()) == 0:
        return []
    return torch.nonzero(counts == 0).flatten().tolist()


def cold_experts(counts: torch.Tensor, eps: float) -> list[int]:
    """Experts whose share is below eps / E (includes dead ones); none for a layer without assignments."""
    total = float(counts.sum())
    if total == 0:
        return []
    share = _f64(counts) / total
    return torch.nonzero(share < eps / counts.numel()).flatten().tolist()


def balancedness(rank_loads: torch.Tensor) -> float | None:
    """Mean rank load / max rank load (SGLang, vLLM EPLB). Balanced: 1."""
    mx = float(rank_loads.max()) if rank_loads.numel() else 0.0
    return None if mx == 0 else float(_f64(rank_loads).mean()) / mx


def imbalance_figures(counts: torch.Tensor, cold_eps: float) -> dict[str, object]:
    """Every load figure of one layer, keyed as in the JSON contract."""
    return {
        "load": [int(x) for x in counts.tolist()],
        "load_share": load_share(counts),
        "max_vio": max_vio(counts),
        "max_mean": max_mean(counts),
        "min_mean": min_mean(counts),
        "cv": cv(counts),
        "gini": gini(counts),
        "entropy_norm": entropy_norm(counts),
        "effective_experts": effective_experts(counts),
        "dead_experts": dead_experts(counts),
        "cold_experts": cold_experts(counts, cold_eps),
    }
