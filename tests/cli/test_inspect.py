"""`moediag inspect TRACE` through typer's runner: JSON contract, options, bad input (exit 2, one line)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from moediag.cli import app
from tests.conftest import random_tensors, raw_safetensors, sha256, trace_metadata, write_raw

REPO = Path(__file__).resolve().parents[2]

LAYER_KEYS = set(
    [
        "layer",
        "tokens",
        "load",
        "load_share",
        "max_vio",
        "max_mean",
        "min_mean",
        "cv",
        "gini",
        "entropy_norm",
        "effective_experts",
        "dead_experts",
        "cold_experts",
        "aux_loss",
        "seq_aux_loss",
        "z_loss",
        "router_entropy",
        "confidence",
        "margin_mean",
        "drop_rate",
        "consecutive_same_rate",
        "excluded_nonfinite",
    ]
)
IMBALANCE = ("max_vio", "max_mean", "min_mean", "cv", "gini", "entropy_norm")


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def good(make_trace) -> Path:
    tensors = random_tensors(
        0,
        tokens=120,
        num_experts=8,
        top_k=2,
        layers=(0, 2, 5),
        sequences=4,
        positions=True,
        mask=True,
        step=True,
        skew=2.0,
    )
    tensors["layers.5.router_logits"] = tensors["layers.5.router_logits"] + torch.linspace(0, 8, 8)
    return make_trace(tensors=tensors, metadata=trace_metadata(8, 2, "softmax"))


def test_min_capacity_floors_every_drop_rate(good: Path) -> None:
    """--min-capacity N: C = max(ceil(CF k T/E), N); a floor above any expert's load drops nothing."""
    plain = json.loads(invoke("inspect", good, "--json").stdout)
    floored = invoke("inspect", good, "--json", "--min-capacity", "100000")
    assert floored.exit_code == 0, floored.output
    doc = json.loads(floored.stdout)
    assert doc["meta"]["options"]["min_capacity"] == 100000 and plain["meta"]["options"]["min_capacity"] == 0
    assert any(v > 0 for row in plain["layers"] for v in row["drop_rate_total"].values())
    assert all(v == 0 for row in doc["layers"] for v in row["drop_rate_total"].values())
    bad = invoke("inspect", good, "--min-capacity", "-1")
    assert bad.exit_code == 2 and "--min-capacity" in bad.output


def test_json_contract(good: Path) -> None:
    r = invoke("inspect", good, "--json", "--chunk-tokens", "17")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["meta"]["format"] == 1 and doc["meta"]["kind"] == "trace"
    assert doc["meta"]["moediag_version"]
    assert [x["layer"] for x in doc["layers"]] == [0, 2, 5]
    for row in doc["layers"]:
        assert set(row) >= LAYER_KEYS, LAYER_KEYS - set(row)
        assert set(row["drop_rate"]) == {
            "token-order",
            "highest-weight",
            "first-choices-first",
            "position",
            "probs",
        }
        assert set(row["drop_rate_total"]) == {"1.0", "1.25", "1.5", "2.0"}
        assert set(row["drop_rate"]["position"]) == {"1.0", "1.25", "1.5", "2.0"}
        assert len(row["load"]) == 8 and sum(row["load"]) == 2 * row["tokens"]
        assert "coactivation" not in row and "drop_rate_by_position" not in row
    s = doc["summary"]
    assert s["tokens"] == doc["layers"][0]["tokens"] and s["layers"] == 3
    assert s["num_experts"] == 8 and s["top_k"] == 2 and isinstance(s["hf_aux_loss"], float)
    for key in IMBALANCE:
        assert set(s[key]) >= {"mean", "worst", "worst_layer"}, key
    assert s["max_vio"]["worst_layer"] == 5
    assert r.stderr == ""  # --json: stdout is pure JSON, nothing else printed


def test_json_detail(good: Path) -> None:
    doc = json.loads(invoke("inspect", good, "--json", "--detail").stdout)
    row = doc["layers"][0]
    assert len(row["coactivation"]) == 8 and row["coactivation"][0][0] == row["load"][0]
    assert row["step_load"]["steps"] == [0, 1, 2]
    assert set(row["drop_rate_by_position"]) == {"buckets", "assignments", "rate"}
    assert row["margin_histogram"]["counts"]


def test_table_output_and_layer_histogram(good: Path) -> None:
    r = invoke("inspect", good, "--layer", "5")
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert "Overview" in out and "Layers" in out and "Layer 5: load per expert" in out
    assert "█" in out


def test_worst_layers_first(good: Path) -> None:
    r = invoke("inspect", good, "--worst", "1")
    assert r.exit_code == 0, r.output
    assert "Worst 1 layers by max_vio" in r.stdout
    table = r.stdout.split("Worst 1 layers")[1]
    lines = table.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("─"))
    body = [line for line in lines[rule + 1 :] if line.strip()][:1]
    assert body and body[0].split()[0] == "5"
    assert lines[rule + 2].strip() == ""  # exactly one row


@pytest.mark.parametrize(
    "args", [("--layer", "3"), ("--sort", "colour"), ("--score-function", "relu"), ("--chunk-tokens", "0")]
)
def test_usage_errors_exit_2(good: Path, args: tuple[str, str]) -> None:
    r = invoke("inspect", good, *args)
    assert r.exit_code == 2
    assert r.stderr.startswith("moediag: error:")


def test_count_only_layers_are_null_in_json(make_trace) -> None:
    tensors = random_tensors(0, tokens=30, num_experts=4, top_k=2, layers=(0,))
    tensors["layers.1.expert_counts"] = torch.tensor([[3, 0, 2, 5]])
    tensors["layers.2.expert_counts"] = torch.zeros(2, 4, dtype=torch.int64)  # a dense layer: all zeros
    doc = json.loads(
        invoke("inspect", make_trace(tensors=tensors, metadata=trace_metadata(4, 2)), "--json").stdout
    )
    counts = doc["layers"][1]
    for key in (
        "aux_loss",
        "seq_aux_loss",
        "z_loss",
        "router_entropy",
        "confidence",
        "margin_mean",
        "drop_rate",
        "consecutive_same_rate",
        "tokens",
    ):
        assert counts[key] is None, key
    assert counts["load"] == [3, 0, 2, 5] and counts["dead_experts"] == [1]
    dense = doc["layers"][2]
    assert dense["dead_experts"] == [] and dense["max_vio"] is None  # all-zero rows are not dead experts


def test_fully_masked_trace_is_not_an_internal_error(make_trace) -> None:
    """Regression: an all-zero load listed every expert as dead and the verdict then formatted None."""
    tensors = random_tensors(0, tokens=10, num_experts=4, top_k=2, layers=(0,))
    tensors["tokens.mask"] = torch.zeros(10, dtype=torch.uint8)
    path = make_trace(tensors=tensors, metadata=trace_metadata(4, 2))
    r = invoke("inspect", path)
    assert r.exit_code == 0, r.output
    doc = json.loads(invoke("inspect", path, "--json").stdout)
    assert doc["layers"][0]["tokens"] == 0 and doc["layers"][0]["dead_experts"] == []


def test_nonfinite_rows_counted_in_output(make_trace) -> None:
    tensors = random_tensors(0, tokens=40, num_experts=4, top_k=2, layers=(0, 1))
    tensors["layers.1.router_logits"][[2, 9, 30]] = float("nan")
    tensors["layers.1.router_logits"][11, 0] = float("inf")
    path = make_trace(tensors=tensors, metadata=trace_metadata(4, 2))
    r = invoke("inspect", path, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # strict JSON: no NaN leaked into figures
    assert doc["layers"][1]["excluded_nonfinite"] == 4 and doc["layers"][1]["tokens"] == 36
    assert doc["layers"][0]["excluded_nonfinite"] == 0
    assert doc["summary"]["excluded_nonfinite"] == 4
    assert "rows excluded" in invoke("inspect", path).stdout


@pytest.mark.parametrize(
    ("drop", "flag", "value"),
    [
        ("top_k", "--top-k", "2"),
        ("score_function", "--score-function", "softmax"),
        ("num_experts", "--num-experts", "4"),
    ],
)
def test_missing_metadata_names_flag_and_flag_supplies_it(
    make_trace, drop: str, flag: str, value: str
) -> None:
    meta = trace_metadata(4, 2, "softmax")
    del meta[drop]
    ids_only = drop == "num_experts"
    tensors = random_tensors(
        0, tokens=20, num_experts=4, top_k=2, layers=(0,), logits=not ids_only, ids=ids_only
    )
    path = make_trace(tensors=tensors, metadata=meta)
    before = sha256(path)
    r = invoke("inspect", path)
    assert r.exit_code == 2
    assert flag in r.stderr and str(path) in r.stderr
    ok = invoke("inspect", path, flag, value, "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["layers"][0]["tokens"] == 20
    assert sha256(path) == before


# -- bad input: exit 2, one line naming the file, no traceback, file untouched ----------------------
def _valid(seed: int = 0, **kw) -> dict[str, torch.Tensor]:
    return random_tensors(seed, tokens=16, num_experts=4, top_k=2, layers=(0, 1), **kw)


def _file(tmp: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> Path:
    return write_raw(tmp / "bad.safetensors", tensors, trace_metadata(4, 2) if meta is None else meta)


def _bytes(tmp: Path, blob: bytes) -> Path:
    p = tmp / "bad.safetensors"
    p.write_bytes(blob)
    return p


def _truncated(tmp: Path) -> Path:
    blob = _file(tmp, _valid()).read_bytes()
    return _bytes(tmp, blob[:-10])


def _overlapping(tmp: Path) -> Path:
    meta = trace_metadata(4, 2)
    h = {
        "__metadata__": meta,
        "layers.0.router_logits": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
        "layers.1.router_logits": {"dtype": "F32", "shape": [2, 4], "data_offsets": [16, 48]},
    }
    return _bytes(tmp, raw_safetensors(h, b"\0" * 48))


def _mutated(**changes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        tensors = _valid()
        meta = trace_metadata(4, 2)
        for k, v in changes.items():
            if k.startswith("meta_"):
                if v is None:
                    meta.pop(k[5:])
                else:
                    meta[k[5:]] = v
            elif v is None:
                tensors.pop(k.replace("__", "."))
            else:
                tensors[k.replace("__", ".")] = v
        return _file(tmp, tensors, meta)

    return make


def _no_layers(tmp: Path) -> Path:
    return _file(tmp, {"tokens.mask": torch.ones(4, dtype=torch.bool)})


def _zero_tokens(tmp: Path) -> Path:
    return _file(tmp, {"layers.0.router_logits": torch.zeros(0, 4)})


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "not_safetensors": (
        lambda tmp: _bytes(tmp, b"hello, this is a text file\n" * 3),
        "not a safetensors file",
    ),
    "short_file": (lambda tmp: _bytes(tmp, b"\x01\x02"), "too short"),
    "truncated": (_truncated, "truncated"),
    "oversized_header_length": (lambda tmp: _bytes(tmp, struct.pack("<Q", 2**60) + b"{}"), "exceeds"),
    "header_longer_than_file": (lambda tmp: _bytes(tmp, struct.pack("<Q", 4096) + b'{"a":1}'), "truncated"),
    "malformed_json": (lambda tmp: _bytes(tmp, struct.pack("<Q", 11) + b'{"a": [1, 2'), "not valid JSON"),
    "overlapping_offsets": (_overlapping, "overlaps"),
    "wrong_rank": (_mutated(layers__0__router_logits=torch.zeros(16, 4, 1)), "dimensions"),
    "wrong_dtype": (_mutated(layers__0__router_logits=torch.zeros(16, 4, dtype=torch.int64)), "dtype"),
    "experts_disagree": (_mutated(layers__0__selection_bias=torch.zeros(5)), "disagree"),
    "token_counts_differ": (_mutated(layers__1__router_logits=torch.zeros(15, 4)), "token counts differ"),
    "ids_out_of_range": (
        _mutated(layers__0__topk_ids=torch.tensor([[0, 1]] * 15 + [[0, 4]])),
        "outside 0..3",
    ),
    "duplicate_expert": (_mutated(layers__0__topk_ids=torch.tensor([[0, 1]] * 15 + [[2, 2]])), "twice"),
    "missing_top_k": (_mutated(meta_top_k=None), "--top-k"),
    "missing_score_function": (_mutated(meta_score_function=None), "--score-function"),
    "no_layers": (_no_layers, "no layers"),
    "zero_tokens": (_zero_tokens, "0 tokens"),
    "unknown_tensor": (_mutated(layers__0__router_weights=torch.zeros(4, 4)), "unknown tensor"),
    "wrong_version": (_mutated(meta_version="7"), "version"),
    "negative_counts": (_mutated(layers__3__expert_counts=torch.tensor([[1, -2, 0, 0]])), "negative"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exit_2_one_line(tmp_path: Path, case: str) -> None:
    make, words = BAD[case]
    path = make(tmp_path)
    before = sha256(path)
    listing = sorted(p.name for p in tmp_path.iterdir())
    r = invoke("inspect", path, "--json")
    assert r.exit_code == 2, (r.exit_code, r.output)
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("moediag: error: ") and str(path) in lines[0]
    assert words in lines[0]
    assert "Traceback" not in r.output
    assert r.stdout == ""
    assert sha256(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing


def test_missing_path(tmp_path: Path) -> None:
    r = invoke("inspect", tmp_path / "nope.safetensors")
    assert r.exit_code == 2 and r.stderr.startswith("moediag: error: ") and "nope.safetensors" in r.stderr


def test_debug_shows_traceback(tmp_path: Path) -> None:
    path = BAD["malformed_json"][0](tmp_path)
    r = CliRunner().invoke(app, ["--debug", "inspect", str(path)])
    assert r.exit_code == 2
    assert "Traceback" in r.stderr and "InvalidInputError" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("moediag: error:")


def test_python_m_moediag_end_to_end(tmp_path: Path) -> None:
    """A real process: exit status, exactly one stderr line, no traceback."""
    bad = BAD["truncated"][0](tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run(
        [sys.executable, "-m", "moediag", "inspect", str(bad), "--json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("moediag: error: ") and str(bad) in p.stderr


@pytest.mark.parametrize(("domains", "value"), [(["prose", "code"], 2), (None, 1 << 40), (None, -1)])
def test_domain_ids_out_of_range_exit_2(tmp_path: Path, domains: list[str] | None, value: int) -> None:
    """A wild tokens.domain value is one clear line, not a table sized by it."""
    meta = trace_metadata(4, 1)
    if domains is not None:
        meta["domains"] = json.dumps(domains)
    path = write_raw(
        tmp_path / "t.safetensors",
        {"layers.0.router_logits": torch.randn(5, 4), "tokens.domain": torch.tensor([0, 1, 0, value, 1])},
        meta,
    )
    r = invoke("inspect", str(path))
    assert r.exit_code == 2, r.output
    assert "tokens.domain value" in r.stderr and str(path) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="SIGPIPE is POSIX")
@pytest.mark.parametrize(
    "command", ["report --help", "inspect sample_traces/trained_aux.safetensors", "inspect --help"]
)
def test_closed_pipe_ends_quietly(command: str) -> None:
    """`moediag ... | head -1`: no traceback, no 'internal error', never exit 1 (= checks failed) or 3."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        f"{sys.executable} -m moediag {command} | head -1 >/dev/null; exit ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert proc.returncode in (0, 141), proc.stderr
    assert "error" not in proc.stderr


def test_options_for_the_other_kind_of_input_are_named_not_silently_ignored(good: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    result = invoke("inspect", good, "--no-weights")
    assert result.exit_code == 0 and "--no-weights applies to checkpoints only; ignored" in result.stderr
    result = invoke("inspect", repo / "sample_traces" / "trained_noaux", "--worst", "2", "--top-k", "2")
    assert result.exit_code == 0 and "--worst, --top-k apply to traces only; ignored" in result.stderr
    assert "note" not in invoke("inspect", good, "--worst", "1").stderr


def test_path_window_adds_a_window_and_bad_specs_exit_2(good: Path) -> None:
    result = invoke("inspect", good, "--json", "--path-window", "2:5", "--path-window", "0:2")
    assert result.exit_code == 0
    windows = [w["layers"] for w in json.loads(result.stdout)["summary"]["paths"]]
    assert windows == [[0, 2, 5], [0, 2], [2, 5]]  # the full depth, then the windows in layer order
    clipped = invoke("inspect", good, "--json", "--path-window", "1:9")  # layers 0, 2, 5: covers 2..5
    assert clipped.exit_code == 0 and "--path-window 1:9 covers the MoE layers 2..5" in clipped.stderr
    for spec, why in (("3-4", "expected FIRST:LAST"), ("5:2", "must not exceed"), ("6:9", "no MoE layer")):
        bad = invoke("inspect", good, "--path-window", spec)
        assert bad.exit_code == 2 and why in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
