"""What every per-token accumulator consumes: one chunk of one layer, routed and masked."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerBatch:
    """Valid tokens of one chunk for one layer (padding and non-finite rows already removed).

    ``ids`` are the experts the model chose (the recorded ``topk_ids`` when present), -1 for an empty slot;
    ``top1`` is the first choice. Logit-derived fields are None for traces that only hold top-k ids.
    """

    num_experts: int
    top_k: int
    ids: torch.Tensor  # [n, k] int64
    top1: torch.Tensor  # [n] int64
    index: torch.Tensor  # [n] int64, global token index
    weights: torch.Tensor | None = None  # [n, k] gate weight of each choice (for the "probs" drop policy)
    logits: torch.Tensor | None = None  # [n, E] float32
    probs: torch.Tensor | None = None  # [n, E] distribution over experts (losses, entropy)
    margin: torch.Tensor | None = None  # [n] top-k boundary margin
    hf_ids: torch.Tensor | None = None  # [n, k] softmax-then-top-k of the logits, as transformers' aux loss
    entropy: torch.Tensor | None = None  # [n] entropy of ``probs`` when the caller has it (saves a log pass)
    confidence: torch.Tensor | None = None  # [n] max of ``probs`` when the caller has it
    lse: torch.Tensor | None = None  # [n] logsumexp of the logits
    softmax: torch.Tensor | None = None  # [n, E] softmax of the logits (transformers' aux loss)
    sequence_ids: torch.Tensor | None = None  # [n]
    positions: torch.Tensor | None = None  # [n]
    step: torch.Tensor | None = None  # [n]
    correct: torch.Tensor | None = None  # [n] bool, tokens.correct
    loss: torch.Tensor | None = None  # [n] float64, tokens.loss
    domain: torch.Tensor | None = None  # [n] int64, tokens.domain
    input_ids: torch.Tensor | None = None  # [n] int64, tokens.input_ids
    #: True when ``ids`` (and ``hf_ids``) are known to hold no empty slot (the router chose them): skips
    #: the -1 checks. False means "may hold -1", not "holds -1".
    filled: bool = False

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def select(self, keep: torch.Tensor) -> LayerBatch:
        """The rows where ``keep`` is true."""
        out = LayerBatch(self.num_experts, self.top_k, self.ids[keep], self.top1[keep], self.index[keep])
        out.filled = self.filled
        for name in (
            "weights",
            "logits",
            "probs",
            "margin",
            "hf_ids",
            "entropy",
            "confidence",
            "lse",
            "softmax",
            "sequence_ids",
            "positions",
            "step",
            "correct",
            "loss",
            "domain",
            "input_ids",
        ):
            value = getattr(self, name)
            setattr(out, name, None if value is None else value[keep])
        return out
