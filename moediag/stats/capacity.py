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

import math
from fractions import Fraction
from typing import Any

import torch

from moediag import options as _options
from moediag.stats.batch import LayerBatch
from moediag.stats.load import group_counts
from moediag.stats.runs import RunAccumulator

CAPACITY_FACTORS = _options.CAPACITY_FACTORS
POLICIES = ("token-order", "highest-weight", "first-choices-first")
#: former names, accepted on input and kept as keys of ``drop_rate`` for existing readers
POLICY_ALIASES = {"position": "token-order", "probs": "highest-weight"}
#: position bucket lower edges; the last bucket is open-ended
POSITION_EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
DEFAULT_GROUP_TOKENS: int = _options.default("capacity_group")


def resolve_policy(name: str) -> str:
    """The policy a name (or a former name) stands for; ValueError when it is none."""
    policy = POLICY_ALIASES.get(name, name)
    if policy not in POLICIES:
        former = ", ".join(POLICY_ALIASES)
        raise ValueError(f"drop policy {name!r}: expected {', '.join(POLICIES)} (or the former {former})")
    return policy


def capacities(
    lengths: torch.Tensor, factors: tuple[float, ...], top_k: int, num_experts: int, min_capacity: int = 0
) -> torch.Tensor:
    """[groups, factors] int64: max(ceil(CF * k * n_g / E), min_capacity), in exact integer arithmetic."""
    caps = []
    for cf in factors:
        frac_cf = Fraction(cf).limit_denominator(10_000)
        num = frac_cf.numerator * top_k * lengths
        den = frac_cf.denominator * num_experts
        caps.append(((num + den - 1) // den).clamp_min(min_capacity))
    return torch.stack(caps, dim=1)


def bucket_labels() -> list[str]:
    labels = []
    for i, lo in enumerate(POSITION_EDGES):
        hi = POSITION_EDGES[i + 1] if i + 1 < len(POSITION_EDGES) else None
        labels.append(f"{lo}-{hi - 1}" if hi is not None else f"{lo}+")
    return labels


def _order_by_key_then_weight(key: torch.Tensor, weights: torch.Tensor, key_bound: int) -> torch.Tensor:
    """Order by key (``0 <= key <= key_bound``), then by descending weight, then by position (stable).

    Non-negative float32 weights order like their bit patterns read as integers, so key and weight pack
    exactly into one int64 (``key << 32`` minus the bits); other weights (negative, infinite) take two
    stable sorts.
    """
    w = weights.float()
    low, high = (float(x) for x in torch.aminmax(w))
    if key_bound < (1 << 30) and low >= 0 and math.isfinite(high):
        bits = (w + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into 0.0
        # weights below 2.0 have bit patterns below 2^30: a 30-bit shift keeps the key narrower, and
        # torch's radix sort takes ~30% less time on 40-bit than on 42-bit keys
        shift = 30 if high < 2.0 else 32
        return torch.sort((key << shift) - bits, stable=True).indices
    # any other floats (negative, infinite): two stable sorts, weight first, then key (LSD order)
    by_weight = torch.sort(w, descending=True, stable=True).indices
    return by_weight.index_select(0, torch.sort(key.index_select(0, by_weight), stable=True).indices)


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
    """Assignments and drops per position bucket, per policy and capacity factor (declared state)."""

    num_experts: int
    top_k: int
    capacity_factors: tuple[float, ...]
    group_tokens: int
    min_capacity: int
    assignments: torch.Tensor
    dropped: dict[str, torch.Tensor]
    has_weights: bool

    def __init__(
        self,
        num_experts: int,
        top_k: int,
        capacity_factors: tuple[float, ...] = CAPACITY_FACTORS,
        group_tokens: int = DEFAULT_GROUP_TOKENS,
        min_capacity: int = 0,
    ) -> None:
        super().__init__()
        self.add_setting("num_experts", num_experts)
        self.add_setting("top_k", top_k)
        self.add_setting("capacity_factors", tuple(capacity_factors))
        self.add_setting("group_tokens", group_tokens)
        self.add_setting("min_capacity", min_capacity)
        nb, nf = len(POSITION_EDGES), len(self.capacity_factors)
        self.add_state("assignments", torch.zeros(nb, dtype=torch.int64))  # per position bucket
        # [factors, buckets] per policy
        self.add_state("dropped", {p: torch.zeros(nf, nb, dtype=torch.int64) for p in POLICIES})
        self.add_state("has_weights", True, "and")

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
        runs = lengths.numel()
        run = torch.repeat_interleave(torch.arange(runs), lengths)
        if "positions" in rows:
            pos = rows["positions"]
        else:
            starts = torch.cumsum(lengths, 0) - lengths
            pos = torch.arange(n, dtype=torch.int64) - starts[run]
        edges = torch.tensor(POSITION_EDGES[1:], dtype=torch.int64)
        bucket = torch.bucketize(pos.clamp_min(0), edges, right=True)  # per token
        empty = ids < 0
        has_empty = bool(empty.any())
        nb = len(POSITION_EDGES)
        filled = k - empty.sum(dim=1) if has_empty else torch.full((n,), k, dtype=torch.int64)
        self.assignments += torch.zeros(nb, dtype=torch.int64).index_add_(0, bucket, filled)
        capacity = capacities(lengths, self.capacity_factors, k, self.num_experts, self.min_capacity)
        in_order = n < 2 or bool(((bucket[1:] >= bucket[:-1]) | (run[1:] != run[:-1])).all())
        if in_order:
            self._add_position_drops(run, bucket, ids, capacity, has_empty)
        else:
            ranks = _position_ranks(ids, lengths, self.num_experts)
            a_run = run.unsqueeze(1).expand(n, k).reshape(-1)
            a_bucket = bucket.unsqueeze(1).expand(n, k).reshape(-1)
            if has_empty:
                valid = ~empty.reshape(-1)
                ranks, a_run, a_bucket = ranks[valid], a_run[valid], a_bucket[valid]
            self._add_ranked_drops("token-order", ranks, a_run, a_bucket, capacity)
        self._add_weight_drops(run, bucket, ids, rows["weights"], capacity, has_empty)
        if k == 1:  # one choice per token: choice order is token order
            self.dropped["first-choices-first"] = self.dropped["token-order"].clone()
        elif in_order and runs * len(POSITION_EDGES) * self.num_experts <= 4 * n:
            self._add_choice_counts(run, bucket, ids, capacity, has_empty)
        else:
            self._add_choice_drops(run, bucket, ids, capacity, has_empty)

    def _add_choice_counts(
        self,
        run: torch.Tensor,
        bucket: torch.Tensor,
        ids: torch.Tensor,
        capacity: torch.Tensor,
        has_empty: bool = True,
    ) -> None:
        """``first-choices-first`` when buckets never go backwards inside a run: in each (run, expert)
        the order is column 0 by bucket, then column 1 by bucket, ...; so the drops per bucket follow from
        counts per (run, column, bucket, expert) and their running sum in that order (as
        :meth:`_add_position_drops`; no per-assignment ranks)."""
        e, nb, runs = self.num_experts, len(POSITION_EDGES), capacity.shape[0]
        k = ids.shape[1]
        e1 = e + 1 if has_empty else e  # empty slots: a spare column
        # key (run, column, bucket, expert): the order of the running sum is then one axis, no transpose
        base = (run * (k * nb) + bucket) * e1  # [n]
        column = torch.arange(0, k * nb * e1, nb * e1)  # [k]
        slot = torch.where(ids < 0, e, ids) if has_empty else ids
        key = (base.unsqueeze(1) + column + slot).reshape(-1)
        counts = torch.bincount(key, minlength=runs * k * nb * e1).view(runs, k * nb, e1)
        if has_empty:
            counts = counts[..., :e]
        hi = counts.cumsum(dim=1)
        lo = hi - counts
        for f in range(capacity.shape[1]):
            c = capacity[:, f].view(runs, 1, 1)
            dropped = ((hi - c).clamp_min(0) - (lo - c).clamp_min(0)).view(runs, k, nb, e)
            self.dropped["first-choices-first"][f] += dropped.sum(dim=(0, 1, 3))

    def _risky(
        self, run: torch.Tensor, ids: torch.Tensor, capacity: torch.Tensor, has_empty: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Assignment keys (run * E + expert, a spare key for empty slots), the count per key, the
        smallest capacity per key, and the spare key: only keys over their smallest capacity can drop."""
        e = self.num_experts
        spare = capacity.shape[0] * e
        key = run.unsqueeze(1) * e + ids
        if has_empty:
            key = torch.where(ids < 0, spare, key)
        key = key.reshape(-1)
        group_count = torch.bincount(key, minlength=spare + 1)
        min_cap = torch.cat([capacity.min(dim=1).values.repeat_interleave(e), torch.tensor([key.numel()])])
        return key, group_count, min_cap, spare

    def _add_choice_drops(
        self,
        run: torch.Tensor,
        bucket: torch.Tensor,
        ids: torch.Tensor,
        capacity: torch.Tensor,
        has_empty: bool,
    ) -> None:
        """The ``first-choices-first`` policy: in each (run, expert) group, assignments in the order
        (choice column, token). Only groups over the smallest capacity are ordered (one stable sort of
        their assignments by group, then column; the flat order is token-major, so token order stays)."""
        e, k = self.num_experts, ids.shape[1]
        key, group_count, min_cap, _spare = self._risky(run, ids, capacity, has_empty)
        risky = group_count > min_cap
        if not bool(risky.any()):
            return
        sel = torch.nonzero(risky.index_select(0, key)).squeeze(1)
        sub_key = key.index_select(0, sel)
        order = torch.sort(sub_key * k + sel % k, stable=True).indices
        sorted_key = sub_key.index_select(0, order)
        sub_count = torch.where(risky, group_count, 0)
        starts = torch.cumsum(sub_count, 0) - sub_count
        ranks = torch.arange(sel.numel(), dtype=torch.int64) - starts.index_select(0, sorted_key)
        token = sel.index_select(0, order) // k
        self._add_ranked_drops(
            "first-choices-first", ranks, sorted_key // e, bucket.index_select(0, token), capacity
        )

    def _add_weight_drops(
        self,
        run: torch.Tensor,
        bucket: torch.Tensor,
        ids: torch.Tensor,
        weights: torch.Tensor,
        capacity: torch.Tensor,
        has_empty: bool,
    ) -> None:
        """The ``highest-weight`` policy: each (run, expert) group keeps its C highest-weight assignments.

        Only groups over the smallest capacity can drop anything, so just their assignments are ordered
        (by group, then descending weight, then token order). In that order an assignment's rank is its
        place minus where its group starts; ranks are used where they fall, never scattered back. Empty
        slots go to a spare group that is never over capacity, so no assignment array is ever masked.
        """
        e, k = self.num_experts, ids.shape[1]
        key, group_count, min_cap, spare = self._risky(run, ids, capacity, has_empty)
        risky = group_count > min_cap
        if not bool(risky.any()):
            return
        sel = torch.nonzero(risky.index_select(0, key)).squeeze(1)
        sub_key = key.index_select(0, sel)
        order = _order_by_key_then_weight(sub_key, weights.reshape(-1).index_select(0, sel), spare)
        # In the sorted order, group g fills [start_g, start_g + count_g); only its places from
        # start_g + min_cap_g on can drop at any factor. List just those places (no pass over the rest).
        sub_count = torch.where(risky, group_count, 0)
        starts = torch.cumsum(sub_count, 0) - sub_count
        groups = torch.nonzero(risky).squeeze(1)
        over = (group_count - min_cap).index_select(0, groups)
        within = torch.arange(int(over.sum()), dtype=torch.int64)  # 0.. for each group's dropping places
        of = torch.repeat_interleave(torch.arange(groups.numel()), over)  # each place's group (index)
        within -= (torch.cumsum(over, 0) - over).index_select(0, of)
        ranks = min_cap.index_select(0, groups).index_select(0, of) + within
        place = starts.index_select(0, groups).index_select(0, of) + ranks
        token = sel.index_select(0, order.index_select(0, place)) // k
        self._add_ranked_drops(
            "highest-weight", ranks, groups.index_select(0, of) // e, bucket.index_select(0, token), capacity
        )

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
        slot = a_bucket * (nf + 1)  # then + dropped_at: one factor at a time (no [n, factors] gather)
        for j in range(nf):
            slot += ranks >= capacity[:, j].index_select(0, a_run)
        hist = torch.bincount(slot, minlength=nb * (nf + 1)).view(nb, nf + 1)
        tail = hist.flip(1).cumsum(1).flip(1)  # tail[:, d] = assignments with dropped_at >= d
        self.dropped[policy] += tail[:, 1:].T.contiguous()  # dropped at factor j <=> dropped_at > j

    def _add_position_drops(
        self,
        run: torch.Tensor,
        bucket: torch.Tensor,
        ids: torch.Tensor,
        capacity: torch.Tensor,
        has_empty: bool = True,
    ) -> None:
        """Position policy when buckets never go backwards inside a run (positions grow in token order):
        each (run, expert) keeps its first C assignments, so the drops in a bucket follow from the counts
        per (run, bucket, expert) and their running sum over buckets, with no per-assignment ranks."""
        e, nb, runs = self.num_experts, len(POSITION_EDGES), capacity.shape[0]
        counts = group_counts(run * nb + bucket, ids, runs * nb, e, not has_empty).reshape(runs, nb, e)
        hi = counts.cumsum(dim=1)
        lo = hi - counts
        for j in range(capacity.shape[1]):
            c = capacity[:, j].view(runs, 1, 1)
            dropped = (hi - c).clamp_min(0) - (lo - c).clamp_min(0)
            self.dropped["token-order"][j] += dropped.sum(dim=(0, 2))

    def compute(self) -> dict[str, Any]:
        done = self.finalized()
        assert isinstance(done, CapacityStats)
        total = int(done.assignments.sum())
        factors = [str(cf) for cf in self.capacity_factors]
        # the same for every policy: token order drops exactly sum max(0, c - C) per group
        overall = {
            f: (float(done.dropped["token-order"][j].sum()) / total if total else None)
            for j, f in enumerate(factors)
        }
        rate: dict[str, dict[str, float | None]] = {}
        by_bucket: dict[str, dict[str, list[float | None]]] = {}
        for policy in POLICIES:
            usable = total > 0 and (policy != "highest-weight" or done.has_weights)
            rate[policy] = dict(overall)
            by_bucket[policy] = {}
            for j, f in enumerate(factors):
                d = done.dropped[policy][j]
                by_bucket[policy][f] = [
                    (float(d[b]) / float(done.assignments[b]) if usable and done.assignments[b] else None)
                    for b in range(len(POSITION_EDGES))
                ]
        for old, new in POLICY_ALIASES.items():
            rate[old] = rate[new]
            by_bucket[old] = by_bucket[new]
        return {
            "drop_rate_total": overall,
            "drop_rate": rate,
            "drop_rate_by_position": {
                "buckets": bucket_labels(),
                "assignments": done.assignments.tolist(),
                "rate": by_bucket,
            },
        }
