"""Capacity-drop rates: hand-computed cases and a brute-force reference on random data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moediag.stats.batch import LayerBatch
from moediag.stats.capacity import CAPACITY_FACTORS, POLICIES, CapacityStats, _order_by_key_then_weight
from tests import _reference as ref


def batch(ids, weights=None, seq=None, positions=None, start: int = 0) -> LayerBatch:
    ids = torch.as_tensor(ids, dtype=torch.int64)
    n = ids.shape[0]
    b = LayerBatch(
        num_experts=0,
        top_k=ids.shape[1],
        ids=ids,
        top1=ids[:, 0],
        index=torch.arange(start, start + n, dtype=torch.int64),
    )
    b.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32).reshape(n, -1)
    b.sequence_ids = None if seq is None else torch.as_tensor(seq, dtype=torch.int64)
    b.positions = None if positions is None else torch.as_tensor(positions, dtype=torch.int64)
    return b


def test_hand_computed_one_group() -> None:
    # 4 tokens of one sequence, E = 2, k = 1, all choose expert 0: C = ceil(CF * 1 * 4 / 2)
    stats = CapacityStats(2, 1)
    stats.update(
        batch([[0], [0], [0], [0]], [0.9, 0.6, 0.8, 0.7], seq=[7, 7, 7, 7], positions=[0, 1, 40, 70])
    )
    out = stats.compute()
    assert out["drop_rate"]["position"] == {"1.0": 0.5, "1.25": 0.25, "1.5": 0.25, "2.0": 0.0}
    assert out["drop_rate"]["probs"] == {"1.0": 0.5, "1.25": 0.25, "1.5": 0.25, "2.0": 0.0}
    by = out["drop_rate_by_position"]
    assert by["buckets"][:3] == ["0-31", "32-63", "64-127"]
    assert by["assignments"][:3] == [2, 1, 1]
    # position policy at CF 1.0 drops the two latest tokens (positions 40 and 70)
    assert by["rate"]["position"]["1.0"][:3] == [0.0, 1.0, 1.0]
    # probs policy drops the two lowest weights: token 1 (0.6, bucket 0) and token 3 (0.7, bucket 2)
    assert by["rate"]["probs"]["1.0"][:3] == [0.5, 0.0, 1.0]
    # CF 1.25: C = 3; position drops token 3; probs drops token 1 (lowest weight)
    assert by["rate"]["position"]["1.25"][:3] == [0.0, 0.0, 1.0]
    assert by["rate"]["probs"]["1.25"][:3] == [0.5, 0.0, 0.0]
    assert by["rate"]["position"]["1.0"][3] is None  # empty bucket: absent, not 0


def test_hand_computed_two_sequences_k2() -> None:
    # E = 4, k = 2. Sequence A (3 tokens): C(1.0) = ceil(2*3/4) = 2; expert 1 chosen 3 times -> 1 drop.
    # Sequence B (2 tokens): C(1.0) = 1; expert 2 chosen twice -> 1 drop. Total 2 of 10.
    ids = [[1, 0], [1, 2], [3, 1], [2, 0], [2, 3]]
    stats = CapacityStats(4, 2)
    stats.update(batch(ids, [[0.6, 0.4]] * 5, seq=[0, 0, 0, 1, 1]))
    rate = stats.compute()["drop_rate"]
    assert rate["position"]["1.0"] == pytest.approx(2 / 10)
    # CF 1.5: A: C = ceil(2.25) = 3 -> 0 drops; B: C = ceil(1.5) = 2 -> 0 drops
    assert rate["position"]["1.5"] == 0.0


def test_capacity_uses_exact_ceiling() -> None:
    # CF 1.25, k 2, n 8, E 4: C = ceil(5.0) = 5 exactly (a float product could round up to 6)
    assert ref.capacity(1.25, 2, 8, 4) == 5
    ids = [[0, 1]] * 8  # expert 0 chosen 8 times, C = 5 -> 3 drops of 8; expert 1 the same
    stats = CapacityStats(4, 2)
    stats.update(batch(ids, [[0.5, 0.5]] * 8, seq=[0] * 8))
    assert stats.compute()["drop_rate"]["position"]["1.25"] == pytest.approx(6 / 16)


def test_without_weights_the_total_stands_and_the_weight_policy_has_no_positions() -> None:
    """The total rate does not depend on the policy, so it is known without weights; only where the
    highest-weight policy drops (its rate per position) needs them."""
    stats = CapacityStats(2, 1)
    stats.update(batch([[0], [0], [0], [1]], None, seq=[0] * 4))
    out = stats.compute()
    assert out["drop_rate_total"]["1.0"] == 0.25
    assert out["drop_rate"]["highest-weight"]["1.0"] == out["drop_rate"]["probs"]["1.0"] == 0.25
    assert set(out["drop_rate_by_position"]["rate"]["highest-weight"]["1.0"]) == {None}
    assert out["drop_rate_by_position"]["rate"]["token-order"]["1.0"][0] == 0.25


def test_first_choices_first_drops_second_choices_before_later_first_choices() -> None:
    """E = 2, k = 2, 4 tokens: each expert is chosen by all 4 (twice first, twice second). CF 0.5:
    C = ceil(0.5 * 2 * 4 / 2) = 2. Token order keeps tokens 0 and 1 of each expert (tokens 2, 3 drop);
    first-choices-first keeps each expert's two first choices (every second choice drops)."""
    ids = [[0, 1], [1, 0], [0, 1], [1, 0]]
    stats = CapacityStats(2, 2, capacity_factors=(0.5,))
    stats.update(batch(ids, [[0.6, 0.4]] * 4, seq=[0] * 4, positions=[0, 1, 40, 70]))
    out = stats.compute()
    assert out["drop_rate_total"] == {"0.5": 0.5}
    by = out["drop_rate_by_position"]["rate"]
    assert by["token-order"]["0.5"][:3] == [0.0, 1.0, 1.0]  # tokens 2 and 3 (positions 40, 70) drop
    # first choices: expert 0 from tokens 0 and 2, expert 1 from tokens 1 and 3: all second choices drop
    assert by["first-choices-first"]["0.5"][:3] == [0.5, 0.5, 0.5]


def test_min_capacity_floors_the_capacity() -> None:
    """DeepSpeed's min_capacity: 8 tokens, E = 8, k = 1, all on expert 0: C = ceil(8 / 8) = 1 keeps 1;
    min_capacity 4 keeps 4."""
    ids = [[0]] * 8
    plain = CapacityStats(8, 1, capacity_factors=(1.0,))
    floor = CapacityStats(8, 1, capacity_factors=(1.0,), min_capacity=4)
    for s in (plain, floor):
        s.update(batch(ids, [0.5] * 8, seq=[0] * 8))
    assert plain.compute()["drop_rate_total"]["1.0"] == 7 / 8
    assert floor.compute()["drop_rate_total"]["1.0"] == 4 / 8


def _random_case(rng: np.random.Generator):
    e = int(rng.integers(2, 10))
    k = int(rng.integers(1, min(e, 4) + 1))
    n = int(rng.integers(1, 160))
    skew = rng.dirichlet(np.full(e, 0.5))
    ids = np.array([rng.choice(e, size=k, replace=False, p=skew) for _ in range(n)], dtype=np.int64)
    # a few ties in weights to check the token-order tie break
    weights = rng.choice([0.1, 0.2, 0.3, 0.5, 0.7], size=(n, k)) if rng.random() < 0.5 else rng.random((n, k))
    scale = rng.choice([1.0, 2.5, -1.0])  # weights above 2 (routed scaling) and negative ones sort too
    weights = weights * scale
    if rng.random() < 0.4:  # empty slots (-1), as dropped or padded choices in real dumps
        ids = np.where(rng.random((n, k)) < 0.2, -1, ids)
    seq = np.cumsum(rng.random(n) < 0.08)
    return e, k, n, ids, weights, seq


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("grouping", ["sequences", "sequences+positions", "blocks"])
def test_brute_force_reference(seed: int, grouping: str) -> None:
    rng = np.random.default_rng(seed)
    e, k, n, ids, weights, seq = _random_case(rng)
    block = int(rng.integers(3, 40))
    positions = None
    if grouping == "sequences+positions":
        positions = (rng.integers(0, 3000, size=n)).tolist()
    min_capacity = int(rng.integers(0, 6)) if seed % 2 else 0
    stats = CapacityStats(e, k, group_tokens=block, min_capacity=min_capacity)
    # stream in random chunks
    cuts = sorted(set(rng.integers(0, n, size=int(rng.integers(0, 5))).tolist()) | {0, n})
    for a, b in zip(cuts[:-1], cuts[1:], strict=False):
        stats.update(
            batch(
                ids[a:b],
                weights[a:b],
                None if grouping == "blocks" else seq[a:b],
                None if positions is None else positions[a:b],
                start=a,
            )
        )
    out = stats.compute()
    groups = (np.arange(n) // block).tolist() if grouping == "blocks" else seq.tolist()
    for policy in POLICIES:
        for cf in CAPACITY_FACTORS:
            d, a, d_b, a_b = ref.drops(ids, weights, groups, e, cf, policy, positions, min_capacity)
            assert out["drop_rate"][policy][str(cf)] == pytest.approx(d / a, rel=1e-12), (policy, cf)
            # the total is the same under every policy
            assert out["drop_rate_total"][str(cf)] == pytest.approx(d / a, rel=1e-12)
            want_b = [db / ab if ab else None for db, ab in zip(d_b, a_b, strict=False)]
            assert out["drop_rate_by_position"]["rate"][policy][str(cf)] == pytest.approx(want_b), (
                policy,
                cf,
            )
            assert out["drop_rate_by_position"]["assignments"] == a_b


def test_drop_rate_decreases_with_capacity_factor() -> None:
    rng = np.random.default_rng(1)
    e, k, n, ids, weights, seq = _random_case(rng)
    stats = CapacityStats(e, k)
    stats.update(batch(ids, weights, seq))
    rate = stats.compute()["drop_rate"]
    for policy in POLICIES:
        vals = [rate[policy][str(cf)] for cf in CAPACITY_FACTORS]
        assert vals == sorted(vals, reverse=True)


@pytest.mark.parametrize("scale", [1.0, 1.99, 2.0, 3.5, 1e6, -1.0])
@pytest.mark.parametrize("seed", range(6))
def test_order_by_key_then_weight_matches_lexicographic_order(scale: float, seed: int) -> None:
    """The packed-key sort (shift 30 below 2.0, 32 above) and the two-sort fallback (negative or infinite
    weights) must equal ordering by (key, -weight, position): ties, -0.0, subnormals and 2.0 included."""
    rng = np.random.default_rng(seed)
    m = 400
    key = rng.integers(0, 7, size=m)
    special = [0.0, -0.0, 0.25, 0.5, 1.0, 1.9999999, 2.0, 1e-45, 1e-40]
    if seed % 3 == 2:
        special.append(float("inf"))
    weights = rng.choice(special, size=m) if seed % 2 else rng.random(m)
    weights = (weights * scale).astype(np.float32)
    got = _order_by_key_then_weight(torch.from_numpy(key), torch.from_numpy(weights), 6).tolist()
    want = sorted(range(m), key=lambda i: (key[i], -float(weights[i]), i))
    assert got == want


@pytest.mark.parametrize("seed", range(4))
def test_first_choices_first_counting_path_matches_reference(seed: int, monkeypatch) -> None:
    """Long in-order runs take the counting path (no per-assignment ranks), random positions the sorting
    one; both equal the brute-force reference."""
    rng = np.random.default_rng(100 + seed)
    e, k, n = 4, 3, 400
    skew = rng.dirichlet(np.full(e, 0.7))
    ids = np.array([rng.choice(e, size=k, replace=False, p=skew) for _ in range(n)], dtype=np.int64)
    weights = rng.random((n, k))
    seq = np.repeat([0, 1], n // 2)
    used: list[str] = []
    for name in ("_add_choice_counts", "_add_choice_drops"):
        original = getattr(CapacityStats, name)

        def spy(self, *a, _o=original, _n=name, **kw):  # type: ignore[no-untyped-def]
            used.append(_n)
            return _o(self, *a, **kw)

        monkeypatch.setattr(CapacityStats, name, spy)
    for phase, positions in (("in order", None), ("shuffled", rng.integers(0, 300, size=n).tolist())):
        used.append(phase)
        stats = CapacityStats(e, k, capacity_factors=(0.5, 1.0))
        stats.update(batch(ids, weights, seq, positions))
        out = stats.compute()
        for cf in (0.5, 1.0):
            d, a, d_b, a_b = ref.drops(ids, weights, seq.tolist(), e, cf, "first-choices-first", positions)
            assert d > 0
            want = [db / ab if ab else None for db, ab in zip(d_b, a_b, strict=False)]
            assert out["drop_rate_by_position"]["rate"]["first-choices-first"][str(cf)] == pytest.approx(want)
    cut = used.index("shuffled")
    assert set(used[1:cut]) == {"_add_choice_counts"} and set(used[cut + 1 :]) == {"_add_choice_drops"}
