"""``moediag compare A B`` on the command line: tables, --json keys, exit 2 on incompatible inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moediag.cli import main
from moediag.trace import build_metadata, write_trace


def trace(path: Path, seed: int = 0, e: int = 8, layers: tuple[int, ...] = (0, 1), tokens: int = 200) -> Path:
    g = torch.Generator().manual_seed(seed)
    t = {f"layers.{x}.router_logits": torch.randn(tokens, e, generator=g) for x in layers}
    t["tokens.correct"] = torch.rand(tokens, generator=g) < 0.6
    return write_trace(path, t, build_metadata(num_experts=e, top_k=2, score_function="softmax"))


def test_json_against_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = trace(tmp_path / "a.safetensors")
    assert main(["compare", str(a), str(a), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["kind"] == "compare" and doc["meta"]["format"] == 1
    for row in doc["layers"]:
        assert row["top1_agreement"] == 1.0 and row["topk_overlap"] == 1.0
        assert row["load_js_divergence"] == 0.0 and row["max_vio_delta"] == 0.0 and row["cv_delta"] == 0.0


def test_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = trace(tmp_path / "a.safetensors")
    b = trace(tmp_path / "b.safetensors", seed=1)
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "load shift" in out and "top-1" in out and "JS" in out


def test_layer_sets_differ_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = trace(tmp_path / "a.safetensors", layers=(0, 1))
    b = trace(tmp_path / "b.safetensors", layers=(1, 2))
    assert main(["compare", str(a), str(b), "--json"]) == 0
    captured = capsys.readouterr()
    assert [r["layer"] for r in json.loads(captured.out)["layers"]] == [1]
    assert "common layer" in captured.err


def test_incompatible_expert_counts_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = trace(tmp_path / "a.safetensors")
    b = trace(tmp_path / "b.safetensors", e=4)
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "8 experts" in err and "Traceback" not in err


def test_inspect_shows_accuracy_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = trace(tmp_path / "a.safetensors", e=4, tokens=400)
    assert main(["inspect", str(a)]) == 0
    out = capsys.readouterr().out
    assert "Worst experts by accuracy" in out and "Paths over layers" in out
