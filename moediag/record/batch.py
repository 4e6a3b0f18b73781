"""Turning one forward's captures into the per-token tensors of a v1 trace."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from moediag.errors import MoediagError
from moediag.record.capture import LayerCapture

IGNORE_INDEX = -100


def id_dtype(num_experts: int) -> torch.dtype:
    return torch.int16 if num_experts <= torch.iinfo(torch.int16).max else torch.int32


def outcomes(lm_logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``correct`` (argmax == target) and per-token cross-entropy, for rows whose target is known."""
    z = lm_logits.float()
    correct = z.argmax(-1) == targets
    loss = F.cross_entropy(z, targets, reduction="none")
    return correct, loss


def assemble(
    captures: dict[int, LayerCapture],
    layers: list[int],
    *,
    rows: torch.Tensor,
    input_ids: torch.Tensor | None,
    positions: torch.Tensor,
    sequence_ids: torch.Tensor,
    lm_logits: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    step: int | None = None,
    domain: int | torch.Tensor | None = None,
    router_inputs: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-token trace tensors for the flattened rows ``rows`` (indices into the ``B*S`` tokens).

    ``lm_logits`` ``[B*S, V]`` and ``targets`` ``[B*S]`` give ``tokens.correct`` and ``tokens.loss``; the
    caller keeps only rows whose target is known.
    """
    n_total = positions.shape[0]
    out: dict[str, torch.Tensor] = {}
    for layer in layers:
        cap = captures.get(layer)
        if cap is None:
            raise MoediagError(f"the router of layer {layer} did not run during this forward")
        if cap.logits.shape[0] != n_total:
            raise MoediagError(
                f"layer {layer}: the router saw {cap.logits.shape[0]} tokens but the batch holds {n_total}"
            )
        out[f"layers.{layer}.router_logits"] = cap.logits[rows]
        if cap.topk_ids is not None:
            out[f"layers.{layer}.topk_ids"] = cap.topk_ids[rows].to(id_dtype(cap.logits.shape[1]))
        if router_inputs:
            if cap.router_input is None:
                raise MoediagError(f"layer {layer}: the router input was not captured")
            out[f"layers.{layer}.router_input"] = cap.router_input[rows]
    if input_ids is not None:
        out["tokens.input_ids"] = input_ids[rows].to(torch.int32)
    out["tokens.positions"] = positions[rows].to(torch.int32)
    out["tokens.sequence_ids"] = sequence_ids[rows].to(torch.int64)
    if lm_logits is not None and targets is not None:
        correct, loss = outcomes(lm_logits[rows.to(lm_logits.device)], targets[rows].to(lm_logits.device))
        out["tokens.correct"] = correct.cpu()
        out["tokens.loss"] = loss.cpu()
    if step is not None:
        out["tokens.step"] = torch.full((rows.shape[0],), step, dtype=torch.int64)
    if isinstance(domain, torch.Tensor):
        out["tokens.domain"] = domain[rows].to(torch.int32)
    elif domain is not None:
        out["tokens.domain"] = torch.full((rows.shape[0],), domain, dtype=torch.int32)
    return out


def bytes_per_token(batch: dict[str, torch.Tensor]) -> int:
    """Bytes one token adds to a shard (per-token tensors only)."""
    total = 0
    for t in batch.values():
        total += math.prod(t.shape[1:]) * t.element_size()
    return total
