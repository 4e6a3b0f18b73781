"""summary.experts_touched against a brute-force count over the trace's own decode batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moediag.analysis import analyze_trace
from moediag.stats.batch import LayerBatch
from moediag.stats.touched import BATCH_SIZES, ExpertsTouchedStats
from tests.conftest import trace_metadata, write_raw


def brute_force(ids: np.ndarray, valid: np.ndarray, b: int, e: int) -> tuple[int, float | None]:
    """Cut slots [0, b), [b, 2b), ...; keep blocks whose b tokens are all valid; mean distinct experts / E."""
    shares = []
    for j in range(len(ids) // b):
        block = slice(j * b, (j + 1) * b)
        if not valid[block].all():
            continue
        chosen = {int(x) for x in ids[block].ravel() if x >= 0}
        shares.append(len(chosen) / e)
    return len(shares), (float(np.mean(shares)) if shares else None)


def _trace(
    tmp_path: Path, seed: int, t: int, e: int, k: int, shards: int = 1
) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    skew = rng.dirichlet(np.full(e, 0.5))
    ids = np.array([rng.choice(e, size=k, replace=False, p=skew) for _ in range(t)])
    if k > 1:
        ids[rng.random(t) < 0.1, -1] = -1  # empty slots touch nothing
    mask = np.ones(t, dtype=bool)
    mask[rng.integers(0, t, size=max(1, t // 50))] = False  # a few padding tokens
    meta = trace_metadata(e, k, "softmax")
    cuts = np.linspace(0, t, shards + 1).astype(int)
    folder = tmp_path / f"t{seed}"
    for i, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False)):
        write_raw(
            folder / f"shard-{i:02d}.safetensors",
            {
                "layers.3.topk_ids": torch.from_numpy(ids[lo:hi]).to(torch.int32),
                "tokens.mask": torch.from_numpy(mask[lo:hi]),
            },
            meta,
        )
    return folder, ids, mask


@pytest.mark.parametrize(("chunk", "shards"), [(None, 1), (37, 3), (128, 2)])
def test_matches_brute_force_over_the_traces_batches(tmp_path: Path, chunk: int | None, shards: int) -> None:
    e, k, t = 16, 2, 1500
    path, ids, mask = _trace(tmp_path, 7, t, e, k, shards)
    res = analyze_trace(path, chunk_tokens=chunk).to_dict()
    layer = res["layers"][0]["experts_touched"]
    assert set(layer) == {str(b) for b in BATCH_SIZES}
    for b in BATCH_SIZES:
        n, share = brute_force(ids, mask, b, e)
        assert layer[str(b)]["batches"] == n
        assert layer[str(b)]["share"] == pytest.approx(share, rel=1e-12)
        assert layer[str(b)]["uniform"] == pytest.approx(1 - (1 - k / e) ** b)
    summary = res["summary"]["experts_touched"]
    assert summary["8"]["share"] == pytest.approx(layer["8"]["share"])
    assert summary["8"]["uniform"] == pytest.approx(1 - (1 - k / e) ** 8)


def test_uniform_routing_meets_the_formula(tmp_path: Path) -> None:
    e, k, t = 32, 4, 128 * 200
    g = torch.Generator().manual_seed(0)
    ids = torch.argsort(torch.rand(t, e, generator=g), dim=1)[:, :k].to(torch.int32)
    path = write_raw(tmp_path / "u.safetensors", {"layers.0.topk_ids": ids}, trace_metadata(e, k, "softmax"))
    touched = analyze_trace(path).to_dict()["summary"]["experts_touched"]
    for b in BATCH_SIZES:
        assert touched[str(b)]["share"] == pytest.approx(1 - (1 - k / e) ** b, abs=0.01), b


def test_collapsed_routing_touches_few(tmp_path: Path) -> None:
    e, k, t = 16, 2, 512
    ids = torch.tensor([[0, 1]] * t, dtype=torch.int32)
    path = write_raw(tmp_path / "c.safetensors", {"layers.0.topk_ids": ids}, trace_metadata(e, k, "softmax"))
    touched = analyze_trace(path).to_dict()["summary"]["experts_touched"]
    assert touched["128"]["share"] == pytest.approx(2 / 16)
    assert touched["128"]["uniform"] > 0.99


def _batch(ids: torch.Tensor, index: torch.Tensor, e: int) -> LayerBatch:
    return LayerBatch(e, ids.shape[1], ids, ids[:, 0], index)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**31 - 1),
    st.integers(1, 120),
    st.sampled_from([2, 3, 8]),
    st.lists(st.integers(1, 119), max_size=4),
)
def test_streaming_equals_one_shot_equals_merge(seed: int, t: int, b: int, cuts: list[int]) -> None:
    e = 6
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(-1, e, (t, 1), generator=g)
    index = torch.arange(t)
    keep = torch.rand(t, generator=g) > 0.1
    ids, index = ids[keep], index[keep]
    sizes = (1, b, 2 * b)
    one = ExpertsTouchedStats(e, sizes)
    one.update(_batch(ids, index, e))
    bounds = sorted({0, len(ids), *[c for c in cuts if c < len(ids)]})
    parts = []
    streamed = ExpertsTouchedStats(e, sizes)
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = ExpertsTouchedStats(e, sizes)
        part.update(_batch(ids[lo:hi], index[lo:hi], e))
        parts.append(part)
        streamed.update(_batch(ids[lo:hi], index[lo:hi], e))
    merged = ExpertsTouchedStats(e, sizes)
    for p in parts:
        merged.merge(p)
    want = one.compute(1)
    assert streamed.compute(1) == want
    assert merged.compute(1) == want
    valid = np.isin(np.arange(t), index.numpy())
    for size in sizes:
        n, share = brute_force(_dense(ids, index, t), valid, size, e)
        assert want[str(size)]["batches"] == n
        assert want[str(size)]["share"] == (pytest.approx(share) if share is not None else None)


def test_sizes_must_divide_each_other() -> None:
    with pytest.raises(ValueError, match="dividing"):
        ExpertsTouchedStats(4, (1, 8, 12))


def _dense(ids: torch.Tensor, index: torch.Tensor, t: int) -> np.ndarray:
    out = np.full((t, 1), -1)
    out[index.numpy()] = ids.numpy()
    return out


def test_count_only_layers_have_none(tmp_path: Path) -> None:
    counts = torch.tensor([[5, 3, 0, 0], [4, 4, 0, 0]])
    ids = torch.tensor([[0, 1]] * 16, dtype=torch.int32)
    path = write_raw(
        tmp_path / "c.safetensors",
        {"layers.0.expert_counts": counts, "layers.1.topk_ids": ids},
        trace_metadata(4, 2, "softmax"),
    )
    doc = analyze_trace(path).to_dict()
    by_layer = {r["layer"]: r["experts_touched"] for r in doc["layers"]}
    assert by_layer[0] is None
    assert by_layer[1]["8"]["share"] == 0.5 and by_layer[1]["8"]["batches"] == 2
    assert doc["summary"]["experts_touched"]["8"]["share"] == 0.5
