"""`moediag.Recorder` in training and serving loops; routers that return no logits; disk caps."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import moediag
from moediag.errors import UnsupportedLayoutError, UsageError
from moediag.record import Recorder, find_routers
from moediag.trace import open_trace
from tests.record.conftest import VOCAB, build
from tests.record.test_record import _read_all


def _batch(b: int = 2, s: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))


def test_lazy_export() -> None:
    assert moediag.Recorder is Recorder


def test_every_step_and_outcomes_with_labels(tmp_path: Path) -> None:
    model = build("mixtral")
    with Recorder(model, tmp_path / "t", every=3) as rec:
        for i in range(7):
            ids = _batch(seed=i)
            model(input_ids=ids, labels=ids)
    assert rec.step == 7 and rec.steps_recorded == 3
    trace = open_trace(tmp_path / "t")
    data = _read_all(tmp_path / "t")
    assert sorted(data["tokens.step"].unique().tolist()) == [0, 3, 6]
    assert trace.num_tokens == 3 * 2 * 11  # the last position of each sequence has no target
    assert data["tokens.positions"].max().item() == 10
    # outcomes equal a direct computation on step 6's batch
    ids = _batch(seed=6)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    rows = data["tokens.step"] == 6
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1), reduction="none")
    assert torch.allclose(data["tokens.loss"][rows], loss, atol=1e-5)
    assert torch.equal(
        data["tokens.correct"][rows].bool(), (logits[:, :-1].argmax(-1) == ids[:, 1:]).reshape(-1)
    )
    with torch.no_grad():
        out = model(input_ids=ids, output_router_logits=True)
    ours = data["layers.1.router_logits"][rows]
    theirs = out.router_logits[1].reshape(2, 12, -1)[:, :-1].reshape(-1, 4)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_training_loop_with_backward(tmp_path: Path) -> None:
    """The documented loop: train mode, backward, optimizer; one capture per forward."""
    model = build("qwen2_moe").train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with Recorder(model, tmp_path / "t", every=2, sample=0.5, seed=1) as rec:
        for i in range(4):
            ids = _batch(seed=i)
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            with rec.paused(), torch.no_grad():
                model(input_ids=ids)  # evaluation: neither recorded nor a step
    assert rec.step == 4
    data = _read_all(tmp_path / "t")
    assert sorted(data["tokens.step"].unique().tolist()) == [0, 2]
    assert 0 < data["tokens.step"].shape[0] < 2 * 2 * 11  # sampled
    assert rec.tokens_recorded == data["tokens.step"].shape[0]


def test_serving_without_outcomes_keeps_every_token(tmp_path: Path) -> None:
    model = build("gpt_oss")
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # right padding is never recorded
    with Recorder(model, tmp_path / "t", outcomes=False, domains=["chat", "code"]) as rec, torch.no_grad():
        model(input_ids=_batch(s=10), attention_mask=mask)
        rec.domain = "code"
        model(input_ids=_batch(s=10, seed=1), attention_mask=mask)
    trace = open_trace(tmp_path / "t")
    assert trace.num_tokens == 2 * 17
    assert "correct" not in trace.token_fields and "loss" not in trace.token_fields
    data = _read_all(tmp_path / "t")
    assert data["tokens.domain"].tolist() == [0] * 17 + [1] * 17
    assert data["layers.0.topk_ids"].shape == (34, 2)
    assert trace.meta.domains == ["chat", "code"]


def test_disk_cap_is_hard(tmp_path: Path) -> None:
    model = build("olmoe")
    cap = 40_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = Recorder(model, tmp_path / "t", max_bytes=cap, router_inputs=True, shard_tokens=16)
        with rec, torch.no_grad():
            for i in range(20):
                model(input_ids=_batch(seed=i))
    assert rec.full
    assert any("max_bytes" in str(w.message) for w in caught)
    size = sum(f.stat().st_size for f in (tmp_path / "t").iterdir())
    assert 0.7 * cap < size <= cap  # a hard cap, and not far below it
    trace = open_trace(tmp_path / "t")
    assert trace.num_tokens == rec.tokens_recorded > 0
    assert len(list((tmp_path / "t").iterdir())) > 1  # several shards, each counted


def test_no_router_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedLayoutError, match="no MoE router"):
        Recorder(build("dense"), tmp_path / "t").start()
    with pytest.raises(UsageError):
        Recorder(build("mixtral"), tmp_path / "t", every=0)
    assert not os.listdir(tmp_path)


def test_nothing_recorded_writes_nothing(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="no step was recorded"), Recorder(build("mixtral"), tmp_path / "t"):
        pass
    assert not os.listdir(tmp_path)


# -- routers that return only their choice (DeepSeek-V3 remote code) or probabilities --------------------


class TopkOnlyGate(nn.Module):
    """Like DeepSeek-V3's remote-code MoEGate: returns (topk_idx, topk_weight, aux_loss), no logits."""

    def __init__(self, e: int, h: int, mode: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(e, h))
        self.top_k = 2
        self.mode = mode

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        logits = F.linear(x.float(), self.weight.float())
        if self.mode == "probs":
            probs = logits.softmax(-1)
            w, idx = probs.topk(2, dim=-1)
            return probs, w, idx
        w, idx = logits.sigmoid().topk(2, dim=-1)
        return idx, w, None


class Block(nn.Module):
    def __init__(self, e: int, h: int, mode: str) -> None:
        super().__init__()
        self.gate = TopkOnlyGate(e, h, mode)
        self.experts = nn.ModuleList(nn.Linear(h, h) for _ in range(e))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = self.gate(flat)
        idx, w = (out[0], out[1]) if self.gate.mode == "topk" else (out[2], out[1])
        y = torch.zeros_like(flat)
        for j in range(2):
            for e, expert in enumerate(self.experts):
                sel = idx[:, j] == e
                y[sel] += w[sel, j, None] * expert(flat[sel])
        return x + y.reshape(x.shape)


class Layer(nn.Module):
    def __init__(self, e: int, h: int, mode: str) -> None:
        super().__init__()
        self.mlp = Block(e, h, mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class Toy(nn.Module):
    def __init__(self, mode: str, e: int = 6, h: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, h)
        self.layers = nn.ModuleList(Layer(e, h, mode) for _ in range(2))
        self.head = nn.Linear(h, 50)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return SimpleNamespace(logits=self.head(x))


@pytest.mark.parametrize("mode", ["topk", "probs"])
def test_logits_recomputed_from_input_and_weight(mode: str, tmp_path: Path) -> None:
    model = Toy(mode)
    sites = find_routers(model)
    assert [(s.layer, s.name, s.num_experts, s.top_k) for s in sites] == [
        (0, "layers.0.mlp.gate", 6, 2),
        (1, "layers.1.mlp.gate", 6, 2),
    ]
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), Recorder(model, tmp_path / "t", score_function="sigmoid", model_name="toy") as rec:
        model(ids)
    assert rec._hooks is not None and rec._hooks.logits_source == {0: "recomputed", 1: "recomputed"}
    data = _read_all(tmp_path / "t")
    w0, w1 = (site.weight for site in sites)
    with torch.no_grad():
        x0 = model.embed(ids).reshape(-1, 16)
        expected0 = F.linear(x0, w0)
        x1 = model.layers[0](model.embed(ids)).reshape(-1, 16)
        expected1 = F.linear(x1, w1)
    assert torch.allclose(data["layers.0.router_logits"], expected0, atol=1e-5)
    assert torch.allclose(data["layers.1.router_logits"], expected1, atol=1e-5)
    ranked = expected0.sigmoid() if mode == "topk" else expected0.softmax(-1)
    chosen = ranked.topk(2, dim=-1).indices
    assert torch.equal(data["layers.0.topk_ids"].long().sort(-1).values, chosen.sort(-1).values)
    trace = open_trace(tmp_path / "t")
    assert trace.meta.model == "toy" and trace.layers[0].spec.score_function == "sigmoid"
