"""Ranks: which experts each EP rank holds (``Ranks``, one list of expert ids per rank), the contiguous
default, the load of each rank and of each node.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moediag.errors import InvalidInputError, UsageError

PLACEMENT_FORMAT = "moediag-placement"
PLACEMENT_VERSION = 1

Ranks = list[list[int]]


def contiguous(num_experts: int, ep_size: int) -> Ranks:
    """Rank r holds experts r*E/N .. (r+1)*E/N - 1. E must be a multiple of N."""
    if ep_size < 1:
        raise UsageError("--ep-size must be positive")
    if num_experts % ep_size:
        raise UsageError(f"--ep-size {ep_size} does not divide the {num_experts} experts of a layer")
    per = num_experts // ep_size
    return [list(range(r * per, (r + 1) * per)) for r in range(ep_size)]


def rank_loads(loads: torch.Tensor, ranks: Sequence[Sequence[int]]) -> torch.Tensor:
    """Load of each rank (float64 [N]): the sum over its slots of the expert's load / its copies."""
    e = loads.numel()
    copies = torch.zeros(e, dtype=torch.float64)
    for slots in ranks:
        for x in slots:
            copies[x] += 1
    per_copy = loads.to(torch.float64) / copies.clamp_min(1)
    return torch.tensor(
        [float(per_copy[list(slots)].sum()) if slots else 0.0 for slots in ranks], dtype=torch.float64
    )


def check_placement(ranks: Sequence[Sequence[int]], num_experts: int, where: str | None = None) -> None:
    """Every id in range and every expert placed at least once."""
    seen: set[int] = set()
    for r, slots in enumerate(ranks):
        for x in slots:
            if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x < num_experts:
                raise InvalidInputError(f"rank {r} holds expert {x!r}, outside 0..{num_experts - 1}", where)
            seen.add(x)
    missing = sorted(set(range(num_experts)) - seen)
    if missing:
        raise InvalidInputError(
            f"expert {missing[0]} is on no rank ({len(missing)} experts unplaced of {num_experts})", where
        )


def node_loads(rank_load: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Load per node when ranks are numbered node by node (``ep_size / num_nodes`` each)."""
    return rank_load.view(num_nodes, -1).sum(dim=1)
