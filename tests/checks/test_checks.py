"""The pure gate: should_fail on both sides of every boundary, each rule, scope, layers, strict, baseline."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moediag.checks import (
    KEYS,
    RULES,
    RULES_BY_NAME,
    CheckConfig,
    ConfigValueError,
    baseline_figures,
    coerce,
    decimals,
    parse_layers,
    round_figure,
    run_checks,
    should_fail,
)
from moediag.errors import ExitCode

# ---------------------------------------------------------------- should_fail


@pytest.mark.parametrize(
    ("value", "threshold", "direction", "precision", "fails"),
    [
        # max: equal passes, just above fails, rounding decides what "equal" means
        (1.0, 1.0, "max", 3, False),
        (1.001, 1.0, "max", 3, True),
        (0.999, 1.0, "max", 3, False),
        (1.0004, 1.0, "max", 3, False),  # prints 1.000: passes
        (1.0005, 1.0, "max", 3, True),  # prints 1.001 (half up as printed... or 1.000 by binary repr)
        (1.0006, 1.0, "max", 3, True),
        (1.4, 1.0, "max", 0, False),  # prints 1
        (1.6, 1.0, "max", 0, True),  # prints 2
        (0.0, 0.0, "max", 0, False),
        (1.0, 0.0, "max", 0, True),
        # min: equal passes, just below fails
        (0.8, 0.8, "min", 3, False),
        (0.799, 0.8, "min", 3, True),
        (0.801, 0.8, "min", 3, False),
        (0.7996, 0.8, "min", 3, False),  # prints 0.800: passes
        (0.7994, 0.8, "min", 3, True),  # prints 0.799: fails
        (math.nan, 1.0, "max", 3, True),
        (math.nan, 0.5, "min", 3, True),
    ],
)
def test_should_fail_boundaries(
    value: float, threshold: float, direction: str, precision: int, fails: bool
) -> None:
    if value == 1.0005:
        # whatever side binary rounding lands on, the decision equals the printed comparison
        fails = float(f"{value:.3f}") > threshold
    assert should_fail(value, threshold, direction, precision) is fails  # type: ignore[arg-type]


@given(
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    st.integers(min_value=0, max_value=6),
    st.sampled_from(["max", "min"]),
)
def test_should_fail_agrees_with_the_printed_number(
    value: float, threshold: float, precision: int, d: str
) -> None:
    _, text = round_figure(value, precision)
    printed = float(text)
    expected = printed > threshold if d == "max" else printed < threshold
    assert should_fail(value, threshold, d, precision) is expected  # type: ignore[arg-type]


def test_decimals_and_round_figure() -> None:
    assert decimals(0.25) == 2
    assert decimals(1.0) == 0
    assert decimals(3) == 0
    assert decimals(0.1) == 1
    assert round_figure(-0.0001, 3) == (0.0, "0.000")
    assert round_figure(1.23456, 2) == (1.23, "1.23")


# ---------------------------------------------------------------- documents made by hand


def layer_row(layer: int, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "layer": layer,
        "num_experts": 8,
        "top_k": 2,
        "tokens": 1000,
        "source": "logits",
        "assignments": 2000,
        "max_vio": 0.2,
        "cv": 0.1,
        "entropy_norm": 0.99,
        "dead_experts": [],
        "cold_experts": [],
        "aux_loss": 1.01,
        "drop_rate": {"position": {"1.0": 0.05, "1.25": 0.01}, "probs": {"1.0": 0.05, "1.25": 0.01}},
        "drop_rate_total": {"1.0": 0.05, "1.25": 0.01},
    }
    row.update(over)
    return row


def doc(*rows: dict[str, Any], kind: str = "trace", **extra: Any) -> dict[str, Any]:
    return {
        "meta": {"format": 1, "kind": kind, "path": "x.safetensors"},
        "summary": {},
        "layers": list(rows),
        **extra,
    }


def outcome(report: Any, name: str) -> Any:
    return next(o for o in report.outcomes if o.name == name)


HEALTHY = doc(layer_row(0), layer_row(1))


def test_defaults_pass_a_healthy_document() -> None:
    report = run_checks(HEALTHY)
    assert report.status == "pass"
    assert report.exit_code is ExitCode.OK
    assert {o.name for o in report.outcomes} == {"max_vio", "max_cv", "max_dead", "min_entropy"}
    assert "max_redundant_pairs" in report.not_applicable  # checkpoint-only, on by default
    assert "max_aux_loss" in report.disabled


def test_defaults_fail_collapse() -> None:
    collapsed = layer_row(1, max_vio=3.0, cv=1.7, entropy_norm=0.33, dead_experts=[2, 3, 4, 5, 6, 7])
    report = run_checks(doc(layer_row(0), collapsed))
    assert report.exit_code is ExitCode.CHECK_FAILED
    assert {o.name for o in report.failed} == {"max_vio", "max_cv", "max_dead", "min_entropy"}
    vio = outcome(report, "max_vio")
    assert [r.layer for r in vio.failures] == [1]
    assert vio.failures[0].message() == "layer 1: max_vio 3.000 > 1.000"
    assert "FAIL" in report.verdict()


# One case per rule: (rule, row overrides or doc extras, value that passes at threshold, value that fails)
RULE_CASES = [
    ("max_vio", "max_vio", 0.5, 0.5, 0.501),
    ("max_cv", "cv", 0.3, 0.3, 0.3004 + 0.0007),
    ("min_entropy", "entropy_norm", 0.9, 0.9, 0.899),
    ("max_aux_loss", "aux_loss", 1.1, 1.1, 1.101),
    ("max_aux_loss_unbiased", "aux_loss_unbiased", 1.1, 1.1, 1.101),
    ("max_bias_spread", "bias", 0.5, {"min": -0.25, "max": 0.25}, {"min": -0.25, "max": 0.2511}),
]


@pytest.mark.parametrize(("rule", "key", "threshold", "ok", "bad"), RULE_CASES)
def test_ratio_rules_on_both_sides(rule: str, key: str, threshold: float, ok: Any, bad: Any) -> None:
    cfg = CheckConfig.from_values({rule: threshold})
    assert run_checks(doc(layer_row(0, **{key: ok})), cfg).status == "pass"
    report = run_checks(doc(layer_row(0, **{key: bad})), cfg)
    assert outcome(report, rule).status == "fail"


@pytest.mark.parametrize(("rule", "key"), [("max_dead", "dead_experts"), ("max_cold", "cold_experts")])
def test_count_rules_on_both_sides(rule: str, key: str) -> None:
    cfg = CheckConfig.from_values({rule: 1})
    assert outcome(run_checks(doc(layer_row(0, **{key: [3]})), cfg), rule).status == "pass"
    assert outcome(run_checks(doc(layer_row(0, **{key: [3, 4]})), cfg), rule).status == "fail"


def test_dead_rule_skips_when_too_few_tokens_to_tell() -> None:
    thin = layer_row(0, assignments=80, dead_experts=[1])  # 10 expected per expert < 20
    o = outcome(run_checks(doc(thin)), "max_dead")
    assert o.status == "skip"
    assert "min_expected_load" in (o.reason or "")
    cfg = CheckConfig.from_values({"min_expected_load": 5})
    assert outcome(run_checks(doc(thin), cfg), "max_dead").status == "fail"


def test_drop_rate_reads_the_configured_factor_and_policy() -> None:
    row = layer_row(0)
    cfg = CheckConfig.from_values({"max_drop_rate": 0.01})
    assert outcome(run_checks(doc(row), cfg), "max_drop_rate").status == "pass"  # 1.25, position: 0.01
    cfg = CheckConfig.from_values({"max_drop_rate": 0.01, "capacity_factor": 1.0})
    o = outcome(run_checks(doc(row), cfg), "max_drop_rate")
    assert o.status == "fail"
    assert o.failures[0].message() == "layer 0: max_drop_rate 0.050 > 0.010"
    # the total does not depend on the policy: every policy (and a former name) reads the same rate
    for policy in ("highest-weight", "first-choices-first", "probs"):
        cfg = CheckConfig.from_values({"max_drop_rate": 0.01, "capacity_factor": 1.0, "drop_policy": policy})
        assert outcome(run_checks(doc(row), cfg), "max_drop_rate").failures[0].value == 0.05
    cfg = CheckConfig.from_values({"max_drop_rate": 0.01, "capacity_factor": 3.0})
    assert "not analysed" in (outcome(run_checks(doc(row), cfg), "max_drop_rate").reason or "")


def count_only_row(layer: int) -> dict[str, Any]:
    return layer_row(layer, tokens=None, source="counts", aux_loss=None, drop_rate=None)


def test_count_only_skips_logit_rules_with_a_reason() -> None:
    cfg = CheckConfig.from_values({"max_aux_loss": 1.5, "max_drop_rate": 0.2})
    report = run_checks(doc(count_only_row(0)), cfg)
    aux = outcome(report, "max_aux_loss")
    assert aux.status == "skip"
    assert aux.reason == "needs router logits (this layer has counts)"
    assert outcome(report, "max_drop_rate").status == "skip"
    assert outcome(report, "max_vio").status == "pass"  # loads still count
    assert report.status == "pass"


def test_strict_turns_skips_into_failures() -> None:
    cfg = CheckConfig.from_values({"max_aux_loss": 1.5, "strict": True})
    report = run_checks(doc(count_only_row(0)), cfg)
    aux = outcome(report, "max_aux_loss")
    assert aux.status == "fail"
    assert "strict" in (aux.failures[0].reason or "")
    assert report.exit_code is ExitCode.CHECK_FAILED


def test_mixed_layers_pass_with_skips_noted() -> None:
    cfg = CheckConfig.from_values({"max_aux_loss": 1.5})
    o = outcome(run_checks(doc(layer_row(0), count_only_row(1)), cfg), "max_aux_loss")
    assert o.status == "pass"
    assert [r.layer for r in o.skips] == [1]


def test_accuracy_rules_skip_without_data_and_judge_with_it() -> None:
    cfg = CheckConfig.from_values({"min_accuracy": 0.5, "min_path_accuracy": 0.5})
    report = run_checks(HEALTHY, cfg)
    assert outcome(report, "min_accuracy").status == "skip"
    assert "expert_accuracy" in (outcome(report, "min_accuracy").reason or "")
    assert outcome(report, "min_path_accuracy").status == "skip"

    def acc(expert: int, tokens: int, correct: int) -> dict[str, Any]:
        return {"expert": expert, "tokens": tokens, "correct": correct, "accuracy": correct / tokens}

    good = layer_row(0, expert_accuracy=[acc(0, 100, 50), acc(1, 10, 1)])  # expert 1 has too few tokens
    bad = layer_row(0, expert_accuracy=[acc(0, 100, 49), acc(1, 100, 90)])
    assert outcome(run_checks(doc(good), cfg), "min_accuracy").status == "pass"
    o = outcome(run_checks(doc(bad), cfg), "min_accuracy")
    assert o.status == "fail" and o.failures[0].shown_value == "0.490"

    def paths(*accs: float) -> dict[str, Any]:
        rows = [{"path": [i], "tokens": 100, "accuracy": a} for i, a in enumerate(accs)]
        return {"summary": {"paths": [{"layers": [0, 1], "frequent": rows}]}}

    assert (
        outcome(run_checks(doc(layer_row(0), **paths(0.5, 0.9)), cfg), "min_path_accuracy").status == "pass"
    )
    o = outcome(run_checks(doc(layer_row(0), **paths(0.499, 0.9)), cfg), "min_path_accuracy")
    assert o.status == "fail" and o.scope == "model"


def test_checkpoint_rules() -> None:
    ckpt = doc(
        {"layer": 1, "num_experts": 8, "redundant_pairs": [], "bias": None},
        {"layer": 2, "num_experts": 8, "redundant_pairs": [[0, 1, 0.999]], "bias": {"min": -1.0, "max": 2.0}},
        kind="checkpoint",
    )
    report = run_checks(ckpt)
    # trace rules not applicable; max_nonfinite skips rows that do not say (weights not read)
    assert {o.name for o in report.outcomes} == {"max_redundant_pairs", "max_nonfinite"}
    o = outcome(report, "max_redundant_pairs")
    assert o.status == "fail" and [r.layer for r in o.failures] == [2]
    assert outcome(report, "max_nonfinite").status == "skip"
    broken = doc(
        {"layer": 1, "num_experts": 8, "redundant_pairs": [], "nonfinite": {"total": 0}},
        {
            "layer": 2,
            "num_experts": 8,
            "redundant_pairs": [],
            "nonfinite": {"selection_bias": 1, "total": 1},
            "bias": {"min": None, "max": None, "nonfinite": 8},
        },
        kind="checkpoint",
    )
    report = run_checks(broken, CheckConfig.from_values({"max_bias_spread": 1.0}))
    o = outcome(report, "max_nonfinite")
    assert report.status == "fail" and o.status == "fail" and [r.layer for r in o.failures] == [2]
    assert "NaN or infinite" in (outcome(report, "max_bias_spread").results[1].reason or "")
    cfg = CheckConfig.from_values({"max_redundant_pairs": 1, "max_bias_spread": 3.0})
    report = run_checks(ckpt, cfg)
    assert report.status == "pass"
    assert [r.status for r in outcome(report, "max_bias_spread").results] == ["skip", "pass"]
    cfg = CheckConfig.from_values({"max_bias_spread": 2.999})
    assert outcome(run_checks(ckpt, cfg), "max_bias_spread").status == "fail"
    # redundant pairs set explicitly on a trace: runs and skips with the reason
    cfg = CheckConfig.from_values({"max_redundant_pairs": 0})
    o = outcome(run_checks(HEALTHY, cfg), "max_redundant_pairs")
    assert o.status == "skip" and "weights" in (o.reason or "")


def test_model_scope_aggregates_selected_layers() -> None:
    d = doc(layer_row(0, max_vio=0.4, dead_experts=[1]), layer_row(1, max_vio=1.4, dead_experts=[2]))
    cfg = CheckConfig.from_values({"scope": "model", "max_dead": 1})
    report = run_checks(d, cfg)
    vio = outcome(report, "max_vio")
    assert vio.scope == "model" and vio.results[0].value == pytest.approx(0.9) and vio.status == "pass"
    assert outcome(report, "max_dead").results[0].value == 2  # summed
    assert outcome(report, "max_dead").status == "fail"
    cfg = CheckConfig.from_values({"scope": "model", "layers": "1"})
    assert outcome(run_checks(d, cfg), "max_vio").status == "fail"


def test_layer_selector() -> None:
    d = doc(*(layer_row(i, max_vio=2.0 if i == 2 else 0.1) for i in range(6)))
    assert run_checks(d, CheckConfig.from_values({"layers": "0,3-5"})).status == "pass"
    assert run_checks(d, CheckConfig.from_values({"layers": [2]})).status == "fail"
    with pytest.raises(ConfigValueError, match="layer 9 is not in the input"):
        run_checks(d, CheckConfig.from_values({"layers": "9"}))


def test_parse_layers() -> None:
    assert parse_layers("0,3-5") == (0, 3, 4, 5)
    assert parse_layers(" 2 , 1 ") == (1, 2)
    assert parse_layers([3, 1, 3]) == (1, 3)
    for bad in ("a", "3-1", "1,,2", "-1"):
        with pytest.raises(ConfigValueError):
            parse_layers(bad)


def test_threshold_decimals_widen_precision() -> None:
    cfg = CheckConfig.from_values({"max_vio": 0.2505})
    o = outcome(run_checks(doc(layer_row(0, max_vio=0.2506)), cfg), "max_vio")
    assert o.precision == 4 and o.status == "fail"
    assert o.failures[0].message() == "layer 0: max_vio 0.2506 > 0.2505"
    cfg = CheckConfig.from_values({"max_vio": 1.0, "precision": 1})
    assert run_checks(doc(layer_row(0, max_vio=1.04)), cfg).status == "pass"
    assert run_checks(doc(layer_row(0, max_vio=1.05001)), cfg).status == "fail"


def test_coerce_types() -> None:
    assert coerce(KEYS["max_vio"], "off") is None
    assert coerce(KEYS["max_vio"], False) is None
    assert coerce(KEYS["max_vio"], 1) == 1.0
    assert coerce(KEYS["max_dead"], "2") == 2
    assert coerce(KEYS["max_dead"], 2.0) == 2
    assert coerce(KEYS["strict"], "true") is True
    for key, bad in [
        ("max_vio", "high"),
        ("max_vio", True),
        ("max_dead", 1.5),
        ("max_vio", -1),
        ("scope", "all"),
        ("strict", 1),
        ("max_vio", "nan"),
        ("layers", 3),
        ("drop_policy", 1),
    ]:
        with pytest.raises(ConfigValueError):
            coerce(KEYS[key], bad)


def test_every_rule_has_a_flag_named_after_its_key() -> None:
    for rule in RULES:
        assert rule.key.flag == "--" + rule.name.replace("_", "-")
        assert rule.name.startswith(("max_", "min_"))
        assert rule.direction == rule.name[:3]
    assert set(RULES_BY_NAME) <= set(KEYS)


def test_baseline_regression_both_sides() -> None:
    base = run_checks(doc(layer_row(0, max_vio=0.30, entropy_norm=0.95)))
    figures = baseline_figures(base.to_dict(), CheckConfig())
    cfg = CheckConfig.from_values({"baseline_margin": 0.05})
    same = run_checks(doc(layer_row(0, max_vio=0.35, entropy_norm=0.90)), cfg, figures)
    assert outcome(same, "baseline.max_vio").status == "pass"  # exactly the margin
    assert outcome(same, "baseline.min_entropy").status == "pass"
    worse = run_checks(doc(layer_row(0, max_vio=0.351, entropy_norm=0.899)), cfg, figures)
    vio = outcome(worse, "baseline.max_vio")
    assert vio.status == "fail"
    assert (
        vio.failures[0].message() == "layer 0: baseline.max_vio 0.351 > 0.350 (baseline 0.300, margin 0.05)"
    )
    assert outcome(worse, "baseline.min_entropy").status == "fail"
    assert worse.exit_code is ExitCode.CHECK_FAILED


def test_baseline_margin_on_counts_is_whole_experts() -> None:
    """Dead experts are counted: a 0.05 margin allows no new dead expert and prints as 0, not 0.05."""
    base = baseline_figures(doc(layer_row(0, dead_experts=[])), CheckConfig())
    one_dead = doc(layer_row(0, dead_experts=[3]))
    for margin, status in ((0.05, "fail"), (0.99, "fail"), (1.0, "pass"), (1.5, "pass")):
        cfg = CheckConfig.from_values({"baseline_margin": margin})
        dead = outcome(run_checks(one_dead, cfg, base), "baseline.max_dead")
        assert dead.status == status, margin
    failing = outcome(
        run_checks(one_dead, CheckConfig.from_values({"baseline_margin": 0.05}), base), "baseline.max_dead"
    )
    assert failing.failures[0].message() == "layer 0: baseline.max_dead 1 > 0 (baseline 0, margin 0)"


def test_baseline_of_another_model_or_kind_is_refused() -> None:
    """A baseline over other layers (another model) or of a checkpoint would compare almost nothing and
    pass silently; it is an error naming both layer sets."""
    from moediag.checks import BaselineMismatchError

    base = baseline_figures(doc(layer_row(0), layer_row(1)), CheckConfig())
    with pytest.raises(BaselineMismatchError, match="covers layers 0, 1 and the input 1, 2"):
        run_checks(doc(layer_row(1), layer_row(2)), CheckConfig(), base)
    with pytest.raises(BaselineMismatchError, match="covers layers 0, 1 and the input 0"):
        run_checks(doc(layer_row(0)), CheckConfig(), base)
    only_0 = CheckConfig.from_values({"layers": "0"})  # a selection of common layers is fine
    assert outcome(run_checks(doc(layer_row(0)), only_0, base), "baseline.max_vio").status == "pass"
    ckpt = baseline_figures(doc(layer_row(0), layer_row(1), kind="checkpoint"), CheckConfig())
    with pytest.raises(BaselineMismatchError, match="holds a checkpoint's figures"):
        run_checks(doc(layer_row(0), layer_row(1)), CheckConfig(), ckpt)


def test_baseline_from_inspect_json_and_bad_documents() -> None:
    figures = baseline_figures(doc(layer_row(0, max_vio=0.3)), CheckConfig())
    assert figures["layers"]["0"]["max_vio"] == 0.3
    bad: dict[str, Any]
    for bad in ({}, {"meta": {}}, {"meta": {"command": "check"}}):
        with pytest.raises(ConfigValueError):
            baseline_figures(bad, CheckConfig())


def test_report_json_has_schema_and_every_rule() -> None:
    d = run_checks(HEALTHY).to_dict()
    assert d["meta"]["format"] == 1 and d["meta"]["command"] == "check"
    assert d["exit_code"] == 0 and d["status"] == "pass"
    assert set(d["figures"]["model"]) == set(RULES_BY_NAME)
    assert d["rules"][0]["worst"]["shown"] is not None


def test_every_key_is_documented_under_an_anchor() -> None:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "checks.md").read_text()
    for name, key in KEYS.items():
        assert f'<a id="{name}"></a>`{name}` / `{key.flag}' in text, name
