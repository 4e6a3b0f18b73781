"""DeepSeek EPLB's replica choice (``replicate_experts``) and packing (``balanced_packing``), then a local
search off the busiest rank that never makes the largest rank load worse.
"""

from __future__ import annotations

import heapq

import numpy as np

from moediag.errors import UsageError
from moediag.replay.ranks import Ranks


def _replicate(loads: np.ndarray, replicas: int) -> np.ndarray:
    """Copies per expert, EPLB's ``replicate_experts``: each extra copy goes to the expert with the highest
    load per copy (the first such expert on ties), computed in float32 as EPLB does."""
    load = loads.astype(np.float32)
    copies = np.ones(load.size, dtype=np.int64)
    for _ in range(replicas):
        copies[int(np.argmax(load / copies))] += 1
    return copies


def pack(weights: np.ndarray, packs: int, avoid: np.ndarray | None = None) -> list[list[int]]:
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
    held = pack(per_copy, ep_size, experts if distinct else None)
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


def improved(load: np.ndarray, ep_size: int, replicas: int) -> Ranks:
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


def slots_per_rank(num_experts: int, ep_size: int, replicas: int) -> int:
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
