"""The compare verdict (moediag.compare.verdict): figures and thresholds from the check rules, a change
counts only beyond the check's baseline margin, and `compare --fail-on-regression` gates on it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from moediag.checks import CheckConfig
from moediag.cli import app
from moediag.compare.verdict import compare_verdict
from tests.compare.test_compare import _checkpoint, ids_trace

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"
runner = CliRunner()


def doc(*layers: tuple[float, int, float, float]) -> dict[str, Any]:
    """An inspect-like document: per layer (max_vio, dead experts, cv, entropy_norm)."""
    rows = [
        {
            "layer": i,
            "max_vio": v,
            "cv": cv,
            "entropy_norm": h,
            "dead_experts": list(range(dead)),
            "cold_experts": list(range(dead)),
            "load": [100] * 8,
            "tokens": 400,
            "top_k": 2,
        }
        for i, (v, dead, cv, h) in enumerate(layers)
    ]
    return {"meta": {"kind": "trace"}, "summary": {}, "layers": rows}


def by_rule(verdict: Any) -> dict[str, Any]:
    return {f.rule: f for f in verdict.figures}


def test_same_figures_are_unchanged() -> None:
    a = doc((0.3, 0, 0.2, 0.95), (0.5, 0, 0.3, 0.9))
    v = compare_verdict(a, a)
    assert v.status == "unchanged" and set(by_rule(v)) == {"max_vio", "max_cv", "max_dead", "min_entropy"}
    assert v.line().startswith("B is unchanged from A: no check figure moved by more than 0.05")


def test_worst_layer_and_summed_counts_decide() -> None:
    a = doc((0.3, 0, 0.2, 0.95), (0.5, 0, 0.3, 0.9))
    b = doc((0.3, 2, 0.2, 0.95), (4.6, 3, 0.3, 0.9))
    v = compare_verdict(a, b)
    figs = by_rule(v)
    assert v.status == "worse"
    assert (figs["max_vio"].a, figs["max_vio"].b, figs["max_vio"].change) == (0.5, 4.6, "worse")
    assert (figs["max_dead"].a, figs["max_dead"].b) == (0, 5)  # summed over layers, as check --scope model
    assert figs["max_cv"].change == "same"
    assert v.line() == (
        "B is worse than A: MaxVio 0.500 -> 4.600 (over the check limit 1), "
        "dead experts 0 -> 5 (+5) (over the check limit 0)"
    )
    back = compare_verdict(b, a)
    assert back.status == "better" and back.line().startswith("B is better than A: MaxVio 4.600 -> 0.500")


@pytest.mark.parametrize(
    ("b_vio", "status"), [(0.55, "unchanged"), (0.551, "worse"), (0.45, "unchanged"), (0.449, "better")]
)
def test_the_margin_is_the_check_baseline_margin_on_both_sides(b_vio: float, status: str) -> None:
    a, b = doc((0.5, 0, 0.2, 0.95)), doc((b_vio, 0, 0.2, 0.95))
    assert compare_verdict(a, b).status == status


def test_entropy_worsens_downwards_and_a_mixed_change_is_worse() -> None:
    a, b = doc((0.9, 0, 0.2, 0.95)), doc((0.3, 0, 0.2, 0.80))
    v = compare_verdict(a, b)
    assert by_rule(v)["min_entropy"].change == "worse" and by_rule(v)["max_vio"].change == "better"
    assert v.status == "worse" and "; better: MaxVio 0.900 -> 0.300" in v.line()


def test_config_turns_rules_off_and_sets_the_margin() -> None:
    a, b = doc((0.3, 0, 0.2, 0.95)), doc((0.6, 0, 0.2, 0.95))
    off = CheckConfig.from_values({"max_vio": "off"})
    assert "max_vio" not in by_rule(compare_verdict(a, b, off))
    assert compare_verdict(a, b, CheckConfig.from_values({"baseline_margin": 0.5})).status == "unchanged"
    counts = CheckConfig.from_values({"baseline_margin": 1.5})  # whole experts: one more dead is within
    assert compare_verdict(doc((0.3, 0, 0.2, 0.95)), doc((0.3, 1, 0.2, 0.95)), counts).status == "unchanged"


def test_cli_verdict_comes_first_and_fail_on_regression_gates() -> None:
    healthy, collapsed = str(SAMPLES / "healthy.safetensors"), str(SAMPLES / "collapsed.safetensors")
    worse = runner.invoke(
        app, ["compare", healthy, collapsed, "--fail-on-regression"], env={"COLUMNS": "120"}
    )
    assert worse.exit_code == 1, worse.output
    first = worse.stdout.splitlines()[0]
    assert first.startswith("B is worse than A: MaxVio 0.752 -> 4.596")
    assert "dead experts 0 -> 32 (+32)" in " ".join(worse.stdout.split())
    assert "Δacc" not in worse.stdout and "dead A→B" in worse.stdout
    better = runner.invoke(app, ["compare", collapsed, healthy, "--fail-on-regression", "--json"])
    assert better.exit_code == 0
    verdict = json.loads(better.stdout)["summary"]["verdict"]
    assert verdict["status"] == "better" and {f["rule"] for f in verdict["figures"]} >= {
        "max_vio",
        "max_dead",
    }
    plain = runner.invoke(app, ["compare", healthy, collapsed])
    assert plain.exit_code == 0  # without the flag a comparison never fails


def test_fail_on_regression_needs_traces(tmp_path: Path) -> None:
    a = _checkpoint(tmp_path / "a", 0)
    result = runner.invoke(app, ["compare", str(a), str(a), "--fail-on-regression"])
    assert result.exit_code == 2 and "compares traces" in result.stderr


def test_unchanged_traces_pass_the_gate(tmp_path: Path) -> None:
    t = ids_trace(tmp_path / "t.safetensors", {0: [[0, 1], [2, 3], [1, 2], [0, 3]] * 30})
    result = runner.invoke(app, ["compare", str(t), str(t), "--fail-on-regression"])
    assert result.exit_code == 0 and result.stdout.startswith("B is unchanged from A")
