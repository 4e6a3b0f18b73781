"""``moediag.compare``: saturation on the same tokens, load and accuracy shift, checkpoints, and the
accuracy/paths/specialisation keys analysis adds to a trace."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from moediag.analysis import analyze_trace
from moediag.compare import aligned_chunks, compare, compare_traces, js_divergence
from moediag.errors import InvalidInputError, UsageError
from moediag.stats import StatsOptions
from moediag.trace import TraceWriter, build_metadata, open_trace, write_trace


def ids_trace(path: Path, ids: dict[int, list[list[int]]], e: int = 4, **tokens: list) -> Path:
    tensors = {f"layers.{layer}.topk_ids": torch.tensor(v, dtype=torch.int32) for layer, v in ids.items()}
    for name, values in tokens.items():
        tensors[f"tokens.{name}"] = torch.tensor(values)
    k = len(next(iter(ids.values()))[0])
    return write_trace(path, tensors, build_metadata(num_experts=e, top_k=k))


def logits_trace(
    path: Path,
    seed: int = 0,
    tokens: int = 300,
    e: int = 8,
    layers: tuple[int, ...] = (0, 1, 2),
    accuracy: bool = True,
) -> Path:
    g = torch.Generator().manual_seed(seed)
    t = {f"layers.{layer}.router_logits": torch.randn(tokens, e, generator=g) for layer in layers}
    if accuracy:
        t["tokens.correct"] = torch.rand(tokens, generator=g) < 0.7
        t["tokens.loss"] = torch.rand(tokens, generator=g)
        t["tokens.domain"] = torch.randint(0, 2, (tokens,), generator=g)
        t["tokens.input_ids"] = torch.randint(0, 20, (tokens,), generator=g)
    return write_trace(
        path, t, build_metadata(num_experts=e, top_k=2, score_function="softmax", domains=["code", "prose"])
    )


def test_js_divergence() -> None:
    assert js_divergence(torch.tensor([1, 0]), torch.tensor([0, 1])) == pytest.approx(1.0)
    assert js_divergence(torch.tensor([3, 1]), torch.tensor([6, 2])) == pytest.approx(0.0)
    # by hand: P = (1/2, 1/2), Q = (1, 0): M = (3/4, 1/4)
    want = 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)) + 0.5 * math.log2(1 / 0.75)
    assert js_divergence(torch.tensor([1, 1]), torch.tensor([1, 0])) == pytest.approx(want)
    assert js_divergence(torch.tensor([0, 0]), torch.tensor([1, 0])) is None


def test_trace_against_itself(tmp_path: Path) -> None:
    a = logits_trace(tmp_path / "a.safetensors")
    result = compare(a, a, chunk_tokens=64)
    s = result.summary
    assert s["tokens_match"] and s["top1_agreement"]["mean"] == 1.0 and s["topk_overlap"]["mean"] == 1.0
    for row in result.layers:
        assert row["top1_agreement"] == 1.0 and row["topk_overlap"] == 1.0
        assert row["load_js_divergence"] == 0.0 and row["max_vio_delta"] == 0.0 and row["cv_delta"] == 0.0
        assert row["top1_agreement_baseline"] == 1 / 8 and row["topk_overlap_baseline"] == 2 / 8
        assert all(x["delta"] == 0.0 and not x["shifted"] for x in row["expert_accuracy_shift"])
    assert s["accuracy_delta"] == 0.0 and s["shifted_experts"] == 0
    json.dumps(result.to_dict(), allow_nan=False)


def test_saturation_by_hand(tmp_path: Path) -> None:
    a = ids_trace(tmp_path / "a.safetensors", {0: [[0, 1], [2, 3], [1, 0], [3, 2]]})
    b = ids_trace(tmp_path / "b.safetensors", {0: [[0, 2], [2, 3], [0, 1], [1, 0]]})
    row = compare_traces(a, b).layers[0]
    assert row["top1_agreement"] == 0.5  # tokens 0 and 1
    assert row["topk_overlap"] == (1 + 2 + 2 + 0) / 8
    # load A: [2,2,2,2], B: [3,2,2,1]
    assert row["max_vio_delta"] == pytest.approx(0.5)
    assert row["load_js_divergence"] == pytest.approx(
        js_divergence(torch.tensor([2, 2, 2, 2]), torch.tensor([3, 2, 2, 1]))
    )


def test_mask_and_input_ids(tmp_path: Path) -> None:
    a = ids_trace(
        tmp_path / "a.safetensors", {0: [[0], [1], [2]]}, input_ids=[5, 6, 7], mask=[True, False, True]
    )
    b = ids_trace(tmp_path / "b.safetensors", {0: [[0], [2], [3]]}, input_ids=[5, 6, 7])
    row = compare_traces(a, b).layers[0]
    assert row["tokens_compared"] == 2 and row["top1_agreement"] == 0.5
    c = ids_trace(tmp_path / "c.safetensors", {0: [[0], [1], [2]]}, input_ids=[5, 6, 8])
    result = compare_traces(a, c)
    assert result.layers[0]["top1_agreement"] is None and result.layers[0]["topk_overlap"] is None
    assert not result.summary["tokens_match"] and "input_ids differ at token 2" in result.notes[0]


def test_different_token_counts_give_no_saturation(tmp_path: Path) -> None:
    a = logits_trace(tmp_path / "a.safetensors", tokens=300)
    b = logits_trace(tmp_path / "b.safetensors", seed=1, tokens=200)
    result = compare_traces(a, b)
    assert result.layers[0]["topk_overlap"] is None and result.layers[0]["load_js_divergence"] > 0
    assert "token counts differ" in result.notes[0]


def test_layer_sets_and_expert_counts(tmp_path: Path) -> None:
    a = logits_trace(tmp_path / "a.safetensors", layers=(0, 1, 2))
    b = logits_trace(tmp_path / "b.safetensors", layers=(1, 2, 3))
    result = compare_traces(a, b)
    assert [r["layer"] for r in result.layers] == [1, 2]
    assert result.summary["layers_only_in_a"] == [0] and result.summary["layers_only_in_b"] == [3]
    assert "common layer" in result.notes[0]
    c = logits_trace(tmp_path / "c.safetensors", e=4)
    with pytest.raises(InvalidInputError, match="layer 0 has 8 experts"):
        compare_traces(a, c)
    d = logits_trace(tmp_path / "d.safetensors", layers=(7,))
    with pytest.raises(UsageError, match="no MoE layer in common"):
        compare_traces(a, d)


def test_aligned_chunks_across_different_shards(tmp_path: Path) -> None:
    a = logits_trace(tmp_path / "a.safetensors", tokens=100, accuracy=False)
    full = open_trace(a)
    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{x}.router_logits": torch.randn(100, 8, generator=g) for x in (0, 1, 2)}
    with TraceWriter(
        tmp_path / "b", build_metadata(num_experts=8, top_k=2, score_function="softmax"), shard_tokens=30
    ) as w:
        for s in range(0, 100, 30):
            w.add({k: v[s : s + 30] for k, v in tensors.items()})
    sharded = open_trace(tmp_path / "b")
    pairs = list(aligned_chunks(full, sharded, 45))
    assert [(x.start, x.stop) for x, _ in pairs] == [(0, 30), (30, 45), (45, 60), (60, 90), (90, 100)]
    assert all((x.start, x.stop) == (y.start, y.stop) for x, y in pairs)
    # same logits, different sharding: identical routing
    write_trace(
        tmp_path / "c.safetensors", tensors, build_metadata(num_experts=8, top_k=2, score_function="softmax")
    )
    result = compare_traces(tmp_path / "c.safetensors", tmp_path / "b", chunk_tokens=45)
    assert all(r["top1_agreement"] == 1.0 for r in result.layers)


def test_analysis_keys(tmp_path: Path) -> None:
    a = logits_trace(tmp_path / "a.safetensors")
    doc = analyze_trace(a, chunk_tokens=70, options=StatsOptions(path_windows=((1, 2),))).to_dict()
    layer = doc["layers"][0]
    row = layer["expert_accuracy"][0]
    assert set(row) >= {"expert", "tokens", "correct", "accuracy", "ci_low", "ci_high", "below_overall"}
    assert sum(r["tokens"] for r in layer["expert_accuracy"]) == 300
    assert sum(r["tokens"] for r in layer["expert_accuracy_topk"]) == 600
    assert layer["specialisation"]["domains"] is not None and layer["specialisation"]["vocabulary"]["ids"] > 0
    paths = doc["summary"]["paths"]
    assert [w["layers"] for w in paths] == [[0, 1, 2], [1, 2]]
    assert paths[0]["tokens"] == 300 and paths[0]["exact"]
    json.dumps(doc, allow_nan=False)
    plain = logits_trace(tmp_path / "p.safetensors", accuracy=False)
    doc = analyze_trace(plain).to_dict()
    assert doc["layers"][0]["expert_accuracy"] is None and doc["summary"]["accuracy"] is None
    assert doc["layers"][0]["specialisation"]["score"] is None


def test_streaming_chunks_equal_one_chunk(tmp_path: Path) -> None:
    a = logits_trace(tmp_path / "a.safetensors")
    one = analyze_trace(a, chunk_tokens=10_000).to_dict()
    many = analyze_trace(a, chunk_tokens=17).to_dict()
    for key in ("expert_accuracy", "expert_accuracy_topk"):
        assert one["layers"][1][key] == many["layers"][1][key]
    assert one["summary"]["paths"][0]["frequent"] == many["summary"]["paths"][0]["frequent"]


def _checkpoint(path: Path, seed: int, bias: bool = True) -> Path:
    g = torch.Generator().manual_seed(seed)
    t = {}
    for layer in (0, 1):
        p = f"model.layers.{layer}.mlp"
        t[f"{p}.gate.weight"] = torch.randn(4, 8, generator=g)
        if bias:
            t[f"{p}.gate.e_score_correction_bias"] = torch.randn(4, generator=g)
        for j in range(4):
            for m in ("gate_proj", "up_proj", "down_proj"):
                t[f"{p}.experts.{j}.{m}.weight"] = torch.randn(8, 8, generator=g)
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "model.safetensors"))
    (path / "config.json").write_text(
        json.dumps(
            {"model_type": "deepseek_v3", "n_routed_experts": 4, "num_experts_per_tok": 2, "hidden_size": 8}
        )
    )
    return path


def test_checkpoints(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a", 0)
    same = compare(a, a)
    assert same.inputs == "checkpoints"
    for row in same.layers:
        assert row["router_cosine"] == pytest.approx([1.0] * 4) and row["selection_bias_delta_max_abs"] == 0.0
    b = _checkpoint(tmp_path / "b", 1)
    diff = compare(a, b).layers
    assert all(r["router_cosine_min"] < 0.99 for r in diff) and diff[0]["selection_bias_delta_max_abs"] > 0


def test_trace_and_checkpoint_do_not_mix(tmp_path: Path) -> None:
    a = logits_trace(tmp_path / "a.safetensors")
    with pytest.raises(UsageError, match="two traces or two checkpoints"):
        compare(a, _checkpoint(tmp_path / "ck", 0))


def test_warns_that_expert_ids_of_different_models_need_not_correspond(tmp_path: Path) -> None:
    ids = {0: [[0, 1], [2, 3], [1, 2]]}
    a = write_trace(
        tmp_path / "a.safetensors", _ids_tensors(ids), build_metadata(num_experts=4, top_k=2, model="m-a")
    )
    b = write_trace(
        tmp_path / "b.safetensors", _ids_tensors(ids), build_metadata(num_experts=4, top_k=2, model="m-b")
    )
    same = write_trace(
        tmp_path / "c.safetensors", _ids_tensors(ids), build_metadata(num_experts=4, top_k=2, model="m-a")
    )
    assert any("need not number" in n and "'m-a'" in n for n in compare(a, b).notes)
    assert not any("need not number" in n for n in compare(a, same).notes)
    # checkpoints: independent random routers (mean cosine ~0) get the note, a model against itself does not
    c0, c1 = _checkpoint(tmp_path / "c0", 0), _checkpoint(tmp_path / "c1", 1)
    assert any("need not give the same role" in n for n in compare(c0, c1).notes)
    assert not any("need not give the same role" in n for n in compare(c0, c0).notes)


def _ids_tensors(ids: dict[int, list[list[int]]]) -> dict[str, torch.Tensor]:
    return {f"layers.{layer}.topk_ids": torch.tensor(v, dtype=torch.int32) for layer, v in ids.items()}
