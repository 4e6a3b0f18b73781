"""LiveStats: window figures are inspect's, windows tumble or slide, cumulative = one-shot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import HealthCheck, given, settings

from moediag.analysis import analyze_trace, chunk_mask, layer_batch
from moediag.live import LiveStats
from moediag.live.window import LAYER_KEYS, LiveLayer
from moediag.trace import open_trace
from tests.conftest import assert_same, random_tensors, trace_metadata, write_raw


def _batches(path: Path, chunk: int) -> list[tuple[int, Any]]:
    trace = open_trace(path)
    out = []
    for c in trace.iter_chunks(chunk):
        valid = chunk_mask(c)
        for layer in sorted(trace.layers):
            batch, _ = layer_batch(c, trace.layers[layer], None, valid)
            out.append((layer, batch))
    return out


def _inspect_rows(path: Path) -> dict[int, dict[str, Any]]:
    doc = analyze_trace(path).to_dict()
    return {row["layer"]: {k: row.get(k) for k in LAYER_KEYS} for row in doc["layers"]}


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    tensors = random_tensors(3, tokens=300, num_experts=8, top_k=2, layers=(0, 2), skew=2.0, mask=True)
    return write_raw(tmp_path / "t.safetensors", tensors, trace_metadata(8, 2))


def test_one_window_equals_inspect(trace: Path) -> None:
    live = LiveStats()
    for layer, batch in _batches(trace, 37):
        live.update(layer, batch, step=0)
    report = live.close_window(step=0)
    want = _inspect_rows(trace)
    assert sorted(report.layers) == sorted(want) == [0, 2]
    for layer, row in want.items():
        assert_same(report.layers[layer], row, f"layer {layer}")
        assert_same(report.cumulative[layer], row, f"cumulative {layer}")
    assert report.layers[0]["max_vio"] > 0.3  # the skew shows


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_tumbling_windows_and_cumulative(trace: Path, data: st.DataObject) -> None:
    """Each window holds exactly the batches since the previous close; cumulative = all of them."""
    batches = _batches(trace, data.draw(st.integers(5, 120), label="chunk"))
    steps = len(batches)
    closes = sorted(data.draw(st.sets(st.integers(0, steps - 1), min_size=1, max_size=5), label="closes"))
    live = LiveStats()
    start = 0
    for i, (layer, batch) in enumerate(batches):
        live.update(layer, batch, step=i)
        if i in closes or i == steps - 1:
            report = live.close_window(step=i)
            assert report.window == (start, i)
            for layer_ in report.layers:
                ref = None
                for lb in [b for b in batches[start : i + 1] if b[0] == layer_]:
                    if ref is None:
                        ref = LiveLayer(layer_, 8, 2)
                    ref.update(lb[1])
                if ref is None:
                    assert report.layers[layer_]["tokens"] == 0
                else:
                    assert_same(report.layers[layer_], ref.compute(), f"window {start}-{i}")
            start = i + 1
    assert_same(report.cumulative, {k: v for k, v in _inspect_rows(trace).items()}, "cumulative")


def test_sliding_by_steps_keeps_only_the_last_steps(trace: Path) -> None:
    batches = [b for b in _batches(trace, 10) if b[0] == 0]  # 30 batches of layer 0
    live = LiveStats(window_steps=4)
    for step, (layer, batch) in enumerate(batches):
        live.update(layer, batch, step=step)
        report = live.close_window(step=step)
        ref = LiveLayer(0, 8, 2)
        for _, b in batches[max(0, step - 3) : step + 1]:
            ref.update(b)
        assert report.window == (max(0, step - 3), step)
        assert_same(report.layers[0], ref.compute(), f"step {step}")
        assert len(live.ring) <= 4  # memory bounded by the window, not by the run


def test_sliding_by_seconds_and_bucket_bound(trace: Path) -> None:
    batches = [b for b in _batches(trace, 10) if b[0] == 0]
    live = LiveStats(window_seconds=2.5, max_buckets=100, clock=lambda: 0.0)
    for t, (layer, batch) in enumerate(batches):
        live.update(layer, batch)
        report = live.close_window(now=float(t))
        ref = LiveLayer(0, 8, 2)
        for _, b in batches[max(0, t - 2) : t + 1]:  # buckets that ended at t-2, t-1, t (>= t - 2.5)
            ref.update(b)
        assert report.layers[0]["tokens"] == ref.compute()["tokens"]
        assert report.layers[0]["load"] == ref.compute()["load"]
    capped = LiveStats(window_steps=10**9, max_buckets=3)
    for step, (layer, batch) in enumerate(batches):
        capped.update(layer, batch, step=step)
        capped.close_window(step=step)
    assert len(capped.ring) == 3


def test_counts_only_layers() -> None:
    live = LiveStats()
    counts = torch.tensor([[5, 0, 3, 2], [5, 0, 1, 4]])
    live.update_counts(1, 4, counts, step=7)
    report = live.close_window(step=7)
    row = report.layers[1]
    assert row["load"] == [10, 0, 4, 6]
    assert row["tokens"] is None and row["source"] == "counts" and row["aux_loss"] is None
    assert row["dead_experts"] == [1]
    assert row["max_vio"] == pytest.approx(10 / 5 - 1)
    # a window with nothing: zeros, no figures, and the cumulative figures stay
    empty = live.close_window(step=8)
    assert empty.layers[1]["load"] == [0, 0, 0, 0] and empty.layers[1]["max_vio"] is None
    assert empty.cumulative[1]["load"] == [10, 0, 4, 6]
    with pytest.raises(ValueError, match="experts"):
        live.update_counts(1, 5, torch.zeros(1, 5))


def test_records_follow_the_jsonl_contract(trace: Path) -> None:
    live = LiveStats()
    for layer, batch in _batches(trace, 100):
        live.update(layer, batch, step=3)
    records = live.close_window(step=9).records()
    kinds = [r["kind"] for r in records]
    assert kinds == ["layer", "layer", "summary"]
    layer = records[0]
    for key in ("step", "window", "layer", "tokens", "load", "max_vio", "cv", "dead_experts", "cold_experts"):
        assert key in layer
    assert layer["window"] == [3, 9] and layer["step"] == 9
    assert "aux_loss" in layer and "z_loss" in layer and "cumulative" in layer
    summary = records[-1]
    assert summary["max_vio"] == max(r["max_vio"] for r in records[:2])
    assert summary["layers"] == 2


def test_a_full_ring_merges_its_oldest_buckets_instead_of_dropping_them() -> None:
    from moediag.watch.decoders import ids_batch

    live = LiveStats(window_steps=6, max_buckets=2)
    for step in range(1, 5):  # one token a step, on expert step % 4
        live.update(0, ids_batch(torch.tensor([[step % 4]]), 4), step=step)
        report = live.close_window(step=step)
        assert len(live.ring) <= 2
        assert report.layers[0]["tokens"] == step  # all of the last 6 steps: none dropped
    assert report.layers[0]["load"] == [1, 1, 1, 1] and report.window == (1, 4)
