"""``moediag import`` through the CLI: success prints a summary; bad input is one line, exit 2, no output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from moediag.cli.app import app
from moediag.trace import open_trace
from tests.importers.fixtures import NotATensor, sglang_p2l, write_sglang_detail, write_trtllm


def _invoke(*args: str):
    return CliRunner().invoke(app, ["import", *args])


def _assert_bad(result, out: Path, text: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moediag: error: ") and text in lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_success_summary(tmp_path: Path) -> None:
    np.save(tmp_path / "r.npy", np.array([[[0, 1]], [[2, 3]]], dtype=np.int16))
    out = tmp_path / "t"
    r = _invoke("vllm", str(tmp_path / "r.npy"), "-o", str(out), "--num-experts", "4", "--layers", "7")
    assert r.exit_code == 0, r.output
    assert "imported vllm (per-token): 1 MoE layer, 4 experts, 2 tokens from 1 file" in r.stderr
    assert r.stdout == ""
    assert sorted(open_trace(out).layers) == [7]


def test_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"")
    _assert_bad(
        _invoke("deepspeed", str(tmp_path / "x.pt"), "-o", str(tmp_path / "t")),
        tmp_path / "t",
        "unknown import format 'deepspeed'",
    )


def test_pickle_refused_by_weights_only(tmp_path: Path) -> None:
    torch.save({"router_logits": (NotATensor(),)}, tmp_path / "evil.pt")
    out = tmp_path / "t.safetensors"
    _assert_bad(_invoke("hf", str(tmp_path / "evil.pt"), "-o", str(out), "--top-k", "1"), out, "weights_only")


def test_inconsistent_ranks(tmp_path: Path) -> None:
    d = tmp_path / "stat"
    meta = {"num_experts": 4, "num_experts_per_token": 1}
    write_trtllm(
        d, 0, {(0, 1): torch.ones(4, dtype=torch.int64), (1, 1): torch.ones(4, dtype=torch.int64)}, meta
    )
    write_trtllm(d, 1, {(0, 1): torch.ones(4, dtype=torch.int64)}, None)
    out = tmp_path / "t"
    _assert_bad(_invoke("trtllm", str(d), "-o", str(out)), out, "inconsistent")


def test_inconsistent_sglang_ranks(tmp_path: Path) -> None:
    d = tmp_path / "d"
    rec = {"forward_pass_id": 0, "rank": 0, "global_physical_count": torch.ones(2, 5, dtype=torch.int32)}
    write_sglang_detail(d, 0, [rec], sglang_p2l(2, 4, 5, seed=0), 1.0)
    write_sglang_detail(d, 1, [dict(rec, rank=1)], sglang_p2l(2, 4, 5, seed=9), 1.0)
    out = tmp_path / "t"
    _assert_bad(_invoke("sglang", str(d), "-o", str(out)), out, "not from the same run")


def test_missing_flag_is_named(tmp_path: Path) -> None:
    np.save(tmp_path / "r.npy", np.zeros((2, 1, 2), dtype=np.int16) + np.array([0, 1], dtype=np.int16))
    out = tmp_path / "t"
    _assert_bad(_invoke("vllm", str(tmp_path / "r.npy"), "-o", str(out)), out, "pass --num-experts")


def test_no_such_source(tmp_path: Path) -> None:
    out = tmp_path / "t"
    _assert_bad(_invoke("sglang", str(tmp_path / "nope" / "*.pt"), "-o", str(out)), out, "no files match")


def test_failed_import_keeps_an_existing_trace(tmp_path: Path) -> None:
    np.save(tmp_path / "r.npy", np.array([[[0, 1]]], dtype=np.int16))
    out = tmp_path / "t"
    assert _invoke("vllm", str(tmp_path / "r.npy"), "-o", str(out), "--num-experts", "2").exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    r = _invoke("vllm", str(tmp_path / "r.npy"), "-o", str(out), "--num-experts", "1")
    assert r.exit_code == 2
    assert sorted(p.name for p in out.iterdir()) == before


@pytest.mark.skipif(sys.platform == "win32", reason="posix paths")
def test_end_to_end_subprocess(tmp_path: Path) -> None:
    torch.save((NotATensor(),), tmp_path / "evil.pt")
    out = tmp_path / "t"
    p = subprocess.run(
        [sys.executable, "-m", "moediag", "import", "hf", str(tmp_path / "evil.pt"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "weights_only" in p.stderr
    assert "Traceback" not in p.stderr and not out.exists()


@pytest.mark.parametrize("fmt", ["hf", "vllm"])
def test_text_file_named_pt_is_a_clean_error(tmp_path: Path, fmt: str) -> None:
    """torch.load raises KeyError on some non-pickle bytes: still one line and exit 2."""
    src = tmp_path / "bogus.pt"
    src.write_text("hi\n")
    out = tmp_path / "out.safetensors"
    _assert_bad(
        _invoke(fmt, str(src), "-o", str(out), "--num-experts", "4", "--top-k", "1"), out, "torch.save"
    )
