"""``moediag replay CHECKPOINT TRACE`` on the command line: table, --json keys, placement file, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moediag.cli import main
from moediag.replay.placement_file import load_placement
from tests.replay.helpers import identity_checkpoint, input_trace


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, Path]:
    ckpt = identity_checkpoint(tmp_path / "ckpt", 4, top_k=1)
    rows = [0] * 4 + [1] * 4 + [2, 3]
    x = torch.nn.functional.one_hot(torch.tensor(rows), 4).float()
    return ckpt, input_trace(tmp_path / "t.safetensors", x, top_k=1)


def test_json_keys(case: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, trace = case
    code = main(
        [
            "replay",
            str(ckpt),
            str(trace),
            "--json",
            "--device",
            "cpu",
            "--top-k",
            "2",
            "--capacity-factor",
            "1.25",
            "--noise",
            "0.01",
            "--samples",
            "2",
            "--ep-size",
            "2",
            "--placement",
            "balanced",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["meta"]["kind"] == "replay" and doc["meta"]["format"] == 1 and doc["meta"]["device"] == "cpu"
    s = doc["summary"]
    for key in (
        "top1_agreement",
        "topk_agreement",
        "match",
        "drop_rate_mean",
        "noise_flip_share_mean",
        "balancedness_before_mean",
        "balancedness_after_mean",
        "stats",
    ):
        assert key in s
    row = doc["layers"][0]
    for key in (
        "top1_agreement",
        "topk_agreement",
        "topk_overlap",
        "whatif_topk_overlap",
        "capacity",
        "noise",
        "ep",
        "stats",
        "load_before",
    ):
        assert key in row
    assert row["ep"]["balancedness_before"] <= row["ep"]["balancedness_after"]


def test_table_and_placement_out(
    case: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, trace = case
    out = tmp_path / "placement.json"
    code = main(
        [
            "replay",
            str(ckpt),
            str(trace),
            "--ep-size",
            "2",
            "--placement",
            "balanced",
            "--placement-out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "MATCH" in text and "EP bal" in text and "0.62→1.00" in text
    placed = load_placement(out)
    assert placed.ep_size == 2 and placed.for_layer(0, 4) == [[0, 2], [1, 3]]
    # the written file is a valid --placement input, and gives the same balancedness
    assert main(["replay", str(ckpt), str(trace), "--json", "--ep-size", "2", "--placement", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["layers"][0]["ep"]["balancedness_after"] == 1.0


def test_target_balancedness_plans_the_fewest_replicas(
    case: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--target-balancedness picks R; the same replay with --replicas R gives the same placement, and
    --replicas R - step (the next smaller count) does not reach the target."""
    ckpt, trace = case
    out = tmp_path / "planned.json"
    args = ["replay", str(ckpt), str(trace), "--json", "--ep-size", "4", "--placement", "balanced"]
    assert main([*args, "--target-balancedness", "0.99", "--placement-out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    plan = doc["summary"]["replica_plan"]
    assert plan["reached"] and plan["target_balancedness"] == 0.99
    r = plan["replicas"]
    assert doc["meta"]["settings"]["replicas"] == r and doc["layers"][0]["ep"]["replicas"] == r
    assert json.loads(out.read_text())["replicas"] == r
    assert min(x["ep"]["balancedness_after"] for x in doc["layers"]) >= 0.99
    if r >= 4:
        assert main([*args, "--replicas", str(r - 4)]) == 0
        lower = json.loads(capsys.readouterr().out)
        assert min(x["ep"]["balancedness_after"] for x in lower["layers"]) < 0.99
    assert main([*args[:-1], "balanced", "--target-balancedness", "0.9"]) == 0
    capsys.readouterr()
    for extra in (["--target-balancedness", "1.5"], ["--target-balancedness", "0.9", "--replicas", "4"]):
        assert main([*args, *extra]) == 2, extra
        assert capsys.readouterr().err.startswith("moediag: error:")
    assert main([*args[:-2], "--target-balancedness", "0.9"]) == 2  # contiguous has no replicas


def test_hidden_size_mismatch_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = identity_checkpoint(tmp_path / "ckpt", 4, 16)
    trace = input_trace(tmp_path / "t.safetensors", torch.randn(5, 4), top_k=1)
    assert main(["replay", str(ckpt), str(trace)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "t.safetensors" in err and "width 4" in err and "hidden size 16" in err


def test_usage_errors_exit_2(case: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, trace = case
    for extra in (
        ["--no-bias", "--bias", "x.json"],
        ["--drop-policy", "random"],
        ["--device", "tpu"],
        ["--replicas", "2"],
        ["--ep-size", "3"],
        ["--dtype", "int8"],
    ):
        assert main(["replay", str(ckpt), str(trace), *extra]) == 2, extra
        assert capsys.readouterr().err.startswith("moediag: error:")


def test_require_match(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = identity_checkpoint(tmp_path / "ckpt", 4)
    x = torch.eye(4)
    trace = input_trace(tmp_path / "t.safetensors", x, top_k=1, topk_ids=torch.tensor([[1], [1], [2], [3]]))
    assert main(["replay", str(ckpt), str(trace)]) == 0
    assert "MISMATCH" in capsys.readouterr().out
    assert main(["replay", str(ckpt), str(trace), "--require-match"]) == 1


def test_swapped_arguments_get_a_hint(case: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, trace = case
    assert main(["replay", str(trace), str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the arguments are swapped" in err
    assert f"moediag replay {ckpt} {trace}" in err


def test_what_if_maxvio_is_labelled_beside_the_models_own(
    case: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, trace = case
    assert main(["replay", str(ckpt), str(trace), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "MaxVio own→what-if" in out and "→" in out.split("MaxVio own→what-if")[1]


def test_no_bias_without_a_bias_says_it_changes_nothing(
    case: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, trace = case
    assert main(["replay", str(ckpt), str(trace), "--no-bias"]) == 0
    captured = capsys.readouterr()
    assert "moediag: note: the checkpoint has no selection bias" in captured.err and "kept" in captured.out
    assert main(["replay", str(ckpt), str(trace), "--no-bias", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"]


def test_a_trace_without_router_inputs_is_one_short_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moediag.trace import build_metadata, write_trace

    ckpt = identity_checkpoint(tmp_path / "ckpt", 4)
    ids = {f"layers.{x}.topk_ids": torch.tensor([[0], [1], [2]], dtype=torch.int32) for x in range(6)}
    trace = write_trace(tmp_path / "ids.safetensors", ids, build_metadata(num_experts=4, top_k=1))
    assert main(["replay", str(ckpt), str(trace)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "nothing to replay (layers 0-5: no router_input in the trace); record with --router-inputs" in err


def test_table_says_the_drop_rate_does_not_depend_on_the_policy(
    case: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt, trace = case
    args = ["replay", str(ckpt), str(trace), "--capacity-factor", "1.0", "--min-capacity", "2"]
    assert main([*args, "--drop-policy", "first-choices-first"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "the same under every drop policy" in text and "at least 2 per expert" in text
    assert "(first-choices-first)" in text
    assert main([*args, "--drop-policy", "probs", "--json"]) == 0  # the former name still works
    cap = json.loads(capsys.readouterr().out)["layers"][0]["capacity"]
    assert cap["drop_policy"] == "highest-weight" and cap["min_capacity"] == 2
