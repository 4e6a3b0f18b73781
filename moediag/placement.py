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
>>> loads = torch.tensor([4, 4, 1, 1])
>>> balancedness(rank_loads(loads, contiguous(4, 2)))   # ranks hold 8 and 2
0.625
>>> balanced(loads, 2)
[[0, 2], [1, 3]]
>>> balancedness(rank_loads(loads, balanced(loads, 2)))  # 5 and 5
1.0
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
    "plan_replicas",
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


def _replicate(loads: np.ndarray, replicas: int) -> np.ndarray:
    """Copies per expert, EPLB's ``replicate_experts``: each extra copy goes to the expert with the highest
    load per copy (the first such expert on ties), computed in float32 as EPLB does."""
    load = loads.astype(np.float32)
    copies = np.ones(load.size, dtype=np.int64)
    for _ in range(replicas):
        copies[int(np.argmax(load / copies))] += 1
    return copies


def _pack(weights: np.ndarray, packs: int, avoid: np.ndarray | None = None) -> list[list[int]]:
    """Longest-processing-time packing into ``packs`` packs of equal size (EPLB's ``balanced_packing``).

    Items heaviest first, each to the lightest pack that has room (the lowest such pack on ties), pack
    weights summed in float32 as EPLB does. With ``avoid`` (an expert id per item), a pack already holding
    a copy of the same expert is skipped when another has room (moediag's former packing).
    """
    n = weights.size
    per = n // packs
    if per == 1:  # as EPLB: item i to pack i
        return [[i] for i in range(n)]
    w32 = weights.astype(np.float32)
    order = np.argsort(-w32, kind="stable").tolist()  # heaviest first, ties by index
    heap = [(0.0, p) for p in range(packs)]  # (float32 total, pack): the lightest pack, lowest on ties
    held: list[list[int]] = [[] for _ in range(packs)]
    kinds: list[set[int]] = [set() for _ in range(packs)]
    for i in order:
        kind = None if avoid is None else int(avoid[i])
        skipped: list[tuple[float, int]] = []
        while heap:
            total, p = heapq.heappop(heap)
            if kind is None or kind not in kinds[p]:
                break
            skipped.append((total, p))
        else:  # every pack with room holds this expert already: the lightest of them
            total, p = skipped.pop(0)
        for item in skipped:
            heapq.heappush(heap, item)
        held[p].append(i)
        if kind is not None:
            kinds[p].add(kind)
        if len(held[p]) < per:
            heapq.heappush(heap, (float(np.float32(total) + w32[i]), p))
    return held


def _eplb_start(load: np.ndarray, ep_size: int, copies: np.ndarray, distinct: bool) -> np.ndarray:
    """EPLB's placement for these copies: slots [N, S] of expert ids (S = (E + R) / N)."""
    experts = np.repeat(np.arange(load.size), copies)
    per_copy = (load.astype(np.float32) / copies.astype(np.float32))[experts]
    held = _pack(per_copy, ep_size, experts if distinct else None)
    return np.array([[int(experts[i]) for i in items] for items in held], dtype=np.int64)


class _Search:
    """Local search over a placement with fixed slots per rank: loads in float64, objective the largest
    rank load, then the sum of squared rank loads (so every accepted step strictly improves and the
    search ends). Steps, each off the busiest rank:

    * swap a copy on the busiest rank with a lighter copy on another rank;
    * re-assign a replica: a slot holding one of several copies of expert x takes a copy of expert y
      instead (x's other copies get heavier, y's lighter), where the slot or y is on the busiest rank.
    """

    def __init__(self, load: np.ndarray, slots: np.ndarray) -> None:
        self.load = load
        self.slots = slots.copy()
        n, _ = slots.shape
        e = load.size
        self.held = np.zeros((n, e), dtype=np.int64)
        np.add.at(self.held, (np.repeat(np.arange(n), slots.shape[1]), slots.reshape(-1)), 1)
        self.copies = self.held.sum(axis=0)
        self._refresh()

    def _refresh(self) -> None:
        self.per_copy = self.load / self.copies
        self.totals = self.per_copy[self.slots].sum(axis=1)

    def objective(self) -> tuple[float, float]:
        return float(self.totals.max()), float(np.square(self.totals).sum())

    def run(self, max_steps: int) -> None:
        scale = max(float(self.load.sum()), 1e-300)
        self.tol = 1e-12 * scale
        for _ in range(max_steps):
            if not (self._swap() or self._move_replica()):
                break

    def _swap(self) -> bool:
        t = self.totals
        b = int(np.argmax(t))
        w = self.per_copy[self.slots]  # [N, S]
        d = w[b][:, None, None] - w[None, :, :]  # [S, N, S]: the load moved off b by each swap
        pair_max = np.maximum(t[b] - d, t[None, :, None] + d)
        ok = d > self.tol
        ok[:, b, :] = False
        if not ok.any():
            return False
        pair_max = np.where(ok, pair_max, np.inf)
        best = int(np.argmin(pair_max))
        if not pair_max.flat[best] < t[b] - self.tol:
            return False
        s, r, j = np.unravel_index(best, d.shape)
        x, y = int(self.slots[b, s]), int(self.slots[r, j])
        self.slots[b, s], self.slots[r, j] = y, x
        self.held[b, x] -= 1
        self.held[b, y] += 1
        self.held[r, y] -= 1
        self.held[r, x] += 1
        self.totals = self.per_copy[self.slots].sum(axis=1)
        return True

    def _move_replica(self) -> bool:
        t, load, copies, held, slots = self.totals, self.load, self.copies, self.held, self.slots
        b = int(np.argmax(t))
        spare = copies[slots] >= 2  # [N, S]: slots whose expert has another copy
        if not spare.any():
            return False
        e = load.size
        # candidate moves (slot (r0, j) holding x gives its place to a copy of y): the spare slots on b
        # against every other expert, and the spare slots elsewhere against the experts on b
        on_b = np.unique(slots[b])
        j_b = np.flatnonzero(spare[b])
        r_o, j_o = np.nonzero(spare)
        keep = r_o != b
        r_o, j_o = r_o[keep], j_o[keep]
        r0 = np.concatenate([np.full(j_b.size * e, b), np.repeat(r_o, on_b.size)])
        j = np.concatenate([np.repeat(j_b, e), np.repeat(j_o, on_b.size)])
        y = np.concatenate([np.tile(np.arange(e), j_b.size), np.tile(on_b, r_o.size)])
        x = slots[r0, j]
        ok = x != y
        r0, j, x, y = r0[ok], j[ok], x[ok], y[ok]
        if r0.size == 0:
            return False
        lose = load / np.maximum(copies - 1, 1)  # per-copy load of x with one copy fewer
        gain = load / (copies + 1)  # per-copy load of y with one more copy
        dx, dy = lose - self.per_copy, gain - self.per_copy
        new = t[None, :] + held[:, x].T * dx[x][:, None] + held[:, y].T * dy[y][:, None]  # [P, N]
        new[np.arange(r0.size), r0] += gain[y] - lose[x]
        mx = new.max(axis=1)
        sq = np.square(new).sum(axis=1)
        k = int(np.lexsort((sq, mx))[0])
        cur = self.objective()
        if not (
            mx[k] < cur[0] - self.tol or (mx[k] <= cur[0] + self.tol and sq[k] < cur[1] - self.tol * cur[0])
        ):
            return False
        rk, jk, xk, yk = int(r0[k]), int(j[k]), int(x[k]), int(y[k])
        slots[rk, jk] = yk
        held[rk, xk] -= 1
        held[rk, yk] += 1
        copies[xk] -= 1
        copies[yk] += 1
        self._refresh()
        return True


def _duplicates(slots: np.ndarray) -> int:
    return sum(len(row) - len(set(row.tolist())) for row in slots)


def _improved(load: np.ndarray, ep_size: int, replicas: int) -> Ranks:
    """EPLB's replica choice and packing, and a variant that keeps copies of one expert on distinct ranks,
    each improved by local search; the better (lower max rank load, then fewer same-rank copies) wins."""
    copies = _replicate(load, replicas)
    steps = 8 * (load.size + replicas) + 64
    best: tuple[float, int] | None = None
    out: np.ndarray | None = None
    for distinct in (False, True) if replicas else (False,):  # without replicas both starts agree
        search = _Search(load, _eplb_start(load, ep_size, copies, distinct))
        search.run(steps)
        key = (search.objective()[0], _duplicates(search.slots))
        if (
            best is None
            or key[0] < best[0] - 1e-12 * max(float(load.sum()), 1e-300)
            or (key[0] <= best[0] + 1e-12 * max(float(load.sum()), 1e-300) and key[1] < best[1])
        ):
            best, out = key, search.slots
    assert out is not None
    return [sorted(int(x) for x in row) for row in out]


def _slots_per_rank(num_experts: int, ep_size: int, replicas: int) -> int:
    if ep_size < 1:
        raise UsageError("--ep-size must be positive")
    if replicas < 0:
        raise UsageError("--replicas must be 0 or more")
    slots_total = num_experts + replicas
    if slots_total % ep_size:
        raise UsageError(
            f"experts + replicas = {num_experts} + {replicas} is not a multiple of --ep-size {ep_size} "
            "(every rank must hold the same number of slots)"
        )
    return slots_total // ep_size


def balanced(loads: torch.Tensor, ep_size: int, replicas: int = 0) -> Ranks:
    """A balanced placement of one layer for these loads (see the module docstring).

    Each rank gets (E + R) / N slots. Deterministic: ties go to the lower expert and rank.
    """
    _slots_per_rank(loads.numel(), ep_size, replicas)
    return _improved(_as_float64(loads), ep_size, replicas)


def _as_float64(loads: torch.Tensor) -> np.ndarray:
    return loads.detach().to(torch.float64).cpu().numpy().reshape(-1)


def _node_groups(group_load: np.ndarray, num_nodes: int) -> list[list[int]]:
    """EPLB's first step: whole groups to nodes by longest-processing-time packing (float32)."""
    return [sorted(g) for g in _pack(group_load.astype(np.float32), num_nodes)]


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
    _slots_per_rank(e, ep_size, replicas)
    gpus = ep_size // num_nodes
    _slots_per_rank(e // num_nodes, gpus, replicas // num_nodes)
    size = e // num_groups
    load = _as_float64(loads)
    nodes = _node_groups(load.reshape(num_groups, size).sum(axis=1), num_nodes)
    ranks: Ranks = []
    for groups in nodes:
        experts = np.array([g * size + j for g in groups for j in range(size)], dtype=np.int64)
        local = _improved(load[experts], gpus, replicas // num_nodes)
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
    _slots_per_rank(e, ep_size, (-e) % ep_size)
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
