"""Thresholds -> pass/fail: the pure core of ``moediag check`` (no I/O, no typer, no rich).

One table, :data:`KEYS`, names every setting of the gate: the rules (``max_vio``, ``min_entropy``, ...)
and the options they share (``scope``, ``layers``, ``capacity_factor``, ...), each with its type, default,
direction and description. The same table drives the configuration file (``[tool.moediag.check]``), the
command-line flags (``--max-vio``) and docs/checks.md, so the three can't drift.

``run_checks(analysis_dict, config)`` takes the document ``moediag inspect --json`` prints (a trace's or a
checkpoint's) and returns a :class:`CheckReport`. The comparison itself is :func:`should_fail`, the way
coverage.py's ``should_fail_under`` works: the measured figure is rounded to the rule's precision first,
and the message prints exactly the rounded number that was compared.

Layout: ``gate`` (the pure comparison), ``keys`` and ``rules`` (the table), ``extract`` (what a rule
reads from a row), ``config`` (values and where they came from, the config file), ``figures`` and ``run``
(running the rules), ``report`` (results), ``baseline`` (regressions against a previous run).

Example::

    from moediag.analysis import analyze_trace
    from moediag.checks import CheckConfig, run_checks

    doc = analyze_trace("trace.safetensors").to_dict()
    report = run_checks(doc, CheckConfig.from_values({"max_vio": 0.5}))
    print(report.status, report.exit_code)
"""

from __future__ import annotations

from moediag.checks.baseline import BaselineMismatchError, baseline_figures, compare_baseline
from moediag.checks.config import (
    MAX_LAYER,
    CheckConfig,
    ConfigValueError,
    apply_flags,
    apply_table,
    check_table,
    coerce,
    load_config,
    parse_layers,
)
from moediag.checks.extract import bias_spread, needs_reason
from moediag.checks.figures import input_kind, judge, model_paths, rule_figures, selected_layers
from moediag.checks.gate import (
    CAPACITY_POLICIES,
    CHECK_JSON_FORMAT,
    SCOPES,
    Direction,
    Scope,
    Status,
    decimals,
    format_threshold,
    round_figure,
    should_fail,
)
from moediag.checks.keys import Extractor, Key, Rule
from moediag.checks.report import CheckReport, RuleOutcome, RuleResult
from moediag.checks.rules import KEYS, OPTIONS, RULES, RULES_BY_NAME
from moediag.checks.run import NothingToCheckError, nothing_to_judge, run_checks

__all__ = [
    "apply_flags",
    "apply_table",
    "check_table",
    "load_config",
    "BaselineMismatchError",
    "CAPACITY_POLICIES",
    "CHECK_JSON_FORMAT",
    "CheckConfig",
    "CheckReport",
    "ConfigValueError",
    "Direction",
    "Extractor",
    "KEYS",
    "Key",
    "MAX_LAYER",
    "NothingToCheckError",
    "OPTIONS",
    "RULES",
    "RULES_BY_NAME",
    "Rule",
    "RuleOutcome",
    "RuleResult",
    "SCOPES",
    "Scope",
    "Status",
    "baseline_figures",
    "bias_spread",
    "coerce",
    "compare_baseline",
    "decimals",
    "format_threshold",
    "input_kind",
    "judge",
    "model_paths",
    "needs_reason",
    "nothing_to_judge",
    "parse_layers",
    "round_figure",
    "rule_figures",
    "run_checks",
    "selected_layers",
    "should_fail",
]
