"""analyze_trace end to end against a from-the-definitions reference of every per-layer figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moediag.analysis import analyze_trace
from moediag.stats.capacity import CAPACITY_FACTORS
from tests import _reference as ref
from tests.conftest import random_tensors, trace_metadata


def reference_layer(
    tensors,
    layer: int,
    e: int,
    k: int,
    sf: str | None,
    *,
    norm: bool | None = None,
    n_group=None,
    topk_group=None,
    group_tokens: int = 4096,
) -> dict:
    """Every figure of one layer, from the raw tensors, with plain loops (tests/_reference.py)."""
    z = tensors.get(f"layers.{layer}.router_logits")
    ids_t = tensors.get(f"layers.{layer}.topk_ids")
    w_t = tensors.get(f"layers.{layer}.topk_weights")
    bias_t = tensors.get(f"layers.{layer}.selection_bias")
    n = (z if z is not None else ids_t).shape[0]
    keep = np.ones(n, dtype=bool)
    if "tokens.mask" in tensors:
        keep &= tensors["tokens.mask"].numpy().astype(bool)
    nonfinite = 0
    if z is not None:
        finite = np.isfinite(z.float().numpy()).all(axis=1)
        nonfinite = int((keep & ~finite).sum())
        keep &= finite
    rows = np.nonzero(keep)[0]
    t = len(rows)
    out: dict = {"tokens": t, "excluded_nonfinite": nonfinite}
    bias = None if bias_t is None else bias_t.double().numpy()
    zz = None if z is None else z.float().double().numpy()[rows]
    if ids_t is not None:
        ids = ids_t.numpy().astype(np.int64)[rows]
    else:
        ids = ref.route_ref(zz, k, sf, bias, n_group, topk_group)
    out.update(ref.imbalance(ref.counts_of(ids, e), k, t))
    seq = tensors["tokens.sequence_ids"].numpy()[rows] if "tokens.sequence_ids" in tensors else None
    positions = tensors["tokens.positions"].numpy()[rows].tolist() if "tokens.positions" in tensors else None
    if zz is not None:
        probs = ref.distribution_ref(zz, sf)
        out["aux_loss"] = ref.aux_loss(ids, probs, e)
        out["z_loss"] = ref.z_loss(zz)
        out["router_entropy"] = ref.router_entropy(probs)
        out["confidence"] = ref.confidence(probs)
        sel = ref.sigmoid(zz) if sf == "sigmoid" else ref.softmax(zz)
        if bias is not None:
            sel = sel + bias
        out["seq_aux_loss"] = None if seq is None else ref.seq_aux_loss(ids, probs, seq, e)
        if w_t is not None:
            weights = w_t.double().numpy()[rows]
        elif sf == "topk_softmax":
            weights = np.array([ref.softmax(zz[i][ids[i]]) for i in range(t)])
        else:
            raw = ref.sigmoid(zz) if sf == "sigmoid" else ref.softmax(zz)
            weights = np.array([[raw[i][j] for j in ids[i]] for i in range(t)])
            if norm:
                weights = weights / weights.sum(axis=1, keepdims=True)
        top1 = [int(max(ids[i], key=lambda j, i=i: sel[i][j])) for i in range(t)]
        # the margin is measured against the choice actually made, among the experts the rule allows, in
        # probability units (s_(k) - s_(k+1) for a plain top-k; docs/metrics.md)
        margins = ref.margin_ref(zz, ids, sf, bias, n_group, topk_group)
        out["margin_mean"] = float(np.nanmean(margins))
        if ids_t is None and not n_group:
            assert out["margin_mean"] == pytest.approx(ref.margin_mean(sel, k))
    else:
        weights = w_t.double().numpy()[rows] if w_t is not None else None
        top1 = ids[:, 0].tolist()
    groups = seq.tolist() if seq is not None else [int(r) // group_tokens for r in rows]
    out["drop_rate"] = {}
    for policy in ("position", "probs"):
        out["drop_rate"][policy] = {}
        for cf in CAPACITY_FACTORS:
            d, a, _, _ = ref.drops(
                ids, weights if weights is not None else np.zeros(ids.shape), groups, e, cf, policy, positions
            )
            out["drop_rate"][policy][str(cf)] = d / a
    out["consecutive_same_rate"] = ref.consecutive_same(top1, None if seq is None else seq.tolist())
    out["coactivation"] = ref.coactivation(ids, e)
    return out


def check_layer(got: dict, want: dict, rel: float = 1e-6) -> None:
    for key, value in want.items():
        if key == "coactivation":
            continue
        g = got[key]
        if isinstance(value, float):
            assert g == pytest.approx(value, rel=rel, abs=1e-9), key
        elif isinstance(value, list) and value and isinstance(value[0], float):
            assert g == pytest.approx(value, rel=rel, abs=1e-12), key
        elif isinstance(value, dict):
            for policy, by_cf in value.items():
                for cf, v in by_cf.items():
                    assert g[policy][cf] == (None if v is None else pytest.approx(v, rel=1e-12)), (
                        key,
                        policy,
                        cf,
                    )
        else:
            assert g == value, key


@pytest.mark.parametrize("sf", ["softmax", "sigmoid", "topk_softmax"])
def test_every_figure_matches_reference(make_trace, sf: str) -> None:
    e, k, t = 8, 2, 150
    tensors = random_tensors(
        2, tokens=t, num_experts=e, top_k=k, layers=(0, 4), sequences=6, positions=True, mask=True, skew=2.0
    )
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(e, k, sf)), chunk_tokens=23)
    doc = a.to_dict(detail=True)
    for layer in (0, 4):
        want = reference_layer(tensors, layer, e, k, sf)
        got = next(x for x in doc["layers"] if x["layer"] == layer)
        check_layer(got, want)
        assert got["coactivation"] == want["coactivation"]


def test_deepseek_v3_style_trace(make_trace) -> None:
    """Sigmoid, selection bias, group limits, renormalised weights; no sequence ids (block groups)."""
    e, k, t = 16, 4, 120
    tensors = random_tensors(8, tokens=t, num_experts=e, top_k=k, layers=(1,), skew=0.5)
    tensors["layers.1.selection_bias"] = torch.linspace(-0.4, 0.4, e)
    meta = trace_metadata(e, k, "sigmoid", n_group=4, topk_group=2, norm_topk_prob="true")
    a = analyze_trace(make_trace(tensors=tensors, metadata=meta), chunk_tokens=50)
    from moediag.stats import StatsOptions

    b = analyze_trace(
        make_trace("b.safetensors", tensors=tensors, metadata=meta),
        options=StatsOptions(capacity_group_tokens=32),
        chunk_tokens=50,
    )
    want = reference_layer(tensors, 1, e, k, "sigmoid", norm=True, n_group=4, topk_group=2)
    check_layer(a.layer(1), want)
    want32 = reference_layer(tensors, 1, e, k, "sigmoid", norm=True, n_group=4, topk_group=2, group_tokens=32)
    check_layer(b.layer(1), want32)
    assert a.layer(1)["drop_rate"] != b.layer(1)["drop_rate"]


def test_recorded_ids_and_weights(make_trace) -> None:
    e, k, t = 6, 2, 90
    tensors = random_tensors(
        3, tokens=t, num_experts=e, top_k=k, layers=(2,), ids=True, sequences=4, skew=1.0
    )
    tensors["layers.2.topk_weights"] = torch.rand(t, k, generator=torch.Generator().manual_seed(1))
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(e, k, "softmax")), chunk_tokens=16)
    want = reference_layer(tensors, 2, e, k, "softmax")
    check_layer(a.layer(2), want)
    assert a.layer(2)["load"] == ref.counts_of(tensors["layers.2.topk_ids"].numpy(), e)


def test_ids_only_trace(make_trace) -> None:
    e, k, t = 5, 2, 70
    tensors = random_tensors(
        4, tokens=t, num_experts=e, top_k=k, layers=(0,), ids=True, logits=False, skew=2.0
    )
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(e, k, None)), chunk_tokens=9)
    row = a.layer(0)
    check_layer(row, reference_layer(tensors, 0, e, k, None))
    # no weights: the total stands (it does not depend on the policy), not where highest-weight drops
    assert row["drop_rate"]["probs"]["1.0"] == row["drop_rate_total"]["1.0"] is not None


def test_nonfinite_rows_excluded_and_counted(make_trace) -> None:
    e, k, t = 8, 2, 100
    tensors = random_tensors(5, tokens=t, num_experts=e, top_k=k, layers=(0, 1), sequences=5, positions=True)
    bad = [3, 17, 18, 60, 99]
    dirty = {name: v.clone() for name, v in tensors.items()}
    dirty["layers.0.router_logits"][bad[0], 2] = float("nan")
    dirty["layers.0.router_logits"][bad[1], 0] = float("inf")
    dirty["layers.0.router_logits"][bad[2], 7] = float("-inf")
    dirty["layers.0.router_logits"][bad[3]] = float("nan")
    dirty["layers.0.router_logits"][bad[4], 1] = float("nan")
    keep = torch.ones(t, dtype=torch.bool)
    keep[bad] = False
    clean = {name: v[keep] for name, v in tensors.items()}
    a = analyze_trace(
        make_trace("dirty.safetensors", tensors=dirty, metadata=trace_metadata(e, k)), chunk_tokens=13
    )
    b = analyze_trace(
        make_trace("clean.safetensors", tensors=clean, metadata=trace_metadata(e, k)), chunk_tokens=13
    )
    got, want = a.layer(0), b.layer(0)
    assert got["excluded_nonfinite"] == len(bad)
    assert want["excluded_nonfinite"] == 0
    assert a.layer(1)["excluded_nonfinite"] == 0
    assert a.summary["excluded_nonfinite"] == len(bad)
    assert got["tokens"] == t - len(bad)
    for key, value in want.items():
        # decode batches are blocks of token slots: an excluded row leaves its block out, so the clean
        # trace (rows removed, slots renumbered) has different batches by definition
        if key in ("excluded_nonfinite", "specialisation", "experts_touched"):
            continue
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-9), key
            assert math.isfinite(got[key]), key
        elif key != "drop_rate_by_position":
            assert got[key] == value or got[key] == pytest.approx(value), key


def test_nonfinite_rows_in_masked_padding_are_not_counted(make_trace) -> None:
    e, k, t = 4, 1, 20
    tensors = random_tensors(0, tokens=t, num_experts=e, top_k=k, layers=(0,))
    tensors["layers.0.router_logits"][5] = float("nan")
    mask = torch.ones(t, dtype=torch.uint8)
    mask[5] = 0
    tensors["tokens.mask"] = mask
    row = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(e, k))).layer(0)
    assert row["excluded_nonfinite"] == 0
    assert row["tokens"] == t - 1


def test_count_only_layers_report_logit_figures_as_null(make_trace) -> None:
    counts = torch.tensor([[5, 0, 3, 2], [4, 0, 4, 2]], dtype=torch.int64)
    tensors = {"layers.7.expert_counts": counts}
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(4, 2, None)))
    row = a.to_dict()["layers"][0]
    assert row["load"] == [9, 0, 7, 4]
    assert row["dead_experts"] == [1]
    want = ref.imbalance([9, 0, 7, 4], 2, 10)
    assert row["max_vio"] == pytest.approx(want["max_vio"])
    assert row["gini"] == pytest.approx(want["gini"])
    assert row["tokens"] is None
    for key in (
        "aux_loss",
        "seq_aux_loss",
        "z_loss",
        "router_entropy",
        "confidence",
        "margin_mean",
        "drop_rate",
        "consecutive_same_rate",
    ):
        assert key in row and row[key] is None, key
    assert a.summary["hf_aux_loss"] is None
    assert a.summary["aux_loss"]["mean"] is None


def test_count_only_layer_beside_token_layers(make_trace) -> None:
    tensors = random_tensors(1, tokens=40, num_experts=4, top_k=2, layers=(0,))
    tensors["layers.3.expert_counts"] = torch.tensor([[10, 10, 10, 50]])
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(4, 2)), chunk_tokens=7)
    assert a.layer(3)["load"] == [10, 10, 10, 50]  # added once, not once per chunk
    assert a.layer(3)["z_loss"] is None and a.layer(0)["z_loss"] is not None
    assert a.summary["tokens"] == 40
    assert a.summary["max_vio"]["worst_layer"] == 3


def test_layer_overrides_in_metadata(make_trace) -> None:
    e, t = 8, 60
    tensors = random_tensors(6, tokens=t, num_experts=e, top_k=2, layers=(0, 1))
    meta = trace_metadata(e, 2, "softmax", **{"layers.1.top_k": "1", "layers.1.score_function": "sigmoid"})
    a = analyze_trace(make_trace(tensors=tensors, metadata=meta), chunk_tokens=11)
    assert a.layer(0)["top_k"] == 2 and a.layer(1)["top_k"] == 1
    assert sum(a.layer(0)["load"]) == 2 * t and sum(a.layer(1)["load"]) == t
    check_layer(a.layer(1), reference_layer(tensors, 1, e, 1, "sigmoid"))
    check_layer(a.layer(0), reference_layer(tensors, 0, e, 2, "softmax"))
    assert a.summary["top_k"] == [1, 2]


def test_summary_mean_and_worst(make_trace) -> None:
    e, k = 8, 2
    tensors = random_tensors(7, tokens=80, num_experts=e, top_k=k, layers=(0, 1, 2), skew=0.0)
    tensors["layers.2.router_logits"] = tensors["layers.2.router_logits"] + torch.linspace(0, 6, e)
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(e, k)))
    s = a.summary
    rows = a.layers
    for key, worst in (
        ("max_vio", max),
        ("cv", max),
        ("gini", max),
        ("max_mean", max),
        ("min_mean", min),
        ("entropy_norm", min),
        ("aux_loss", max),
        ("z_loss", max),
    ):
        vals = [r[key] for r in rows]
        assert s[key]["mean"] == pytest.approx(sum(vals) / len(vals)), key
        assert s[key]["worst"] == worst(vals), key
        assert s[key]["worst_layer"] == rows[vals.index(worst(vals))]["layer"], key
    assert s["max_vio"]["worst_layer"] == 2
    assert s["tokens"] == 80 and s["layers"] == 3 and s["num_experts"] == e and s["top_k"] == k


def test_fully_masked_layer_gives_absent_figures(make_trace) -> None:
    tensors = random_tensors(0, tokens=10, num_experts=4, top_k=2, layers=(0,))
    tensors["tokens.mask"] = torch.zeros(10, dtype=torch.uint8)
    row = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(4, 2))).layer(0)
    assert row["tokens"] == 0
    for key in ("max_vio", "cv", "gini", "aux_loss", "z_loss", "confidence"):
        assert row[key] is None, key
    assert row["drop_rate"]["position"]["1.0"] is None


def test_bf16_f16_f32_logits_agree(make_trace) -> None:
    e, k, t = 8, 2, 64
    base = random_tensors(9, tokens=t, num_experts=e, top_k=k, layers=(0,))
    # values exactly representable in bf16 and f16, so the three files hold the same numbers
    z = base["layers.0.router_logits"].to(torch.bfloat16).to(torch.float16).float()
    rows = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        p = make_trace(
            f"{dtype}.safetensors",
            tensors={"layers.0.router_logits": z.to(dtype)},
            metadata=trace_metadata(e, k),
        )
        rows.append(analyze_trace(p).layer(0))
    for r in rows[1:]:
        assert r["load"] == rows[0]["load"]
        assert r["aux_loss"] == pytest.approx(rows[0]["aux_loss"], rel=1e-9)
        assert r["z_loss"] == pytest.approx(rows[0]["z_loss"], rel=1e-9)
    check_layer(rows[2], reference_layer({"layers.0.router_logits": z}, 0, e, k, "softmax"))


def test_gc_paused_nests_across_threads_and_restores() -> None:
    import gc
    import threading

    from moediag.analysis import gc_paused

    assert gc.isenabled()
    inside = threading.Event()
    leave = threading.Event()

    def worker() -> None:
        with gc_paused():
            inside.set()
            leave.wait(5)

    t = threading.Thread(target=worker)
    with gc_paused():
        t.start()
        inside.wait(5)
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread is still streaming
    leave.set()
    t.join()
    assert gc.isenabled()
    gc.disable()  # off before: stays off
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_filled_only_for_ids_the_router_chose(make_trace) -> None:
    """``LayerBatch.filled`` skips -1 checks, so it may be set only when moediag chose the ids itself."""
    from moediag.analysis import layer_batch
    from moediag.trace import open_trace

    e, k, t = 6, 2, 40
    tensors = random_tensors(4, tokens=t, num_experts=e, top_k=k, layers=(0,), ids=True)
    tensors["layers.0.topk_ids"][::5, 1] = -1  # empty slots in the recorded choices
    for logits_only in (True, False):
        chosen = dict(tensors)
        if logits_only:
            chosen.pop("layers.0.topk_ids")
        trace = open_trace(make_trace(tensors=chosen, metadata=trace_metadata(e, k, "softmax")))
        chunk = next(trace.iter_chunks())
        batch, _ = layer_batch(chunk, trace.layers[0], None, None)
        assert batch.filled is logits_only
        assert batch.select(torch.ones(len(batch), dtype=torch.bool)).filled is logits_only
    a = analyze_trace(make_trace(tensors=tensors, metadata=trace_metadata(e, k, "softmax")))
    assert a.layer(0)["empty_slots"] == int((tensors["layers.0.topk_ids"] < 0).sum())
