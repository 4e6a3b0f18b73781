from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moediag.errors import InvalidInputError, MissingMetadataError, UsageError
from moediag.importers import import_routing
from moediag.importers.hf import PROB_FLOOR
from moediag.trace import open_trace
from tests.importers.fixtures import NotATensor


def _logits(n: int, e: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, e, generator=torch.Generator().manual_seed(seed)).to(dtype)


def test_tuple_of_logits_value_by_value(tmp_path: Path) -> None:
    a = tuple(_logits(6, 8, s) for s in range(3))  # 3 MoE layers, batch*seq = 6
    b = tuple(_logits(4, 8, 10 + s, torch.bfloat16) for s in range(3))
    b = tuple(t.float() for t in b)
    torch.save(a, tmp_path / "batch0.pt")
    torch.save(list(b), tmp_path / "batch1.pt")
    res = import_routing(
        "hf", tmp_path, tmp_path / "out", top_k=2, score_function="softmax", layer_ids=[1, 3, 5]
    )
    assert res.per_token and res.layers == [1, 3, 5] and res.num_tokens == 10 and res.num_experts == 8
    tr = open_trace(tmp_path / "out")
    assert tr.meta.routing.top_k == 2 and tr.meta.routing.score_function == "softmax"
    for i, layer in enumerate([1, 3, 5]):
        got = torch.cat([c.layer_tensor(layer, "router_logits") for c in tr.iter_chunks()])
        assert torch.equal(got, torch.cat([a[i], b[i]]))


def test_probabilities_stored_as_log_probs(tmp_path: Path) -> None:
    probs = torch.softmax(_logits(5, 4, 1), -1)
    probs[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    torch.save((probs,), tmp_path / "p.pt")
    res = import_routing("hf", tmp_path / "p.pt", tmp_path / "t.safetensors", top_k=1)
    assert any("probabilities" in n for n in res.notes)
    tr = open_trace(tmp_path / "t.safetensors")
    assert tr.meta.routing.score_function == "softmax"
    assert tr.meta.raw["router_logits_are_log_probs"] == "[0]"
    lg = next(tr.iter_chunks()).layer_tensor(0, "router_logits")
    assert torch.allclose(torch.softmax(lg, -1), probs, atol=1e-6)
    assert torch.allclose(lg, torch.log(probs.clamp_min(PROB_FLOOR)))
    with pytest.raises(UsageError, match="probabilities"):
        import_routing("hf", tmp_path / "p.pt", tmp_path / "u.safetensors", top_k=1, score_function="sigmoid")


def test_switch_pairs_with_dense_placeholders(tmp_path: Path) -> None:
    # Switch: one entry per layer; dense layers give a placeholder, sparse ones (logits, expert_index)
    lg1 = _logits(2 * 3, 4, 1).reshape(2, 3, 4)
    lg3 = _logits(2 * 3, 4, 2).reshape(2, 3, 4)
    idx1 = lg1.argmax(-1)
    idx3 = lg3.argmax(-1)
    idx3[1, 2] = 0 if lg3[1, 2].argmax() != 0 else idx3[1, 2]  # a token dropped over capacity
    placeholder = (torch.tensor([0]),)
    torch.save((placeholder, (lg1, idx1), placeholder, (lg3, idx3)), tmp_path / "s.pt")
    res = import_routing("hf", tmp_path / "s.pt", tmp_path / "t.safetensors")
    assert res.layers == [1, 3] and res.top_k == 1
    ch = next(open_trace(tmp_path / "t.safetensors").iter_chunks())
    assert torch.equal(ch.layer_tensor(1, "router_logits"), lg1.reshape(6, 4))
    assert torch.equal(ch.layer_tensor(1, "topk_ids").flatten(), idx1.flatten())
    want3 = idx3.flatten().clone()
    if lg3[1, 2].argmax() != 0:
        want3[5] = -1
    assert torch.equal(ch.layer_tensor(3, "topk_ids").flatten(), want3)
    assert ch.token("sequence_ids").tolist() == [0, 0, 0, 1, 1, 1]
    assert ch.token("positions").tolist() == [0, 1, 2, 0, 1, 2]


def test_missing_top_k_and_score_function_name_the_flags(tmp_path: Path) -> None:
    torch.save((_logits(3, 4, 0),), tmp_path / "x.pt")
    with pytest.raises(MissingMetadataError, match="--score-function"):
        import_routing("hf", tmp_path / "x.pt", tmp_path / "o")
    with pytest.raises(MissingMetadataError, match="--top-k"):
        import_routing("hf", tmp_path / "x.pt", tmp_path / "o", score_function="softmax")
    assert not (tmp_path / "o").exists()


def test_weights_only_refusal_is_one_line(tmp_path: Path) -> None:
    torch.save((NotATensor(),), tmp_path / "evil.pt")
    with pytest.raises(InvalidInputError) as ei:
        import_routing("hf", tmp_path / "evil.pt", tmp_path / "o", top_k=1, score_function="softmax")
    assert "weights_only" in str(ei.value) and "\n" not in str(ei.value)
    assert str(tmp_path / "evil.pt") in str(ei.value)


def test_files_with_different_layers_are_inconsistent(tmp_path: Path) -> None:
    torch.save((_logits(3, 4, 0), _logits(3, 4, 1)), tmp_path / "a.pt")
    torch.save((_logits(3, 4, 0),), tmp_path / "b.pt")
    with pytest.raises(InvalidInputError, match="MoE layers"):
        import_routing("hf", tmp_path, tmp_path / "o", top_k=1, score_function="softmax")
    assert not (tmp_path / "o").exists()
