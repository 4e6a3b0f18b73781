"""Routing paths: the sketch, exactness below capacity, its error bound, merges, masking across layers."""

from __future__ import annotations

from collections import Counter

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moediag.stats.batch import LayerBatch
from moediag.stats.paths import ChunkPaths, PathStats, windows
from moediag.stats.sketch import KeyedSketch


def layer_batch(
    top1: list[int], rows: list[int] | None = None, correct: list[int] | None = None
) -> LayerBatch:
    t = torch.tensor(top1, dtype=torch.int64)
    index = torch.arange(len(top1)) if rows is None else torch.tensor(rows, dtype=torch.int64)
    b = LayerBatch(4, 1, t.unsqueeze(1), t, index)
    if correct is not None:
        b.correct = torch.tensor(correct, dtype=torch.bool)
    return b


def chunk(per_layer: dict[int, list[int]], correct: list[int], start: int = 0) -> ChunkPaths:
    n = len(correct)
    c = ChunkPaths(start, n)
    for layer, top1 in per_layer.items():
        b = layer_batch(top1, correct=correct)
        b.index = b.index + start
        c.add(layer, b)
    return c


def test_paths_by_hand() -> None:
    c = chunk({0: [0, 0, 1, 0, 2], 1: [3, 3, 3, 3, 1]}, [1, 1, 0, 0, 1])
    p = PathStats([0, 1])
    p.update(c)
    out = p.compute(min_support=1)
    assert out["exact"] and out["tokens"] == 5 and out["accuracy"] == 0.6
    top = out["frequent"][0]
    assert top["path"] == [0, 3] and top["tokens"] == 3 and top["correct"] == 2
    assert top["share"] == 0.6
    assert {tuple(r["path"]) for r in out["frequent"]} == {(0, 3), (1, 3), (2, 1)}


def test_token_excluded_in_any_layer_has_no_path() -> None:
    c = ChunkPaths(0, 3)
    c.add(0, layer_batch([0, 1, 2], correct=[1, 1, 1]))
    c.add(1, layer_batch([3, 3], rows=[0, 2], correct=[1, 1]))  # token 1 excluded at layer 1
    p = PathStats([0, 1])
    p.update(c)
    out = p.compute(min_support=1)
    assert out["tokens"] == 2
    assert sorted(tuple(r["path"]) for r in out["frequent"]) == [(0, 3), (2, 3)]


def test_windows() -> None:
    assert windows([0, 1, 3, 5], ((1, 3), (5, 9), (7, 8))) == [(0, 1, 3, 5), (1, 3), (5,)]


def test_underperforming_paths() -> None:
    n = 400
    l0 = [0] * 100 + [1] * 300
    correct = [0] * 100 + [1] * 300  # path (0, 2) always wrong, overall 0.75
    p = PathStats([0, 1])
    p.update(chunk({0: l0, 1: [2] * n}, correct))
    out = p.compute()
    assert [r["path"] for r in out["underperforming"]] == [[0, 2]]
    assert out["underperforming"][0]["share"] == 0.25


def test_sketch_bound_beyond_capacity() -> None:
    g = torch.Generator().manual_seed(1)
    keys = torch.cat([torch.zeros(300, dtype=torch.int64), torch.randint(1, 500, (700,), generator=g)])
    keys = keys[torch.randperm(1000, generator=g)].unsqueeze(1)
    sk = KeyedSketch(1, 16, {"tokens": ((), torch.int64)})
    for part in keys.split(100):
        sk.add(part, {"tokens": torch.ones(part.shape[0], dtype=torch.int64)})
    assert len(sk) <= 16 and not sk.exact
    assert sk.decrement <= 1000 / 17
    true = Counter(keys.flatten().tolist())
    for key, tally in zip(sk.keys.flatten().tolist(), sk.values["tokens"].tolist(), strict=False):
        assert true[key] - sk.decrement <= tally <= true[key]
    assert 0 in sk.keys.flatten().tolist()  # the heavy hitter survives


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 10_000), st.integers(1, 80), st.lists(st.integers(0, 80), max_size=3), st.integers(1, 200)
)
def test_streaming_equals_one_shot_equals_merge(seed: int, n: int, cuts: list[int], capacity: int) -> None:
    g = torch.Generator().manual_seed(seed)
    l0 = torch.randint(0, 3, (n,), generator=g).tolist()
    l1 = torch.randint(0, 3, (n,), generator=g).tolist()
    correct = (torch.rand(n, generator=g) < 0.5).to(torch.int64).tolist()
    one = PathStats([0, 1], capacity)
    one.update(chunk({0: l0, 1: l1}, correct))
    bounds = sorted({0, n, *[min(c, n) for c in cuts]})
    stream = PathStats([0, 1], capacity)
    merged = PathStats([0, 1], capacity)
    for a, b in zip(bounds, bounds[1:], strict=False):
        part = chunk({0: l0[a:b], 1: l1[a:b]}, correct[a:b], start=a)
        stream.update(part)
        piece = PathStats([0, 1], capacity)
        piece.update(part)
        merged.merge(piece)
    ref = one.compute(min_support=1, top=100)
    truth = Counter(zip(l0, l1, strict=False))
    for other in (stream.compute(min_support=1, top=100), merged.compute(min_support=1, top=100)):
        assert other["tokens"] == ref["tokens"] == n and other["accuracy"] == ref["accuracy"]
        if len(truth) <= capacity:  # exact: all three agree with the true counts
            assert other["exact"] and ref["exact"]
            got = {tuple(r["path"]): (r["tokens"], r["correct"]) for r in other["frequent"]}
            assert got == {tuple(r["path"]): (r["tokens"], r["correct"]) for r in ref["frequent"]}
            assert {k: v[0] for k, v in got.items()} == dict(truth)
        for r in other["frequent"]:
            assert truth[tuple(r["path"])] - other["max_undercount"] <= r["tokens"] <= truth[tuple(r["path"])]
