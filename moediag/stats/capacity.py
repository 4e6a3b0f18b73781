"""Capacity-drop rates: what share of assignments a capacity limit would drop.

Capacity per expert C = ceil(CF * k * n_g / E) for a capacity group of n_g tokens (Megatron
``get_capacity``). A group is a sequence (a run of equal ``tokens.sequence_ids``) or, without sequence
ids, a block of ``group_tokens`` consecutive tokens. Within a group, an expert keeps its first C
assignments; which come first depends on the policy:

``position``  token order (later tokens drop first, OpenMoE's drop-towards-the-end)
``probs``     highest gate weight first (lowest-weight assignments drop first; ties by token order)

Drop rate = dropped assignments / assignments, over all groups; also per position bucket (the token's
position in its sequence, from ``tokens.positions`` or its offset in the group).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import torch

from moediag.stats.batch import LayerBatch
from moediag.stats.runs import RunAccumulator

CAPACITY_FACTORS = (1.0, 1.25, 1.5, 2.0)
POLICIES = ("position", "probs")
#: position bucket lower edges; the last bucket is open-ended
POSITION_EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_GROUP_TOKENS = 4096


def bucket_labels() -> list[str]:
    labels = []
    for i, lo in enumerate(POSITION_EDGES):
        hi = POSITION_EDGES[i + 1] if i + 1 < len(POSITION_EDGES) else None
        labels.append(f"{lo}-{hi - 1}" if hi is not None else f"{lo}+")
    return labels


def _order_by_key_then_weight(key: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Order by key, then by descending weight, then by position (a stable sort).

    Non-negative float32 weights order like their bit patterns read as integers, so key and weight pack
    exactly into one int64; other weights fall back to a float64 key with the weight scaled below 1.
    """
    w = weights.float()
    if bool((w >= 0).all()) and bool(torch.isfinite(w).all()) and int(key.max()) < (1 << 30):
        bits = torch.where(w > 0, w, torch.zeros_like(w)).view(torch.int32).to(torch.int64)
        return torch.sort((key << 32) | (0x7FFFFFFF - bits), stable=True).indices
    wd = weights.double()
    span = float(wd.max() - wd.min())
    frac = (wd.max() - wd) / (span * 1.000001) if span > 0 else torch.zeros_like(wd)
    return torch.sort(key.double() + frac, stable=True).indices


def flat_ids_valid_mask(ids: torch.Tensor) -> torch.Tensor:
    return ids.reshape(-1) >= 0


def _position_ranks(ids: torch.Tensor, lengths: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Rank of each assignment among its expert's assignments in the same run, in token order.

    A running count per expert (cumulative sum of the one-hot choices) minus the count at the run's
    start: O(n E) memory-bound work instead of a sort (chunks are sized so n E stays ~16M).
    """
    n, k = ids.shape
    onehot = torch.zeros(n + 1, num_experts, dtype=torch.int32)
    rows = torch.arange(1, n + 1).unsqueeze(1).expand(n, k)
    ok = ids >= 0
    onehot[rows[ok], ids[ok]] = 1
    running = torch.cumsum(onehot, dim=0)  # running[t + 1, e] = choices of e among tokens 0..t
    starts = torch.cumsum(lengths, 0) - lengths
    run = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    base = running[starts[run]]  # [n, E] counts before each token's run
    safe = ids.clamp_min(0)
    rank = running[1:].gather(1, safe) - base.gather(1, safe) - 1
    return rank.reshape(-1).to(torch.int64)


class CapacityStats(RunAccumulator):
    def __init__(
        self,
        num_experts: int,
        top_k: int,
        capacity_factors: tuple[float, ...] = CAPACITY_FACTORS,
        group_tokens: int = DEFAULT_GROUP_TOKENS,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.capacity_factors = tuple(capacity_factors)
        self.group_tokens = group_tokens
        nb = len(POSITION_EDGES)
        self.assignments = torch.zeros(nb, dtype=torch.int64)  # per position bucket
        self.dropped = {p: torch.zeros(len(self.capacity_factors), nb, dtype=torch.int64) for p in POLICIES}
        self.has_weights = True

    def update(self, batch: LayerBatch) -> None:
        if len(batch) == 0:
            return
        if batch.weights is None:
            self.has_weights = False
        gids = batch.sequence_ids if batch.sequence_ids is not None else batch.index // self.group_tokens
        rows = {"ids": batch.ids}
        rows["weights"] = batch.weights if batch.weights is not None else torch.zeros(batch.ids.shape)
        if batch.positions is not None:
            rows["positions"] = batch.positions.to(torch.int64)
        self.update_rows(gids.to(torch.int64), rows)

    def _finalize(self, rows: dict[str, torch.Tensor], lengths: torch.Tensor) -> None:
        ids = rows["ids"]
        n, k = ids.shape
        e = self.num_experts
        run = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
        if "positions" in rows:
            pos = rows["positions"]
        else:
            starts = torch.cumsum(lengths, 0) - lengths
            pos = torch.arange(n, dtype=torch.int64) - starts[run]
        edges = torch.tensor(POSITION_EDGES[1:], dtype=torch.int64)
        bucket = torch.bucketize(pos.clamp_min(0), edges, right=True)
        flat_ids = ids.reshape(-1)
        a_run = run.unsqueeze(1).expand(n, k).reshape(-1)
        a_bucket = bucket.unsqueeze(1).expand(n, k).reshape(-1)
        weights = rows["weights"].reshape(-1)
        if bool((flat_ids < 0).any()):
            valid = flat_ids >= 0
            a_run, a_bucket, flat_ids, weights = (
                a_run[valid],
                a_bucket[valid],
                flat_ids[valid],
                weights[valid],
            )
        key = a_run * e + flat_ids
        nb = len(POSITION_EDGES)
        self.assignments += torch.bincount(a_bucket, minlength=nb)
        # capacity per run and factor, in exact integer arithmetic: ceil(CF * k * n_g / E)
        caps = []
        for cf in self.capacity_factors:
            frac_cf = Fraction(cf).limit_denominator(10_000)
            num = frac_cf.numerator * k * lengths
            den = frac_cf.denominator * e
            caps.append((num + den - 1) // den)
        capacity = torch.stack(caps, dim=1)  # [runs, factors]
        runs = lengths.numel()
        if n < 2 or bool(((bucket[1:] >= bucket[:-1]) | (run[1:] != run[:-1])).all()):
            self._add_position_drops(key, a_bucket, capacity, runs)
        else:
            ranks = _position_ranks(ids, lengths, e)
            if ranks.numel() != key.numel():
                ranks = ranks[flat_ids_valid_mask(ids)]
            self._add_ranked_drops("position", ranks, a_run, a_bucket, capacity)
        self._add_weight_drops(key, weights, a_bucket, capacity, runs)

    def _add_weight_drops(
        self,
        key: torch.Tensor,
        weights: torch.Tensor,
        a_bucket: torch.Tensor,
        capacity: torch.Tensor,
        runs: int,
    ) -> None:
        """The ``probs`` policy: each (run, expert) group keeps its C highest-weight assignments.

        Only groups over the smallest capacity can drop anything, so just their assignments are ordered
        (by group, then descending weight, then token order). In that order an assignment's rank is its
        place minus where its group starts; ranks are used where they fall, never scattered back.
        """
        e = self.num_experts
        group_count = torch.bincount(key, minlength=runs * e)
        min_cap = capacity.min(dim=1).values.repeat_interleave(e)  # per (run, expert) group
        risky = group_count > min_cap
        if not bool(risky.any()):
            return
        sel = torch.nonzero(risky.index_select(0, key)).squeeze(1)
        sub_key = key.index_select(0, sel)
        order = _order_by_key_then_weight(sub_key, weights.index_select(0, sel))
        sorted_key = sub_key.index_select(0, order)
        sub_count = torch.where(risky, group_count, 0)
        starts = torch.cumsum(sub_count, 0) - sub_count
        ranks = torch.arange(sorted_key.numel(), dtype=torch.int64) - starts.index_select(0, sorted_key)
        # only ranks at or past the group's smallest capacity are dropped at any factor
        dropping = torch.nonzero(ranks >= min_cap.index_select(0, sorted_key)).squeeze(1)
        if not dropping.numel():
            return
        sorted_key = sorted_key.index_select(0, dropping)
        bucket = a_bucket.index_select(0, sel.index_select(0, order.index_select(0, dropping)))
        self._add_ranked_drops("probs", ranks.index_select(0, dropping), sorted_key // e, bucket, capacity)

    def _add_ranked_drops(
        self,
        policy: str,
        ranks: torch.Tensor,
        a_run: torch.Tensor,
        a_bucket: torch.Tensor,
        capacity: torch.Tensor,
    ) -> None:
        """Add drops per bucket and factor for assignments with known ranks in their (run, expert) group."""
        nb, nf = len(POSITION_EDGES), capacity.shape[1]
        # an assignment dropped at factor j is dropped at every smaller factor: count at how many
        dropped_at = (ranks.unsqueeze(1) >= capacity[a_run]).sum(dim=1)
        hist = torch.bincount(a_bucket * (nf + 1) + dropped_at, minlength=nb * (nf + 1)).view(nb, nf + 1)
        tail = hist.flip(1).cumsum(1).flip(1)  # tail[:, d] = assignments with dropped_at >= d
        self.dropped[policy] += tail[:, 1:].T.contiguous()  # dropped at factor j <=> dropped_at > j

    def _add_position_drops(
        self, key: torch.Tensor, a_bucket: torch.Tensor, capacity: torch.Tensor, runs: int
    ) -> None:
        """Position policy when buckets never go backwards inside a run (positions grow in token order):
        each (run, expert) keeps its first C assignments, so the drops in a bucket follow from the counts
        per (run, expert, bucket) and their running sum, with no per-assignment ranks."""
        e, nb = self.num_experts, len(POSITION_EDGES)
        counts = torch.bincount(key * nb + a_bucket, minlength=runs * e * nb).view(runs, e, nb)
        hi = counts.cumsum(dim=2)
        lo = hi - counts
        for j in range(capacity.shape[1]):
            c = capacity[:, j].view(runs, 1, 1)
            dropped = (hi - c).clamp_min(0) - (lo - c).clamp_min(0)
            self.dropped["position"][j] += dropped.sum(dim=(0, 1))

    def _merge_sums(self, other: RunAccumulator) -> None:
        assert isinstance(other, CapacityStats)
        self.assignments += other.assignments
        for p in POLICIES:
            self.dropped[p] += other.dropped[p]
        self.has_weights = self.has_weights and other.has_weights

    def compute(self) -> dict[str, Any]:
        done = self.finalized()
        assert isinstance(done, CapacityStats)
        total = int(done.assignments.sum())
        rate: dict[str, dict[str, float | None]] = {}
        by_bucket: dict[str, dict[str, list[float | None]]] = {}
        for policy in POLICIES:
            usable = total > 0 and (policy == "position" or done.has_weights)
            rate[policy] = {}
            by_bucket[policy] = {}
            for j, cf in enumerate(self.capacity_factors):
                d = done.dropped[policy][j]
                rate[policy][str(cf)] = float(d.sum()) / total if usable else None
                by_bucket[policy][str(cf)] = [
                    (float(d[b]) / float(done.assignments[b]) if usable and done.assignments[b] else None)
                    for b in range(len(POSITION_EDGES))
                ]
        return {
            "drop_rate": rate,
            "drop_rate_by_position": {
                "buckets": bucket_labels(),
                "assignments": done.assignments.tolist(),
                "rate": by_bucket,
            },
        }
