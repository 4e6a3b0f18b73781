from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moediag.errors import InvalidInputError, MissingMetadataError
from moediag.importers import import_routing
from moediag.trace import open_trace
from tests.importers.fixtures import MegatronTracerWriter, write_megatron_router_state, write_megatron_tpe

E, K, H = 6, 2, 5
LAYERS = [1, 2]  # decoder.layers.0 is dense


def _run(folder: Path, rank: int, steps: int, micro: int, *, logits: bool, hidden: bool, seed: int) -> dict:
    """Simulate RouterTracer in training mode: per step, each micro-batch fires every MoE router once."""
    w = MegatronTracerWriter(folder, rank, logits=logits, hidden=hidden)
    g = torch.Generator().manual_seed(seed)
    truth: dict = {layer: {"ids": [], "lg": [], "hs": []} for layer in LAYERS}
    steps_col = []
    for step in range(steps):
        for _ in range(micro):
            n = int(torch.randint(1, 5, (1,), generator=g))
            for layer in LAYERS:
                lg = torch.randn(n, E, generator=g).to(torch.bfloat16)
                hs = torch.randn(n, H, generator=g).to(torch.bfloat16)
                ids = lg.float().topk(K).indices
                w.record(step, layer, ids, lg, hs)
                truth[layer]["ids"].append(ids)
                truth[layer]["lg"].append(lg)
                truth[layer]["hs"].append(hs)
            steps_col += [step] * n
        w.record(step, 0, torch.zeros(1, K, dtype=torch.int64), None, None, block="mtp", mtp_idx=0)
    truth["step"] = steps_col
    return truth


def _cat(chunks, layer, kind):
    return torch.cat([c.layer_tensor(layer, kind) for c in chunks])


def test_router_trace_with_sidecars_value_by_value(tmp_path: Path) -> None:
    d = tmp_path / "trace"
    t0 = _run(d, 0, steps=2, micro=2, logits=True, hidden=True, seed=0)
    t1 = _run(d, 1, steps=2, micro=1, logits=True, hidden=True, seed=1)
    bias = {layer: torch.randn(E) for layer in LAYERS}
    write_megatron_router_state(
        d,
        0,
        {
            layer: {
                "weight": torch.randn(E, H),
                "expert_bias": bias[layer],
                "score_function": "sigmoid",
                "topk": K,
            }
            for layer in LAYERS
        },
    )
    res = import_routing("megatron", d, tmp_path / "out", shard_tokens=3)
    assert res.per_token and res.layers == LAYERS and res.ranks == [0, 1] and res.top_k == K
    assert any("MTP" in n for n in res.notes)
    tr = open_trace(tmp_path / "out")
    assert tr.meta.routing.score_function == "sigmoid" and tr.meta.routing.num_experts == E
    chunks = list(tr.iter_chunks())
    for layer in LAYERS:
        assert torch.equal(
            _cat(chunks, layer, "topk_ids").long(), torch.cat(t0[layer]["ids"] + t1[layer]["ids"])
        )
        lg = _cat(chunks, layer, "router_logits")
        assert lg.dtype == torch.bfloat16
        assert torch.equal(
            lg.view(torch.int16), torch.cat(t0[layer]["lg"] + t1[layer]["lg"]).view(torch.int16)
        )
        hs = _cat(chunks, layer, "router_input")
        assert torch.equal(
            hs.view(torch.int16), torch.cat(t0[layer]["hs"] + t1[layer]["hs"]).view(torch.int16)
        )
        assert torch.equal(tr.selection_bias(layer), bias[layer])
    assert torch.cat([c.token("step") for c in chunks]).tolist() == t0["step"] + t1["step"]


def test_indices_only_needs_num_experts(tmp_path: Path) -> None:
    d = tmp_path / "trace"
    t0 = _run(d, 0, steps=1, micro=1, logits=False, hidden=False, seed=3)
    with pytest.raises(MissingMetadataError, match="--num-experts"):
        import_routing("megatron", d / "router_trace_rank0.jsonl", tmp_path / "o")
    res = import_routing(
        "megatron", d / "router_trace_rank0.jsonl", tmp_path / "o.safetensors", num_experts=E
    )
    ch = next(open_trace(tmp_path / "o.safetensors").iter_chunks())
    assert torch.equal(ch.layer_tensor(2, "topk_ids").long(), torch.cat(t0[2]["ids"]))
    assert res.num_tokens == len(t0["step"])


def test_inconsistent_ranks(tmp_path: Path) -> None:
    d = tmp_path / "trace"
    _run(d, 0, steps=1, micro=1, logits=False, hidden=False, seed=3)
    w = MegatronTracerWriter(d, 1, logits=False, hidden=False)
    w.record(0, 1, torch.tensor([[0, 1]]), None, None)  # rank 1 lacks layer 2
    with pytest.raises(InvalidInputError, match="inconsistent"):
        import_routing("megatron", d, tmp_path / "o", num_experts=E)
    assert not (tmp_path / "o").exists()


def test_truncated_logits_sidecar(tmp_path: Path) -> None:
    d = tmp_path / "trace"
    _run(d, 0, steps=1, micro=1, logits=True, hidden=False, seed=4)
    p = d / "logits_rank0.bin"
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(InvalidInputError, match="truncated sidecar"):
        import_routing("megatron", d, tmp_path / "o", score_function="softmax")
    assert not (tmp_path / "o").exists()


def test_tokens_per_expert(tmp_path: Path) -> None:
    d = tmp_path / "run"
    r0 = [
        {"iter": it, "block": "decoder", "layer": layer, "tpe": [[it + layer, 1, 0, 2]]}
        for it in (10, 20)
        for layer in (1, 3)
    ]
    r1 = [
        {"iter": it, "block": "decoder", "layer": layer, "tpe": [[1, 1, 1, it]]}
        for it in (10, 20)
        for layer in (1, 3)
    ]
    write_megatron_tpe(d, 0, r0)
    write_megatron_tpe(d, 1, r1)
    res = import_routing("megatron", d, tmp_path / "c.safetensors")
    assert not res.per_token and res.layers == [1, 3] and res.num_steps == 2
    tr = open_trace(tmp_path / "c.safetensors")
    assert tr.expert_counts(1).tolist() == [[12, 2, 1, 12], [22, 2, 1, 22]]
    assert tr.expert_counts(3).tolist() == [[14, 2, 1, 12], [24, 2, 1, 22]]
