"""Router and bias statistics (weight diagnostics that need no expert weights).

* Router rows: L2 norm per expert, outliers by a robust z-score (median and MAD), pairwise cosine.
* Biases: statistics of a selection bias (``e_score_correction_bias`` / ``expert_bias``) or a logit bias.

Expert redundancy is in :mod:`moediag.checkpoint.similarity`, dequantisation in
:mod:`moediag.checkpoint.dequant`, byte-range reading in :mod:`moediag.checkpoint.reading`.
"""

from __future__ import annotations

from typing import Any

import torch

from moediag import options

__all__ = ["bias_stats", "nonfinite_count", "router_stats"]

OUTLIER_Z = 3.5
OUTLIER_REL = 0.25


def _robust_outliers(x: torch.Tensor) -> list[tuple[int, float, str]]:
    """Values far from the rest, with direction ("low"/"high"). A value is flagged when

    * it is below half or above twice the median of the *other* values (works for a handful of experts), or
    * its robust z-score ``0.6745 (x - median) / MAD`` exceeds 3.5 and it lies at least 25% from the
      median (so the natural spread of small random routers is not flagged).

    Needs at least 4 values.
    """
    n = x.numel()
    if n < 4:
        return []
    xd = x.double()
    med = xd.quantile(0.5)
    mad = (xd - med).abs().quantile(0.5)
    far = (xd - med).abs() > OUTLIER_REL * med.abs().clamp_min(1e-30)
    z = 0.6745 * (xd - med) / mad if float(mad) > 0 else torch.zeros_like(xd)
    out: list[tuple[int, float, str]] = []
    for i in range(n):
        others = torch.cat((xd[:i], xd[i + 1 :])).quantile(0.5)
        ratio = float(xd[i] / others) if float(others) > 0 else 1.0
        if ratio < 0.5 or ratio > 2.0 or (abs(float(z[i])) > OUTLIER_Z and bool(far[i])):
            out.append((i, float(x[i]), "low" if float(xd[i]) < float(med) else "high"))
    return out


def nonfinite_count(t: torch.Tensor) -> int:
    """How many values of ``t`` are NaN or infinite (a broken tensor: reported, and failed by ``check``)."""
    return int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0


def router_stats(
    w: torch.Tensor, threshold: float = options.default("redundancy_threshold")
) -> dict[str, Any]:
    """Row norms (with outliers) and pairwise row cosine of a router weight [E, H]; ``nonfinite``: how
    many of its values are NaN or infinite (their rows' figures are then NaN, null in JSON)."""
    w = w.float()
    norms = w.norm(dim=1)
    e = w.shape[0]
    unit = w / norms.clamp_min(1e-30).unsqueeze(1)
    cos = (unit @ unit.T).clamp(-1.0, 1.0)
    zero = norms == 0  # an all-zero row has no direction: no cosine with anything
    cos = cos.masked_fill(zero.unsqueeze(0) | zero.unsqueeze(1), float("nan"))
    off = cos.masked_fill(torch.eye(e, dtype=torch.bool), float("nan"))
    finite = off[~torch.isnan(off)]
    if finite.numel():
        flat = torch.nan_to_num(off, nan=-2.0)
        i = int(flat.argmax())
        max_pair = [i // e, i % e]
        cos_stats: dict[str, Any] = {
            "mean": float(finite.mean()),
            "max": float(finite.max()),
            "max_pair": sorted(max_pair),
            "similar_pairs": [
                [int(a), int(b), float(cos[a, b])]
                for a, b in torch.nonzero(torch.triu(cos, diagonal=1) >= threshold).tolist()
            ],
        }
    else:
        cos_stats = {"mean": None, "max": None, "max_pair": None, "similar_pairs": []}
    med = float(norms.median())
    return {
        "router_norms": [float(v) for v in norms],
        "router_norm_stats": {
            "min": float(norms.min()),
            "median": med,
            "max": float(norms.max()),
            "cv": float(norms.std(unbiased=False) / norms.mean()) if float(norms.mean()) > 0 else None,
        },
        "router_norm_outliers": [[i, v, d] for i, v, d in _robust_outliers(norms)],
        "router_cosine": cos_stats,
        "nonfinite": nonfinite_count(w),
    }


def bias_stats(b: torch.Tensor, kind: str, name: str) -> dict[str, Any]:
    """Statistics of a per-expert bias [E] (``[1, E]`` is squeezed). ``pushed`` lists experts whose bias
    sits more than 2 standard deviations above the mean (for a selection bias: experts training had to
    push tokens toward). Figures are over the finite values; ``nonfinite`` counts the others (NaN or
    infinite: a broken bias, which ``check`` fails through ``max_nonfinite``)."""
    every = b.float().reshape(-1)
    ok = torch.isfinite(every)
    v = every[ok]
    if not v.numel():
        return {
            "kind": kind,
            "tensor": name,
            "mean": None,
            "std": None,
            "min": None,
            "max": None,
            "range": None,
            "argmax": None,
            "argmin": None,
            "pushed": [],
            "values": [float(x) for x in every],
            "nonfinite": int(every.numel()),
        }
    keep = torch.nonzero(ok).reshape(-1)  # indices into the whole bias
    mean = float(v.mean())
    std = float(v.std(unbiased=False))
    pushed = []
    if std > 0:
        z = (v - mean) / std
        order = torch.argsort(z, descending=True)
        pushed = [[int(keep[i]), float(v[i]), float(z[i])] for i in order.tolist() if float(z[i]) > 2.0]
    return {
        "kind": kind,
        "tensor": name,
        "mean": mean,
        "std": std,
        "min": float(v.min()),
        "max": float(v.max()),
        "range": float(v.max() - v.min()),
        "argmax": int(keep[int(v.argmax())]),
        "argmin": int(keep[int(v.argmin())]),
        "pushed": pushed,
        "values": [float(x) for x in every],
        "nonfinite": int(every.numel() - v.numel()),
    }
