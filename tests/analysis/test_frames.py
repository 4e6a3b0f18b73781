"""pandas frames hold the --json figures: one row per layer, per (layer, expert), per path, per rule."""

from __future__ import annotations

from pathlib import Path

import pytest

import moediag

SAMPLES = Path(__file__).parents[2] / "sample_traces"


@pytest.fixture(scope="module")
def analysis():  # type: ignore[no-untyped-def]
    return moediag.inspect(SAMPLES / "trained_aux.safetensors")


def test_layers_frame(analysis) -> None:  # type: ignore[no-untyped-def]
    f = analysis.layers_frame()
    assert list(f.index) == [r["layer"] for r in analysis.layers]
    for r in analysis.layers:
        got = f.loc[r["layer"], "max_vio"]
        assert (got != got and r["max_vio"] is None) or got == pytest.approx(r["max_vio"])
        assert f.loc[r["layer"], "dead_count"] == len(r["dead_experts"])
    assert "load" not in f.columns  # per-expert lists are experts_frame rows


def test_experts_frame(analysis) -> None:  # type: ignore[no-untyped-def]
    f = analysis.experts_frame()
    rows = analysis.layers
    assert len(f) == sum(r["num_experts"] for r in rows)
    for r in rows:
        layer = f.loc[r["layer"]]
        assert layer["load"].tolist() == r["load"]
        assert sorted(layer.index[layer["dead"]].tolist()) == sorted(r["dead_experts"])
        acc = {x["expert"]: x["accuracy"] for x in r["expert_accuracy"]}
        for e, a in acc.items():
            got = layer.loc[e, "accuracy"]
            assert (a is None and got != got) or got == pytest.approx(a)
    assert int(f["dead"].sum()) == analysis.summary["dead_experts"]


def test_paths_frame(analysis) -> None:  # type: ignore[no-untyped-def]
    f = analysis.paths_frame()
    window = analysis.summary["paths"][0]
    first = f[f["window"] == tuple(window["layers"])].iloc[0]
    assert first["path"] == tuple(window["frequent"][0]["path"])
    assert first["tokens"] == window["frequent"][0]["tokens"]


def test_check_frame() -> None:
    report = moediag.check(SAMPLES / "imbalanced.safetensors")
    f = report.frame()
    assert set(f["rule"]) == {o.name for o in report.outcomes}
    failed = f[f["status"] == "fail"]
    assert set(failed["rule"]) == {o.name for o in report.failed}
    vio = f[(f["rule"] == "max_vio") & (f["layer"] == 3)].iloc[0]
    assert vio["value"] == pytest.approx(report.figures["layers"]["3"]["max_vio"])
