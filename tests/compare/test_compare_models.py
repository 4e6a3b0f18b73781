"""``moediag compare DENSE SPARSE``: compute side by side, the fair framing, quality per compute."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from moediag.checkpoint.compute import ModelCompute
from moediag.cli import main
from moediag.compare.models import framing
from tests.checkpoint.conftest import Factory
from tests.conftest import sha256, write_raw


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> Factory:
    return Factory(tmp_path_factory.mktemp("models"))


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    capsys.readouterr()  # whatever came before (transformers' save progress when a model was just built)
    assert main(["compare", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_dense_sparse_either_order(ckpts: Factory, capsys: pytest.CaptureFixture[str]) -> None:
    dense, sparse = ckpts("llama_dense"), ckpts("mixtral")
    ab = _json(capsys, str(dense.path), str(sparse.path), "--seq-len", "16")
    ba = _json(capsys, str(sparse.path), str(dense.path), "--seq-len", "16")
    assert ab["meta"]["inputs"] == "models" and ab["meta"]["seq_len"] == 16
    a, b = ab["models"]
    assert (a["path"], b["path"]) == (str(dense.path), str(sparse.path))
    assert [m["path"] for m in ba["models"]] == [str(sparse.path), str(dense.path)]
    for m in ab["models"]:
        assert {"total_params", "active_params", "flops_per_token", "weight_bytes"} <= set(m)
    assert a["total_params"] == a["active_params"] == dense.total
    assert (b["total_params"], b["active_params"]) == (sparse.total, sparse.active)
    assert (a["flops_per_token"], b["flops_per_token"]) == (35840, 39424)  # tests/checkpoint/test_compute.py
    fr = ab["framing"]
    assert fr["reference"] == "b"  # the sparse model
    assert fr["compute_off"] == pytest.approx(abs(35840 - 39424) / 39424)
    assert fr["capacity_off"] == pytest.approx(abs(dense.total - sparse.total) / sparse.total)
    assert fr["matched"] == "compute-matched" and fr["warning"] is None
    assert ba["framing"]["reference"] == "a" and ba["framing"]["matched"] == "compute-matched"
    assert ba["framing"]["compute_off"] == pytest.approx(fr["compute_off"])


def test_neither_framing_warns(ckpts: Factory, capsys: pytest.CaptureFixture[str]) -> None:
    dense, sparse = ckpts("llama_dense"), ckpts("deepseek_v3")
    capsys.readouterr()
    assert main(["compare", str(dense.path), str(sparse.path), "--seq-len", "16"]) == 0
    captured = capsys.readouterr()
    assert "NEITHER" in captured.out
    assert "moediag: warning: this pair is neither compute-matched" in captured.err
    doc = _json(capsys, str(dense.path), str(sparse.path), "--seq-len", "16")
    assert doc["framing"]["matched"] == "neither" and doc["framing"]["warning"]


def test_two_moe_models(ckpts: Factory, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = ckpts("mixtral"), ckpts("deepseek_v3")  # 4 vs 8 experts: no router comparison
    doc = _json(capsys, str(a.path), str(b.path))
    assert doc["meta"]["inputs"] == "models" and doc["framing"]["reference"] == "a"
    assert [m["moe"] for m in doc["models"]] == [True, True]
    # same family, routers of one shape: the router comparison, with the model sections beside it
    same = _json(capsys, str(a.path), str(ckpts("mixtral:dup").path))
    assert same["meta"]["inputs"] == "checkpoints" and same["layers"][0]["router_cosine_min"] is not None
    assert same["framing"]["matched"] == "both" and len(same["models"]) == 2


def _mc(moe: bool, total: int, matmul: int, attention: int = 0) -> ModelCompute:
    return ModelCompute("x", moe, total, matmul, matmul, attention, 16, 4 * total, 0, [], 0, None)


@pytest.mark.parametrize(
    ("dense_total", "want"),
    [(100, "compute-matched"), (400, "capacity-matched"), (250, "neither"), (125, "compute-matched")],
)
def test_framing_boundaries(dense_total: int, want: str) -> None:
    sparse = _mc(True, 400, 100)
    dense = _mc(False, dense_total, dense_total)
    fr = framing(dense, sparse)
    assert fr["matched"] == want
    assert (fr["warning"] is not None) == (want == "neither")
    assert framing(sparse, dense)["matched"] == want
    # 25% is inside, just over is not
    assert framing(_mc(False, 126, 126), sparse)["matched"] == "neither"


def _eval_trace(
    path: Path, loss: np.ndarray, correct: np.ndarray, domain: np.ndarray, **extra: torch.Tensor
) -> Path:
    tensors = {
        "tokens.loss": torch.from_numpy(loss).float(),
        "tokens.correct": torch.from_numpy(correct),
        "tokens.domain": torch.from_numpy(domain),
        **extra,
    }
    return write_raw(
        path, tensors, {"format": "moediag-trace", "version": "1", "domains": '["code", "prose"]'}
    )


def test_quality_per_compute(ckpts: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    n = 4000
    domain = (rng.random(n) < 0.5).astype(np.int64)
    loss_a = rng.gamma(2.0, 1.0, n)
    # B: better on prose, worse on code, about level on average
    loss_b = loss_a + np.where(domain == 0, 0.3, -0.3) + rng.normal(0, 0.1, n)
    correct_a = rng.random(n) < 0.6
    correct_b = correct_a.copy()
    flip = rng.random(n) < 0.2
    correct_b[flip & (domain == 0)] = False
    correct_b[flip & (domain == 1)] = True
    ta = _eval_trace(tmp_path / "a.safetensors", loss_a, correct_a, domain)
    tb = _eval_trace(tmp_path / "b.safetensors", loss_b, correct_b, domain)
    before = sha256(ta), sha256(tb)
    dense, sparse = ckpts("llama_dense"), ckpts("mixtral")
    args = [str(dense.path), str(sparse.path), "--seq-len", "16", "--trace", str(ta), "--trace", str(tb)]
    doc = _json(capsys, *args, "--chunk-tokens", "333")
    q = doc["quality"]
    assert q["tokens"] == n and (sha256(ta), sha256(tb)) == before
    la, lb = loss_a.astype(np.float32).astype(np.float64), loss_b.astype(np.float32).astype(np.float64)
    for row in q["domains"]:
        sel = domain == row["domain_id"]
        d = lb[sel] - la[sel]
        assert row["domain"] == ["code", "prose"][row["domain_id"]]
        assert row["loss_a"] == pytest.approx(la[sel].mean())
        assert row["loss_delta"] == pytest.approx(d.mean())
        half = 1.959963984540054 * d.std(ddof=1) / math.sqrt(sel.sum())
        assert row["loss_delta_ci"] == pytest.approx([d.mean() - half, d.mean() + half])
        assert row["accuracy_b"] == pytest.approx(correct_b[sel].mean())
        dc = correct_b[sel].astype(float) - correct_a[sel].astype(float)
        assert row["accuracy_delta"] == pytest.approx(dc.mean())
        assert row["accuracy_per_gflop_b"] == pytest.approx(correct_b[sel].mean() / (39424 / 1e9))
    assert q["worse_domains"] == ["code"] and q["better_domains"] == ["prose"]
    assert q["overall"]["accuracy_a"] == pytest.approx(correct_a.mean())
    # the table says it too
    assert main(["compare", *args]) == 0
    out = capsys.readouterr().out
    assert "quality on the same" in out and "accuracy per GFLOP" in out
    code = next(line for line in out.splitlines() if line.strip().startswith("code"))
    assert code.rstrip().endswith("worse")


def test_quality_needs_the_same_tokens(
    ckpts: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    ta = _eval_trace(
        tmp_path / "a.safetensors", rng.random(10), rng.random(10) < 0.5, np.zeros(10, dtype=np.int64)
    )
    tb = _eval_trace(
        tmp_path / "b.safetensors", rng.random(12), rng.random(12) < 0.5, np.zeros(12, dtype=np.int64)
    )
    ids = torch.arange(10)
    tc = _eval_trace(
        tmp_path / "c.safetensors",
        rng.random(10),
        rng.random(10) < 0.5,
        np.zeros(10, dtype=np.int64),
        **{"tokens.input_ids": ids},
    )
    td = _eval_trace(
        tmp_path / "d.safetensors",
        rng.random(10),
        rng.random(10) < 0.5,
        np.zeros(10, dtype=np.int64),
        **{"tokens.input_ids": ids.flip(0)},
    )
    m = [str(ckpts("llama_dense").path), str(ckpts("mixtral").path)]
    capsys.readouterr()  # transformers' save progress, if the models were built just now
    for pair, needle in (((ta, tb), "not on the same evaluation tokens"), ((tc, td), "input_ids differ")):
        assert main(["compare", *m, "--trace", str(pair[0]), "--trace", str(pair[1])]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and str(pair[1]) in err[0]
    assert main(["compare", *m, "--trace", str(ta)]) == 2
    assert "--trace is given twice" in capsys.readouterr().err
    assert main(["compare", *m, "--seq-len", "0"]) == 2
    assert "--seq-len" in capsys.readouterr().err


def test_model_options_are_for_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = torch.tensor([[0, 1]] * 8, dtype=torch.int32)
    meta = {"format": "moediag-trace", "version": "1", "num_experts": "4", "top_k": "2"}
    t = write_raw(tmp_path / "t.safetensors", {"layers.0.topk_ids": ids}, meta)
    assert main(["compare", str(t), str(t), "--seq-len", "16"]) == 2
    assert "apply to two checkpoints" in capsys.readouterr().err


def test_end_to_end_with_recorded_traces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two real Mixtrals, top-2 and the same weights routed top-1, recorded by ``moediag record`` on the
    same prose and code: the same capacity at less compute, compared per domain on the same tokens."""
    transformers = pytest.importorskip("transformers")
    from moediag.record import record
    from tests.record.conftest import CODE, PROSE, build

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    (tmp_path / "prose.txt").write_text(PROSE)
    (tmp_path / "code.py").write_text(CODE)
    top2 = build("mixtral")
    top2.save_pretrained(tmp_path / "top2")
    top2.config.num_experts_per_tok = 1
    top1 = build("mixtral")
    top1.config.num_experts_per_tok = 1
    for layer in top1.model.layers:  # transformers' router reads top_k at construction
        layer.mlp.gate.top_k = 1
        layer.mlp.top_k = 1
    top1.save_pretrained(tmp_path / "top1")
    traces = []
    for name in ("top2", "top1"):
        out = tmp_path / f"{name}.trace"
        record(tmp_path / name, [tmp_path / "prose.txt", tmp_path / "code.py"], out, max_tokens=256,
               seq_len=64, batch_size=4, device="cpu")  # fmt: skip
        traces.append(out)
    capsys.readouterr()
    doc = _json(capsys, str(tmp_path / "top2"), str(tmp_path / "top1"), "--trace", str(traces[0]),
                "--trace", str(traces[1]), "--seq-len", "64")  # fmt: skip
    a, b = doc["models"]
    assert a["total_params"] == b["total_params"] and b["flops_per_token"] < a["flops_per_token"]
    cfg = top2.config
    one_expert = 3 * cfg.hidden_size * cfg.intermediate_size  # gate, up and down of one expert
    assert a["flops_per_token"] - b["flops_per_token"] == 2 * cfg.num_hidden_layers * one_expert
    assert doc["framing"]["capacity_off"] == 0 and doc["framing"]["compute_off"] > 0
    q = doc["quality"]
    assert q["tokens"] > 0 and [d["domain"] for d in q["domains"]] == ["prose", "code"]
    assert q["has_loss"] and q["has_correct"]
    assert q["overall"]["accuracy_per_gflop_b"] is not None
