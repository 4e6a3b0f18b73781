"""Expert parallelism what-if: rank loads, balancedness and token inflation under a placement, with the
all-to-all bytes it implies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moediag.errors import UsageError
from moediag.replay.layer import LayerReplay, ratio
from moediag.replay.placement import ReplicaPlan, balanced, hierarchical, plan_replicas
from moediag.replay.placement_file import PlacementFile, load_placement
from moediag.replay.ranks import contiguous, node_loads, rank_loads
from moediag.replay.settings import PLACEMENT_POLICIES, PlacementArg
from moediag.stats.imbalance import balancedness


def max_vio_or_none(load: torch.Tensor) -> float | None:
    from moediag.stats.imbalance import max_vio

    return max_vio(load)


#: bytes of one hidden-state element sent by the all-to-all (bf16 activations)
A2A_BYTES_PER_ELEMENT = 2


def _inflation(rank_load: torch.Tensor) -> float | None:
    """The step time of the busiest rank over that of a perfectly balanced step: max / mean rank load
    (expert compute proportional to tokens, every rank waiting for the slowest)."""
    mean = float(rank_load.double().mean()) if rank_load.numel() else 0.0
    return float(rank_load.max()) / mean if mean > 0 else None


def a2a_bytes(ranks_per_token: float, ep_size: int, hidden_size: int) -> float:
    """All-to-all bytes a token: its hidden state to each distinct rank holding one of its experts
    (dispatch) and back (combine), except the share ``1/ep_size`` of destinations that is the token's own
    rank (tokens spread evenly over ranks): ``2 * ranks * (ep - 1) / ep * H * A2A_BYTES_PER_ELEMENT``."""
    return 2 * ranks_per_token * (ep_size - 1) / ep_size * hidden_size * A2A_BYTES_PER_ELEMENT


def plan_ep(
    layers: dict[int, LayerReplay],
    ep_size: int,
    placement: PlacementArg,
    replicas: int,
    nodes: int | None = None,
    groups: dict[int, int | None] | None = None,
    target_balancedness: float | None = None,
) -> tuple[dict[int, dict[str, Any]], dict[int, list[list[int]]], ReplicaPlan | None]:
    file: PlacementFile | None = None
    if isinstance(placement, PlacementFile):
        file = placement
    elif str(placement) not in PLACEMENT_POLICIES:
        if not Path(placement).exists() and Path(placement).suffix.lower() != ".json":
            raise UsageError(
                f"--placement {placement}: expected {', '.join(PLACEMENT_POLICIES)} or a placement JSON file"
            )
        file = load_placement(placement)
    if file is not None and file.ep_size != ep_size:
        raise UsageError(f"--ep-size {ep_size} but the placement file has ep_size {file.ep_size}")
    name = "file" if file is not None else str(placement)
    out: dict[int, dict[str, Any]] = {}
    proposed: dict[int, list[list[int]]] = {}

    def place(layer: int, loads: torch.Tensor, r: int) -> list[list[int]]:
        if name == "balanced":
            return balanced(loads, ep_size, r)
        n_groups = (groups or {}).get(layer)
        if not n_groups:
            raise UsageError(
                f"layer {layer}: --placement hierarchical needs --expert-groups "
                "(the checkpoint's router has no group limit to take it from)"
            )
        return hierarchical(loads, ep_size, r, num_groups=n_groups, num_nodes=nodes or 1)

    plan: ReplicaPlan | None = None
    if target_balancedness is not None:
        loads_by_layer = {layer: acc.load_after for layer, acc in layers.items()}
        plan = plan_replicas(loads_by_layer, ep_size, target_balancedness, place)
    for layer, acc in sorted(layers.items()):
        loads = acc.load_after
        before = contiguous(acc.num_experts, ep_size)
        if file is not None:
            after = file.for_layer(layer, acc.num_experts)
        elif plan is not None:
            after = plan.layers[layer]
        elif name in ("balanced", "hierarchical"):
            after = place(layer, loads, replicas)
        else:
            after = before
        rb, ra = rank_loads(loads, before), rank_loads(loads, after)
        ranks_per_token = ratio(acc.rank_hits, acc.tokens)
        out[layer] = {
            "ep_size": ep_size,
            "placement": name,
            "replicas": sum(len(s) for s in after) - acc.num_experts,
            "rank_load_before": rb.tolist(),
            "rank_load_after": ra.tolist(),
            "balancedness_before": balancedness(rb),
            "balancedness_after": balancedness(ra),
            "busiest_rank_inflation_before": _inflation(rb),
            "busiest_rank_inflation_after": _inflation(ra),
            "a2a_ranks_per_token": ranks_per_token,
            "a2a_bytes_per_token": None
            if ranks_per_token is None
            else a2a_bytes(ranks_per_token, ep_size, acc.hidden_size),
        }
        if nodes is not None:  # ranks numbered node by node: load and balancedness per node as well
            nb, na = node_loads(rb, nodes), node_loads(ra, nodes)
            out[layer].update(
                {
                    "nodes": nodes,
                    "node_load_before": nb.tolist(),
                    "node_load_after": na.tolist(),
                    "node_balancedness_before": balancedness(nb),
                    "node_balancedness_after": balancedness(na),
                }
            )
        proposed[layer] = after
    return out, proposed, plan
