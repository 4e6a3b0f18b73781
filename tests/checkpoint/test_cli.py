"""The checkpoint half of ``moediag inspect``: JSON contract, tables that fit 80 columns, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moediag.cli.inspect_checkpoint import inspect_checkpoint_command

from .conftest import Factory

SUMMARY_KEYS = {
    "family",
    "moe_layers",
    "dense_layers",
    "num_experts",
    "top_k",
    "shared_experts",
    "score_function",
    "total_params",
    "active_params",
    "expert_params",
    "mtp_layers",
}
LAYER_KEYS = {"layer", "num_experts", "router_norms", "bias", "redundant_pairs", "distinct_experts"}


def _run(path: Path, capsys: pytest.CaptureFixture[str], **kw: object) -> tuple[int, str, str]:
    opts = {
        "as_json": False,
        "layer": None,
        "weights": True,
        "redundancy_threshold": 0.99,
        "console_width": 80,
    }
    opts.update(kw)
    capsys.readouterr()  # what building the fixture printed (transformers' config notes) is not ours
    code = inspect_checkpoint_command(path, **opts)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    return code, out, err


def test_json_contract(ckpt: Factory, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(ckpt("deepseek_v3").path, capsys, as_json=True)
    assert code == 0
    doc = json.loads(out)
    assert (
        doc["meta"]["format"] == 1 and doc["meta"]["kind"] == "checkpoint" and doc["meta"]["moediag_version"]
    )
    assert set(doc["summary"]) >= SUMMARY_KEYS
    for layer in doc["layers"]:
        assert set(layer) >= LAYER_KEYS
        for pair in layer["redundant_pairs"]:
            assert len(pair) == 3
    assert doc["layers"][0]["bias"]["kind"] == "selection"


def test_every_json_key_is_documented(ckpt: Factory) -> None:
    """Every key the document holds (meta, summary, layers, nested) appears in docs/checkpoints.md."""
    doc_text = (Path(__file__).parents[2] / "docs" / "checkpoints.md").read_text(encoding="utf-8")
    from moediag.checkpoint import analyze_checkpoint

    keys: set[str] = set()

    def walk(obj: object, depth: int = 0) -> None:
        if isinstance(obj, dict) and depth < 3:
            for k, v in obj.items():
                if not (isinstance(k, str) and ("." in k or "|" in k)):  # config_sources values are free text
                    keys.add(k)
                walk(v, depth + 1)
        elif isinstance(obj, list):
            for v in obj[:1]:
                walk(v, depth)

    for name in ("deepseek_v3", "gpt_oss", "qwen2_moe"):
        d = analyze_checkpoint(ckpt(name).path).to_dict()
        walk(d["meta"])
        walk({k: v for k, v in d["summary"].items() if k != "config_sources"})
        walk(d["layers"])
    missing = sorted(k for k in keys if f"`{k}`" not in doc_text and f'"{k}"' not in doc_text)
    assert missing == []
    assert keys >= SUMMARY_KEYS | LAYER_KEYS


def test_table_fits_80_columns(ckpt: Factory, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("mixtral:dup", "switch", "llama_dense", "qwen2_moe"):
        code, out, _ = _run(ckpt(name).path, capsys)
        assert code == 0
        assert max(len(line) for line in out.splitlines()) <= 80, name
        assert "\x1b[" not in out  # not a terminal: plain text
    _, out, _ = _run(ckpt("mixtral:dup").path, capsys)
    first = out.splitlines()[0]
    assert first.startswith("WEIGHTS ONLY: CHECK:") and "duplicate" in first
    assert "1=3" in out
    _, out, _ = _run(ckpt("llama_dense").path, capsys)
    assert out.startswith("DENSE: no MoE layers")
    _, out, _ = _run(ckpt("mixtral").path, capsys, weights=False)
    assert out.startswith("STRUCTURE ONLY")


def test_warnings_go_to_stderr(ckpt: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "w"
    shutil.copytree(ckpt("mixtral").path, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_local_experts"] = 16
    (folder / "config.json").write_text(json.dumps(cfg))
    code, out, err = _run(folder, capsys, as_json=True, weights=False)
    assert code == 0 and json.loads(out)["summary"]["num_experts"] == 4
    assert "moediag: warning:" in err and "config says 16 experts" in err


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "moediag", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_bad_input_is_one_line_exit_2(ckpt: Factory, tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(ckpt("mixtral:sharded").path, folder)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.unlink()
    r = _cli("inspect", str(folder))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moediag: error: ") and shard.name in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_in_process(ckpt: Factory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from moediag.cli import main

    granite = ckpt("granitemoe").path
    capsys.readouterr()  # building the fixture may print (transformers, deepspeed): not moediag's output
    assert main(["inspect", str(granite), "--json", "--no-weights"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["kind"] == "checkpoint" and doc["summary"]["family"] == "granitemoe"
    assert doc["summary"]["weights_checked"] is False
    qwen = ckpt("qwen2_moe").path
    capsys.readouterr()
    assert main(["inspect", str(qwen), "--layer", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an MoE layer" in err[0]
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{xxxx")
    (tmp_path / "config.json").write_text("{}")
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "not valid JSON" in err[0]


def test_layer_verdict_says_it_judged_one_layer(capsys: pytest.CaptureFixture[str]) -> None:
    """trained_aux has router-norm outliers in layer 3 only: --layer 1 must not read as a clean bill for
    the model."""
    sample = Path(__file__).resolve().parents[2] / "sample_traces" / "trained_aux"
    code, whole, _ = _run(sample, capsys, console_width=200)
    assert code == 0 and whole.startswith("WEIGHTS ONLY: CHECK") and "outlier" in whole.splitlines()[0]
    code, one, _ = _run(sample, capsys, layer=1, console_width=200)
    assert code == 0 and "weights of layer 1 only" in one.splitlines()[0]


def test_long_weights_pass_is_announced(
    ckpt: Factory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One line before a pass estimated at over a minute: bytes, time, and the options that change it."""
    import moediag.checkpoint.result as result_mod

    path = ckpt("deepseek_v3").path
    _, _, err = _run(path, capsys)
    assert "expert weights" not in err  # a tiny model: seconds, no line
    monkeypatch.setattr(result_mod, "GRAM_MADDS_PER_S", 1.0)  # as slow as a 700 GB model
    code, _, err = _run(path, capsys)
    line = next(x for x in err.splitlines() if "expert weights" in x)
    assert code == 0 and line.startswith("moediag: reading ") and " GB of expert weights in " in line
    assert "about " in line and "--sample 1" in line and "--no-weights" in line
    _, _, err = _run(path, capsys, sample=1.0)
    assert "every expert row (exact)" in err


def test_sample_must_be_a_fraction(ckpt: Factory, tmp_path: Path) -> None:
    from moediag.cli.app import main

    for bad in ("0", "1.5", "-0.1"):
        assert main(["inspect", str(ckpt("mixtral").path), "--sample", bad]) == 2


def test_estimate_for_the_full_deepseek_v3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moediag.checkpoint import analyze_checkpoint
    from moediag.cli.inspect_checkpoint import _estimate_line

    from .scale_layouts import deepseek_v3

    deepseek_v3(tmp_path / "ds3", layers=5, mtp=False)  # 2 MoE layers of 256 real-size FP8 experts
    a = analyze_checkpoint(tmp_path / "ds3", weights=False)
    nbytes, seconds = a.weights_estimate()
    full, full_s = a.weights_estimate(1.0)
    assert full == 2 * 256 * 3 * 2048 * 7168  # every FP8 expert byte of both layers
    assert 0.025 < nbytes / full < 0.04 and seconds < full_s / 10  # the 1/32 screen
    line = _estimate_line(a, nbytes, seconds)
    assert line.startswith(f"reading {nbytes / 1e9:.1f} GB of expert weights in 2 MoE layers (a 3.1% sample")
    # FP8 experts decoded without the compiled decoder: the line says how to get it
    from moediag.checkpoint import dequant

    assert ("compiled FP8/MXFP4 decoder" in line) == (dequant.decoder() == "torch")
    monkeypatch.setattr(dequant, "_compiled", None)
    assert "built without its compiled FP8/MXFP4 decoder" in _estimate_line(a, nbytes, seconds)


def test_cli_default_sample_is_the_librarys() -> None:
    from moediag.checkpoint.similarity import DEFAULT_SAMPLE
    from moediag.cli.inspect import DEFAULT_SAMPLE as CLI_DEFAULT

    assert CLI_DEFAULT == DEFAULT_SAMPLE
