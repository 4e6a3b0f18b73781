"""Expert-parallel placement: which experts each EP rank holds, the rank loads, balancedness.

A placement of one layer is a list of ``ep_size`` ranks, each a list of expert ids (its slots). An expert
may sit on several ranks (a replica); its load is then split equally among its copies, as SGLang's and
vLLM's EPLB assume. balancedness = mean rank load / max rank load (1 = balanced; shared/design/metrics.md).

Placements:

``contiguous``  rank r holds experts ``[r*E/N, (r+1)*E/N)`` (what EP frameworks do by default)
``balanced``    DeepSeek EPLB's global policy, then improved: EPLB's replica choice (each of the R extra
                copies to the expert with the highest load per copy) and packing (heaviest copy first, to
                the least-loaded rank with a free slot; two copies of one expert may share a rank), and the
                same packing keeping copies of one expert on distinct ranks; each is then improved by a
                local search off the busiest rank (swap a copy with a lighter one elsewhere; re-assign a
                replica from one expert to another) and the better one is kept. Never worse than EPLB
                (the search only accepts steps that lower the largest rank load, or keep it and even the
                loads out); every rank holds (E + R) / N slots
``hierarchical`` DeepSeek EPLB's hierarchical policy for multi-node EP: the E experts form ``num_groups``
                equal groups (the router's group limit, ``n_group``); whole groups are packed onto
                ``num_nodes`` nodes as EPLB does (heaviest group first, to the least-loaded node with room),
                so a token's experts stay on few nodes; then each node places its own experts onto its
                ``ep_size / num_nodes`` GPUs as ``balanced`` does, with ``replicas / num_nodes`` copies.
                Same node loads as EPLB, GPU loads never worse
a file          JSON, see :func:`load_placement` (and docs/replay.md)

>>> import torch
>>> from moediag.replay import balanced, contiguous, rank_loads
>>> from moediag.stats.imbalance import balancedness
>>> loads = torch.tensor([4, 4, 1, 1])
>>> balancedness(rank_loads(loads, contiguous(4, 2)))   # ranks hold 8 and 2
0.625
>>> balanced(loads, 2)
[[0, 2], [1, 3]]
>>> balancedness(rank_loads(loads, balanced(loads, 2)))  # 5 and 5
1.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from moediag.errors import UsageError
from moediag.replay.ranks import Ranks, rank_loads
from moediag.replay.search import improved, pack, slots_per_rank
from moediag.stats.imbalance import balancedness


def balanced(loads: torch.Tensor, ep_size: int, replicas: int = 0) -> Ranks:
    """A balanced placement of one layer for these loads (see the module docstring).

    Each rank gets (E + R) / N slots. Deterministic: ties go to the lower expert and rank.
    """
    slots_per_rank(loads.numel(), ep_size, replicas)
    return improved(_as_float64(loads), ep_size, replicas)


def _as_float64(loads: torch.Tensor) -> np.ndarray:
    return loads.detach().to(torch.float64).cpu().numpy().reshape(-1)


def _node_groups(group_load: np.ndarray, num_nodes: int) -> list[list[int]]:
    """EPLB's first step: whole groups to nodes by longest-processing-time packing (float32)."""
    return [sorted(g) for g in pack(group_load.astype(np.float32), num_nodes)]


def hierarchical(
    loads: torch.Tensor, ep_size: int, replicas: int = 0, *, num_groups: int, num_nodes: int
) -> Ranks:
    """DeepSeek EPLB's hierarchical placement (see the module docstring); ranks are numbered node by node.

    >>> hierarchical(torch.tensor([9, 1, 1, 1, 5, 5, 1, 1]), 4, num_groups=4, num_nodes=2)
    [[0, 3], [1, 2], [4, 6], [5, 7]]
    """
    e = loads.numel()
    if num_nodes < 1 or num_groups < 1:
        raise UsageError("--nodes and --expert-groups must be positive")
    if e % num_groups:
        raise UsageError(f"--expert-groups {num_groups} does not divide the {e} experts of a layer")
    if num_groups % num_nodes or ep_size % num_nodes or replicas % num_nodes:
        raise UsageError(
            f"--nodes {num_nodes} must divide --expert-groups ({num_groups}), --ep-size ({ep_size}) and "
            f"--replicas ({replicas}): each node holds the same number of groups, GPUs and copies"
        )
    slots_per_rank(e, ep_size, replicas)
    gpus = ep_size // num_nodes
    slots_per_rank(e // num_nodes, gpus, replicas // num_nodes)
    size = e // num_groups
    load = _as_float64(loads)
    nodes = _node_groups(load.reshape(num_groups, size).sum(axis=1), num_nodes)
    ranks: Ranks = []
    for groups in nodes:
        experts = np.array([g * size + j for g in groups for j in range(size)], dtype=np.int64)
        local = improved(load[experts], gpus, replicas // num_nodes)
        ranks.extend(sorted(int(experts[x]) for x in slots) for slots in local)
    return ranks


@dataclass
class ReplicaPlan:
    """The fewest replicas whose placement reaches a target balancedness in every layer."""

    target: float
    replicas: int
    reached: bool
    min_balancedness: float | None  # over the layers, at ``replicas``
    layers: dict[int, Ranks]


def plan_replicas(
    layer_loads: Mapping[int, torch.Tensor],
    ep_size: int,
    target: float,
    place: Callable[[int, torch.Tensor, int], Ranks] | None = None,
    max_replicas: int | None = None,
) -> ReplicaPlan:
    """The fewest replicas R (the same in every layer, as EP frameworks configure it) for which the
    placement ``place(layer, loads, R)`` (default :func:`balanced` on ``ep_size`` ranks) reaches
    balancedness >= ``target`` in every layer.

    R runs over 0.. in steps that keep (E + R) a multiple of ``ep_size``, up to ``max_replicas`` (default
    E * (ep_size - 1): every expert on every rank). A layer without load counts as balanced. When no R
    reaches the target, the plan says so (``reached`` False) and holds the best R tried.

    >>> plan = plan_replicas({0: torch.tensor([12, 1, 1, 1, 1, 0, 0, 0])}, 4, 0.9)
    >>> plan.replicas, plan.reached, round(plan.min_balancedness, 3)
    (4, True, 1.0)
    """
    if not 0 < target <= 1:
        raise UsageError(f"--target-balancedness {target}: expected a value in (0, 1]")
    if not layer_loads:
        raise UsageError("--target-balancedness: no layer to place")
    sizes = {int(t.numel()) for t in layer_loads.values()}
    if len(sizes) != 1:
        raise UsageError("--target-balancedness needs the same number of experts in every layer")
    e = sizes.pop()
    slots_per_rank(e, ep_size, (-e) % ep_size)
    if place is None:

        def place(_layer: int, loads: torch.Tensor, r: int) -> Ranks:
            return balanced(loads, ep_size, r)

    top = e * (ep_size - 1) if max_replicas is None else max_replicas
    best: ReplicaPlan | None = None
    for r in range((-e) % ep_size, top + 1, ep_size):
        layers: dict[int, Ranks] = {}
        worst: float | None = None
        for layer, loads in sorted(layer_loads.items(), key=lambda kv: kv[0]):
            ranks = place(layer, loads, r)
            layers[layer] = ranks
            b = balancedness(rank_loads(loads, ranks))
            b = 1.0 if b is None else b
            worst = b if worst is None else min(worst, b)
            if b < target - 1e-12:
                break
        assert worst is not None
        if len(layers) == len(layer_loads) and worst >= target - 1e-12:
            return ReplicaPlan(target, r, True, worst, layers)
        if best is None or (best.min_balancedness or 0.0) < worst:
            best = ReplicaPlan(target, r, False, worst, layers)
    if best is None:
        raise UsageError(f"--target-balancedness: no replica count up to {top} fits --ep-size {ep_size}")
    # the best tried, complete over every layer
    layers = {layer: place(layer, loads, best.replicas) for layer, loads in layer_loads.items()}
    worst_all = min(balancedness(rank_loads(t, layers[k])) or 1.0 for k, t in layer_loads.items())
    return ReplicaPlan(target, best.replicas, False, worst_all, layers)
