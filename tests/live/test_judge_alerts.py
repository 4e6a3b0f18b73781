"""Temporal judgement over windows and alerts from the check rule table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moediag.checks import CheckConfig, run_checks
from moediag.checks.config import load_config
from moediag.live import LiveStats, RoutingAlert, TemporalJudge, evaluate


def _window(live: LiveStats, counts: list[int], step: int, layer: int = 0):
    live.update_counts(layer, len(counts), torch.tensor([counts]), step=step)
    return live.close_window(step=step)


def test_cold_for_w_windows_in_a_row_is_dead() -> None:
    live, judge = LiveStats(), TemporalJudge(windows=3)
    hot, cold = [100, 100, 100, 1], [100, 100, 100, 100]
    seen = []
    for step, counts in enumerate([hot, hot, cold, hot, hot, hot, hot]):
        judged = judge.judge(_window(live, counts, step))
        seen.append(judged[0]["judged_dead"])
    # expert 3 is cold in windows 0, 1 (streak 2), warm in 2 (reset), cold from 3: dead at the 3rd (5)
    assert seen == [[], [], [], [], [], [3], [3]]


def test_windows_too_small_to_judge_neither_extend_nor_break_a_streak() -> None:
    live, judge = LiveStats(), TemporalJudge(windows=2, min_expected_load=20)
    judge.judge(_window(live, [50, 50, 50, 0], 0))
    small = judge.judge(_window(live, [5, 5, 5, 5], 1))  # 5 per expert < 20: not judged
    assert small[0]["judged_dead"] == []
    assert judge.judge(_window(live, [50, 50, 50, 0], 2))[0]["judged_dead"] == [3]


def test_max_vio_rising_for_w_windows_is_flagged() -> None:
    live, judge = LiveStats(), TemporalJudge(windows=2)
    flags = []
    for step, top in enumerate([110, 120, 130, 125, 140, 150]):
        judged = judge.judge(_window(live, [top, 100, 100, 100], step))
        flags.append(judged[0]["max_vio_rising"])
    assert flags == [False, False, True, False, False, True]


def test_alerts_are_the_check_rules_on_the_window() -> None:
    live = LiveStats()
    report = _window(live, [400, 100, 100, 100], 5)
    config = CheckConfig.from_values({"max_vio": 0.5})
    alerts = evaluate(report, config)
    gate = run_checks({"meta": {"kind": "trace"}, "layers": list(report.layers.values())}, config)
    failing = [(o.name, r.layer, r.value, r.threshold) for o in gate.outcomes for r in o.failures]
    assert [(a.rule, a.layer, a.value, a.limit) for a in alerts] == failing
    vio = next(a for a in alerts if a.rule == "max_vio")
    assert vio.step == 5 and vio.value == pytest.approx(400 / 175 - 1) and vio.limit == 0.5
    assert vio.message == "step 5: layer 0: max_vio 1.286 > 0.500"
    assert vio.record()["kind"] == "alert"
    # a threshold turned off turns its alert off
    assert not [
        a for a in evaluate(report, CheckConfig.from_values({"max_vio": "off"})) if a.rule == "max_vio"
    ]


def test_pyproject_check_table_drives_the_alerts(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.moediag.check]\nmax_vio = 5.0\nmax_cv = 5.0\n")
    config = load_config(cwd=tmp_path)
    live = LiveStats()
    report = _window(live, [400, 100, 100, 100], 0)
    rules = {a.rule for a in evaluate(report, config)}
    assert "max_vio" not in rules and "max_cv" not in rules
    assert "max_vio" in {a.rule for a in evaluate(report)}


def test_judged_dead_replaces_one_windows_zero_counts_for_max_dead() -> None:
    live, judge = LiveStats(), TemporalJudge(windows=2)
    first = _window(live, [100, 100, 100, 0], 0)
    judge.judge(first)
    assert "max_dead" not in {a.rule for a in evaluate(first)}  # one quiet window is not a dead expert
    second = _window(live, [100, 100, 100, 0], 1)
    judge.judge(second)
    dead = [a for a in evaluate(second) if a.rule == "max_dead"]
    assert len(dead) == 1 and dead[0].value == 1.0 and dead[0].limit == 0
    unjudged = _window(LiveStats(), [100, 100, 100, 0], 0)
    assert "max_dead" in {a.rule for a in evaluate(unjudged)}  # without a judge: inspect's definition


def test_rising_alert_and_routing_alert() -> None:
    live, judge = LiveStats(), TemporalJudge(windows=1)
    judge.judge(_window(live, [110, 100, 100, 100], 0))
    report = _window(live, [120, 100, 100, 100], 1)
    judge.judge(report)
    rising = [a for a in evaluate(report) if a.rule == "max_vio_rising"]
    assert len(rising) == 1 and rising[0].layer == 0 and rising[0].limit == 1.0
    exc = RoutingAlert(rising + rising)
    assert exc.alerts == rising + rising and "MaxVio rose" in str(exc) and "1 more" in str(exc)
