"""Helpers for the tests against the training frameworks' own code (the optional ``refs`` extra)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from moediag.analysis import analyze_trace
from moediag.stats import StatsOptions
from tests.conftest import trace_metadata


def layer_row(
    make_trace: Callable[..., Path],
    logits: torch.Tensor,
    top_k: int,
    score_function: str,
    *,
    bias: torch.Tensor | None = None,
    capacity_factor: float = 1.0,
    min_capacity: int = 0,
    **metadata: object,
) -> dict:
    """moediag's figures for one layer of these logits, all tokens one sequence (one capacity group),
    positions 0..n-1."""
    n, e = logits.shape
    tensors = {
        "layers.0.router_logits": logits.float(),
        "tokens.sequence_ids": torch.zeros(n, dtype=torch.int64),
        "tokens.positions": torch.arange(n, dtype=torch.int64),
    }
    if bias is not None:
        tensors["layers.0.selection_bias"] = bias.float()
    meta = trace_metadata(e, top_k, score_function, **{k: str(v) for k, v in metadata.items()})
    path = make_trace(tensors=tensors, metadata=meta)
    options = StatsOptions(capacity_factors=(capacity_factor,), min_capacity=min_capacity)
    return analyze_trace(path, options=options).to_dict(detail=True)["layers"][0]


def bucket_counts(ids_dropped_positions: torch.Tensor) -> list[int]:
    """Dropped assignments per moediag position bucket, from the positions of the dropped ones."""
    from moediag.stats.capacity import POSITION_EDGES

    edges = torch.tensor(POSITION_EDGES[1:])
    b = torch.bucketize(ids_dropped_positions, edges, right=True)
    return torch.bincount(b, minlength=len(POSITION_EDGES)).tolist()
