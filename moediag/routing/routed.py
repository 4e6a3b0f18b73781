"""One chunk of one layer, routed: what :func:`moediag.routing.route` returns."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from moediag.stats.batch import LayerBatch


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
