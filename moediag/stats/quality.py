"""Quality of two models on the same evaluation tokens, per domain, paired token by token.

State per domain (and overall): token count, the two models' loss sums and sums of squares, the sum and
sum of squares of the per-token loss difference (B - A), hits of each model and the discordant counts
(tokens only B got right, only A got right). ``update`` adds a chunk of aligned tokens, ``merge`` adds
another accumulator's tokens, ``compute`` derives means and 95% intervals:

* mean loss: mean +- z * sd / sqrt(n); the paired difference the same way on the per-token differences;
* accuracy: Wilson score interval; the paired accuracy difference ``(b_only - a_only) / n`` with the
  normal interval of the mean of the per-token differences (each -1, 0 or 1).

A difference is ``shifted`` when its interval excludes 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from moediag.stats.accuracy import Z95, wilson
from moediag.stats.state import Accumulator

__all__ = ["PairedQualityStats", "mean_interval"]

_FIELDS = (
    "tokens",
    "loss_tokens",
    "loss_a",
    "loss_a_sq",
    "loss_b",
    "loss_b_sq",
    "loss_d",
    "loss_d_sq",
    "correct_tokens",
    "correct_a",
    "correct_b",
    "b_only",
    "a_only",
)


def mean_interval(
    s: float, sq: float, n: int, z: float = Z95
) -> tuple[float | None, float | None, float | None]:
    """Mean and its normal 95% interval from a sum, a sum of squares and a count."""
    if n <= 0:
        return None, None, None
    m = s / n
    if n == 1:
        return m, None, None
    var = max(0.0, (sq - n * m * m) / (n - 1))
    half = z * math.sqrt(var / n)
    return m, m - half, m + half


def _merge_rows(
    mine: dict[int, dict[str, float]], theirs: dict[int, dict[str, float]]
) -> dict[int, dict[str, float]]:
    """Per domain and field, the sum (a domain on one side only starts from zeros)."""
    out = {d: dict(row) for d, row in mine.items()}
    for d, orow in theirs.items():
        row = out.setdefault(d, dict.fromkeys(_FIELDS, 0.0))
        for k in _FIELDS:
            row[k] += orow[k]
    return out


class PairedQualityStats(Accumulator):
    """Loss and accuracy of models A and B on the same tokens, by domain (see the module docstring)."""

    by_domain: dict[int, dict[str, float]]

    def __init__(self) -> None:
        #: domain id (-1: no domain) -> field -> value
        self.add_state("by_domain", {}, _merge_rows)

    def _row(self, d: int) -> dict[str, float]:
        if d not in self.by_domain:
            self.by_domain[d] = dict.fromkeys(_FIELDS, 0.0)
        return self.by_domain[d]

    def update(
        self,
        *,
        domain: torch.Tensor | None,
        loss_a: torch.Tensor | None = None,
        loss_b: torch.Tensor | None = None,
        correct_a: torch.Tensor | None = None,
        correct_b: torch.Tensor | None = None,
    ) -> None:
        """Add aligned tokens (every tensor [n], the same tokens in the same order)."""
        n = next(t.shape[0] for t in (loss_a, correct_a, loss_b, correct_b, domain) if t is not None)
        dom = torch.full((n,), -1, dtype=torch.int64) if domain is None else domain.to(torch.int64)
        for d in torch.unique(dom).tolist():
            sel = dom == d
            row = self._row(int(d))
            row["tokens"] += int(sel.sum())
            if loss_a is not None and loss_b is not None:
                a, b = loss_a[sel].double(), loss_b[sel].double()
                ok = torch.isfinite(a) & torch.isfinite(b)
                a, b = a[ok], b[ok]
                diff = b - a
                row["loss_tokens"] += int(ok.sum())
                row["loss_a"] += float(a.sum())
                row["loss_a_sq"] += float((a * a).sum())
                row["loss_b"] += float(b.sum())
                row["loss_b_sq"] += float((b * b).sum())
                row["loss_d"] += float(diff.sum())
                row["loss_d_sq"] += float((diff * diff).sum())
            if correct_a is not None and correct_b is not None:
                ca, cb = correct_a[sel].bool(), correct_b[sel].bool()
                row["correct_tokens"] += int(sel.sum())
                row["correct_a"] += int(ca.sum())
                row["correct_b"] += int(cb.sum())
                row["b_only"] += int((cb & ~ca).sum())
                row["a_only"] += int((ca & ~cb).sum())

    @staticmethod
    def _figures(row: dict[str, float]) -> dict[str, Any]:
        nl, nc = int(row["loss_tokens"]), int(row["correct_tokens"])
        out: dict[str, Any] = {"tokens": int(row["tokens"])}
        for m in ("a", "b"):
            mean, lo, hi = mean_interval(row[f"loss_{m}"], row[f"loss_{m}_sq"], nl)
            out[f"loss_{m}"], out[f"loss_{m}_ci"] = mean, [lo, hi]
            acc = row[f"correct_{m}"] / nc if nc else None
            out[f"accuracy_{m}"], out[f"accuracy_{m}_ci"] = acc, list(wilson(int(row[f"correct_{m}"]), nc))
        d, lo, hi = mean_interval(row["loss_d"], row["loss_d_sq"], nl)
        out["loss_delta"], out["loss_delta_ci"] = d, [lo, hi]
        disc = row["b_only"] - row["a_only"]
        # per-token differences are +-1 on discordant tokens, 0 elsewhere: sum = disc, sum of squares = both
        d, lo, hi = mean_interval(disc, row["b_only"] + row["a_only"], nc)
        out["accuracy_delta"], out["accuracy_delta_ci"] = d, [lo, hi]
        out["loss_shifted"] = _excludes_zero(out["loss_delta_ci"])
        out["accuracy_shifted"] = _excludes_zero(out["accuracy_delta_ci"])
        return out

    def compute(self, domain_names: list[str] | None = None) -> dict[str, Any]:
        """``overall`` and ``domains`` (a list, by domain id), each with both models' figures and B - A."""
        total = dict.fromkeys(_FIELDS, 0.0)
        for row in self.by_domain.values():
            for k in _FIELDS:
                total[k] += row[k]
        domains = []
        for d in sorted(x for x in self.by_domain if x >= 0):
            name = domain_names[d] if domain_names and d < len(domain_names) else str(d)
            domains.append({"domain": name, "domain_id": d, **self._figures(self.by_domain[d])})
        return {"overall": self._figures(total), "domains": domains}


def _excludes_zero(ci: list[float | None]) -> bool:
    lo, hi = ci
    return bool(lo is not None and hi is not None and (lo > 0 or hi < 0))
