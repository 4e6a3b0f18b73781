"""Streaming == one-shot == merge of random contiguous splits (hypothesis), per shared/design/style.md."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moediag.analysis import add_count_layers, trace_stats
from moediag.stats import ModelStats
from moediag.trace import open_trace
from tests.conftest import assert_same, trace_metadata, write_raw


@st.composite
def traces(draw: st.DrawFn) -> dict[str, Any]:
    e = draw(st.integers(2, 9))
    k = draw(st.integers(1, min(e, 3)))
    t = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    tensors: dict[str, torch.Tensor] = {}
    kinds = draw(st.lists(st.sampled_from(["logits", "ids", "both", "counts"]), min_size=1, max_size=3))
    if all(kind == "counts" for kind in kinds):
        kinds.append("logits")
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
    skew = rng.dirichlet(np.full(e, 0.7))
    for layer, kind in enumerate(kinds):
        if kind == "counts":
            s = int(rng.integers(1, 4))
            tensors[f"layers.{layer}.expert_counts"] = torch.from_numpy(rng.integers(0, 9, size=(s, e)))
            continue
        if kind in ("logits", "both"):
            z = torch.from_numpy(rng.normal(size=(t, e)) + 2 * np.log(skew + 1e-3)).to(dtype)
            if draw(st.booleans()):  # NaN / Inf rows
                bad = rng.random(t) < 0.15
                z[torch.from_numpy(bad), int(rng.integers(0, e))] = float(
                    rng.choice([np.nan, np.inf, -np.inf])
                )
            tensors[f"layers.{layer}.router_logits"] = z
        if kind in ("ids", "both"):
            ids = np.array([rng.choice(e, size=k, replace=False, p=skew) for _ in range(t)])
            if draw(st.booleans()) and k > 1:
                ids[rng.random(t) < 0.1, -1] = -1  # empty slots
            tensors[f"layers.{layer}.topk_ids"] = torch.from_numpy(ids).to(torch.int32)
            if draw(st.booleans()):
                tensors[f"layers.{layer}.topk_weights"] = torch.from_numpy(rng.random((t, k))).float()
    if draw(st.booleans()):
        # few, long runs so that sequences cross chunk and split boundaries
        tensors["tokens.sequence_ids"] = torch.from_numpy(np.cumsum(rng.random(t) < 0.1)).to(torch.int64)
        if draw(st.booleans()):
            tensors["tokens.positions"] = torch.from_numpy(rng.integers(0, 200, size=t))
    if draw(st.booleans()):
        tensors["tokens.mask"] = torch.from_numpy(rng.random(t) > 0.25).to(torch.bool)
    if draw(st.booleans()):
        tensors["tokens.step"] = torch.from_numpy(np.sort(rng.integers(0, 4, size=t)))
    if draw(st.booleans()):  # accuracy, loss, domain and vocabulary specialisation, paths' accuracy
        tensors["tokens.correct"] = torch.from_numpy(rng.random(t) < 0.6).to(torch.uint8)
        tensors["tokens.loss"] = torch.from_numpy(rng.random(t) * 3).float()
        tensors["tokens.domain"] = torch.from_numpy(rng.integers(0, 3, size=t))
        tensors["tokens.input_ids"] = torch.from_numpy(rng.integers(0, 12, size=t))
    sf = draw(st.sampled_from(["softmax", "sigmoid", "topk_softmax"]))
    shards = draw(st.integers(1, 3))
    # torch.sigmoid is elementwise with a vectorised body and a scalar tail that differ in the last float32
    # bit, so with sigmoid routing the per-token scores depend (at 1 ulp) on the chunk's shape.
    rel = 1e-6 if sf == "sigmoid" and any(kind in ("logits", "both") for kind in kinds) else 1e-9
    return {
        "tensors": tensors,
        "meta": trace_metadata(e, k, sf),
        "rel": rel,
        "t": t,
        "shards": min(shards, t),
        "group_tokens": draw(st.integers(1, 20)),
        "seed": seed,
    }


def _write(root: Path, case: dict[str, Any]) -> Path:
    tensors, t, shards = case["tensors"], case["t"], case["shards"]
    if shards == 1:
        return write_raw(root / "t.safetensors", tensors, case["meta"])
    cuts = np.linspace(0, t, shards + 1).astype(int)
    folder = root / "shards"
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=False)):
        part = {}
        for name, v in tensors.items():
            part[name] = v if name.endswith("expert_counts") else v[a:b]
        write_raw(folder / f"part-{i:05d}.safetensors", part, case["meta"])
    return folder


def _finish(trace, stats: ModelStats) -> dict[str, Any]:
    add_count_layers(trace, stats)
    out = stats.compute()
    # the matrices and histograms behind --detail must agree too
    for layer, s in stats.layers.items():
        out[f"detail{layer}"] = {
            "coactivation": s.coactivation.pairs.tolist(),
            "steps": s.steps.compute(),
            "margins": s.router.margin_histogram(),
            "excluded": s.excluded_nonfinite,
        }
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=traces(), data=st.data())
def test_streaming_equals_one_shot_equals_merge(case: dict[str, Any], data: st.DataObject) -> None:
    from moediag.stats import StatsOptions

    min_capacity = data.draw(st.sampled_from([0, 0, 3]), label="min_capacity")
    options = StatsOptions(capacity_group_tokens=case["group_tokens"], min_capacity=min_capacity)
    with tempfile.TemporaryDirectory() as tmp:
        trace = open_trace(_write(Path(tmp), case))
        t = case["t"]
        one = _finish(trace, trace_stats(trace, trace.iter_chunks(10**6), options))

        size = data.draw(st.integers(1, max(1, t)), label="chunk_tokens")
        streamed = _finish(trace, trace_stats(trace, trace.iter_chunks(size), options))
        assert_same(one, streamed, "streamed", case["rel"])

        chunks = list(trace.iter_chunks(data.draw(st.integers(1, max(1, t)), label="split chunk")))
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(chunks) - 1)), max_size=4), label="cuts"))
        bounds = [0, *[c for c in cuts if c < len(chunks)], len(chunks)]
        spans = zip(bounds[:-1], bounds[1:], strict=True)
        parts = [trace_stats(trace, chunks[a:b], options) for a, b in spans]
        merged = parts[0]
        for p in parts[1:]:
            merged.merge(p)
        assert_same(one, _finish(trace, merged), "merged", case["rel"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=traces(), data=st.data())
def test_tree_merge_equals_one_shot(case: dict[str, Any], data: st.DataObject) -> None:
    """Merging is associative: ((a b) (c d)) in order gives the same figures as one pass."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = open_trace(_write(Path(tmp), case))
        one = _finish(trace, trace_stats(trace, trace.iter_chunks(10**6)))
        chunks = list(trace.iter_chunks(data.draw(st.integers(1, max(1, case["t"])), label="chunk")))
        parts = [trace_stats(trace, [c]) for c in chunks]
        while len(parts) > 1:
            parts = [
                _merged(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                for i in range(0, len(parts), 2)
            ]
        assert_same(one, _finish(trace, parts[0]), "tree", case["rel"])


def _merged(a: ModelStats, b: ModelStats) -> ModelStats:
    a.merge(b)
    return a
