"""Expert-parallel placement: which experts each EP rank holds, the rank loads, balancedness.

A placement of one layer is a list of ``ep_size`` ranks, each a list of expert ids (its slots). An expert
may sit on several ranks (a replica); its load is then split equally among its copies, as SGLang's and
vLLM's EPLB assume. balancedness = mean rank load / max rank load (1 = balanced; shared/design/metrics.md).

Placements:

``contiguous``  rank r holds experts ``[r*E/N, (r+1)*E/N)`` (what EP frameworks do by default)
``balanced``    greedy longest-processing-time packing of the measured loads, every rank holding the same
                number of slots; with ``replicas`` R > 0, EPLB-style: first give the R extra copies one at a
                time to the expert with the highest load per copy, then pack the E + R copies (each at load /
                copies), never two copies of one expert on one rank when it can be avoided
``hierarchical`` DeepSeek EPLB's hierarchical policy for multi-node EP: the E experts form ``num_groups``
                equal groups (the router's group limit, ``n_group``); whole groups are packed onto
                ``num_nodes`` nodes (heaviest group first, to the least-loaded node with room), so a token's
                experts stay on few nodes; then each node replicates and packs its own experts onto its
                ``ep_size / num_nodes`` GPUs as ``balanced`` does, with ``replicas / num_nodes`` copies
a file          JSON, see :func:`load_placement` (and docs/replay.md)

>>> import torch
>>> loads = torch.tensor([4, 4, 1, 1])
>>> balancedness(rank_loads(loads, contiguous(4, 2)))   # ranks hold 8 and 2
0.625
>>> balanced(loads, 2)
[[0, 2], [1, 3]]
>>> balancedness(rank_loads(loads, balanced(loads, 2)))  # 5 and 5
1.0
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from moediag.errors import InvalidInputError, UsageError
from moediag.io.atomic import write_atomic
from moediag.stats.imbalance import balancedness

__all__ = [
    "PLACEMENT_FORMAT",
    "PlacementFile",
    "balanced",
    "balancedness",
    "check_placement",
    "contiguous",
    "hierarchical",
    "load_placement",
    "rank_loads",
    "save_placement",
]

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
    return torch.tensor([float(per_copy[list(slots)].sum()) if slots else 0.0 for slots in ranks])


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


def _replicate(loads: torch.Tensor, replicas: int) -> torch.Tensor:
    """Copies per expert: each extra copy goes to the expert with the highest load per copy."""
    load = loads.to(torch.float64)
    copies = torch.ones(load.numel(), dtype=torch.int64)
    for _ in range(replicas):
        per = load / copies
        copies[int(torch.argmax(per))] += 1
    return copies


def balanced(loads: torch.Tensor, ep_size: int, replicas: int = 0) -> Ranks:
    """A balanced placement of one layer for these loads: greedy, or EPLB-style with ``replicas``.

    Each rank gets (E + R) / N slots; heaviest copies first, each to the least-loaded rank that has a
    free slot (and, when possible, no copy of the same expert yet). Ties go to the lower rank, so the
    result is deterministic.
    """
    e = loads.numel()
    if ep_size < 1:
        raise UsageError("--ep-size must be positive")
    if replicas < 0:
        raise UsageError("--replicas must be 0 or more")
    slots_total = e + replicas
    if slots_total % ep_size:
        raise UsageError(
            f"experts + replicas = {e} + {replicas} is not a multiple of --ep-size {ep_size} "
            "(every rank must hold the same number of slots)"
        )
    per_rank = slots_total // ep_size
    copies = _replicate(loads, replicas)
    load = loads.to(torch.float64)
    items = [(float(load[x]) / int(copies[x]), x) for x in range(e) for _ in range(int(copies[x]))]
    items.sort(key=lambda t: (-t[0], t[1]))
    ranks: Ranks = [[] for _ in range(ep_size)]
    totals = [0.0] * ep_size
    for w, x in items:
        open_ranks = [r for r in range(ep_size) if len(ranks[r]) < per_rank]
        fresh = [r for r in open_ranks if x not in ranks[r]] or open_ranks
        r = min(fresh, key=lambda i: (totals[i], i))
        ranks[r].append(x)
        totals[r] += w
    return [sorted(slots) for slots in ranks]


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
    size = e // num_groups
    load = loads.to(torch.float64)
    group_load = load.view(num_groups, size).sum(dim=1)
    per_node = num_groups // num_nodes
    nodes: list[list[int]] = [[] for _ in range(num_nodes)]
    totals = [0.0] * num_nodes
    for g in sorted(range(num_groups), key=lambda g: (-float(group_load[g]), g)):
        n = min((i for i in range(num_nodes) if len(nodes[i]) < per_node), key=lambda i: (totals[i], i))
        nodes[n].append(g)
        totals[n] += float(group_load[g])
    gpus = ep_size // num_nodes
    ranks: Ranks = []
    for groups in nodes:
        experts = [g * size + j for g in sorted(groups) for j in range(size)]
        local = balanced(load[experts], gpus, replicas // num_nodes)
        ranks.extend(sorted(experts[x] for x in slots) for slots in local)
    return ranks


def node_loads(rank_load: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Load per node when ranks are numbered node by node (``ep_size / num_nodes`` each)."""
    return rank_load.view(num_nodes, -1).sum(dim=1)


class PlacementFile:
    """A placement read from JSON: per-layer rank lists, with an optional default for other layers."""

    def __init__(
        self, ep_size: int, layers: Mapping[int, Ranks], default: Ranks | None = None, path: str | None = None
    ) -> None:
        self.ep_size = ep_size
        self.layers = dict(layers)
        self.default = default
        self.path = path

    def for_layer(self, layer: int, num_experts: int) -> Ranks:
        ranks = self.layers.get(layer, self.default)
        if ranks is None:
            raise InvalidInputError(f'no placement for layer {layer} (and no "default")', self.path)
        check_placement(ranks, num_experts, self.path)
        return ranks


def _ranks(value: Any, ep_size: int, what: str, where: str) -> Ranks:
    if not isinstance(value, list) or not all(isinstance(r, list) for r in value):
        raise InvalidInputError(f"{what}: expected a list of ranks, each a list of expert ids", where)
    if len(value) != ep_size:
        raise InvalidInputError(f"{what}: {len(value)} ranks but ep_size is {ep_size}", where)
    return [list(r) for r in value]


def load_placement(path: str | os.PathLike[str]) -> PlacementFile:
    """Read a placement file::

        {"format": "moediag-placement", "version": 1, "ep_size": 2,
         "layers": {"0": [[0, 3], [1, 2]], "1": [[0, 1], [2, 3]]},
         "default": [[0, 1], [2, 3]]}

    ``format``/``version`` are optional on input; ``default`` (optional) covers layers not listed.
    """
    where = os.fspath(path)
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidInputError("placement file not found", where) from None
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"placement file is not valid JSON: {exc}", where) from None
    if not isinstance(doc, dict):
        raise InvalidInputError("placement file must hold a JSON object", where)
    if doc.get("format", PLACEMENT_FORMAT) != PLACEMENT_FORMAT:
        raise InvalidInputError(f"format is {doc.get('format')!r}, expected {PLACEMENT_FORMAT!r}", where)
    ep = doc.get("ep_size")
    if not isinstance(ep, int) or isinstance(ep, bool) or ep < 1:
        raise InvalidInputError("ep_size must be a positive integer", where)
    layers_doc = doc.get("layers", {})
    if not isinstance(layers_doc, dict):
        raise InvalidInputError("layers must be an object keyed by layer index", where)
    layers: dict[int, Ranks] = {}
    for key, value in layers_doc.items():
        try:
            layer = int(key)
        except ValueError:
            raise InvalidInputError(f"layers: key {key!r} is not a layer index", where) from None
        layers[layer] = _ranks(value, ep, f"layers.{key}", where)
    default = _ranks(doc["default"], ep, "default", where) if doc.get("default") is not None else None
    if not layers and default is None:
        raise InvalidInputError("placement file has no layers and no default", where)
    return PlacementFile(ep, layers, default, where)


def placement_document(ep_size: int, layers: Mapping[int, Ranks], replicas: int = 0) -> dict[str, Any]:
    return {
        "format": PLACEMENT_FORMAT,
        "version": PLACEMENT_VERSION,
        "ep_size": ep_size,
        "replicas": replicas,
        "layers": {str(k): v for k, v in sorted(layers.items())},
    }


def save_placement(
    path: str | os.PathLike[str], ep_size: int, layers: Mapping[int, Ranks], replicas: int = 0
) -> None:
    """Write a placement file that :func:`load_placement` reads back (atomic replace)."""
    target = Path(path)
    write_atomic(target, json.dumps(placement_document(ep_size, layers, replicas), indent=1) + "\n")
