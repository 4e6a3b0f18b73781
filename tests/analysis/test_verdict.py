"""One verdict for traces and one for checkpoints, judged by the check rule table, alike in every output."""

from __future__ import annotations

from pathlib import Path

import pytest

from moediag.analysis import TraceAnalysis, analyze_trace
from moediag.analysis.verdict import checkpoint_verdict, trace_verdict
from moediag.checks import CheckConfig, run_checks

SAMPLES = Path(__file__).parents[2] / "sample_traces"


@pytest.fixture(scope="module")
def analyses() -> dict[str, TraceAnalysis]:
    return {n: analyze_trace(SAMPLES / f"{n}.safetensors") for n in ("healthy", "imbalanced", "collapsed")}


def test_levels_of_the_sample_traces(analyses: dict[str, TraceAnalysis]) -> None:
    got = {n: a.verdict() for n, a in analyses.items()}
    assert {n: v.level for n, v in got.items()} == {
        "healthy": "healthy",
        "imbalanced": "imbalanced",
        "collapsed": "unhealthy",
    }
    assert got["healthy"].text.startswith("HEALTHY") and got["healthy"].severity == "ok"
    assert got["imbalanced"].severity == "warn" and "max_vio" in got["imbalanced"].reasons[0]
    assert got["collapsed"].severity == "bad" and got["collapsed"].text.startswith("UNHEALTHY: 32 dead")


def test_the_verdict_agrees_with_check_under_any_config(analyses: dict[str, TraceAnalysis]) -> None:
    """healthy exactly when `moediag check` with the same thresholds passes (default rules and a config)."""
    configs = [None, CheckConfig.from_values({"max_vio": 3.0, "max_cv": 1.0}), CheckConfig.from_values({})]
    for config in configs:
        for a in analyses.values():
            doc = a.to_dict()
            passed = run_checks(doc, config).status == "pass"
            assert (trace_verdict(doc, config).level == "healthy") == passed
    loose = CheckConfig.from_values({"max_vio": 3.0, "max_cv": 1.0, "min_entropy": 0.1})
    assert trace_verdict(analyses["imbalanced"], loose).level == "healthy"


def test_json_and_terminal_say_the_same(analyses: dict[str, TraceAnalysis]) -> None:
    from moediag.render.terminal.trace_table import verdict

    a = analyses["imbalanced"]
    doc = a.to_dict()
    assert doc["summary"]["verdict"] == a.verdict().to_dict()
    assert verdict(a) == (doc["summary"]["verdict"]["text"], "bold yellow")
    assert set(doc["summary"]["verdict"]) == {"level", "severity", "text", "reasons"}


def test_a_checkpoint_is_never_healthy_for_routing() -> None:
    from moediag.checkpoint import analyze_checkpoint
    from moediag.render.terminal.checkpoint_table import verdict

    for name, severity in (("trained_noaux", "info"), ("trained_aux", "warn")):
        a = analyze_checkpoint(SAMPLES / name)
        v = checkpoint_verdict(a)
        assert v.level == "weights_only" and v.severity == severity and "HEALTHY" not in v.text
        assert "needs a trace" in v.text
        assert verdict(a) == (v.text, v.style)
        assert checkpoint_verdict(a.to_dict()) == v
    structure = checkpoint_verdict(analyze_checkpoint(SAMPLES / "trained_noaux", weights=False))
    assert structure.level == "structure_only"
    warned = checkpoint_verdict(
        {"summary": {"is_moe": True, "health": {"status": "warn", "findings": ["2 duplicate pairs"]}}}
    )
    assert warned.severity == "warn" and warned.reasons == ["2 duplicate pairs"]
    assert checkpoint_verdict({"summary": {"is_moe": False, "total_params": 1234}}).level == "dense"
