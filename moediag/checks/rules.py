"""The rule table: :data:`RULES` and the options they share, in one table :data:`KEYS` that drives the
configuration file (``[tool.moediag.check]``), the command-line flags (``--max-vio``) and docs/checks.md.
"""

from __future__ import annotations

from typing import Literal

from moediag import options
from moediag.checks.extract import (
    _bias_spread,
    _drop_rate,
    _expert_list,
    _layer_expert_accuracy,
    _nonfinite,
    _ratio,
    _redundant_pairs,
)
from moediag.checks.gate import CAPACITY_POLICIES, SCOPES, Direction
from moediag.checks.keys import Extractor, Key, Rule

_ANY = frozenset({"trace", "checkpoint"})
_TRACE = frozenset({"trace"})
_CKPT = frozenset({"checkpoint"})


def _rule(
    name: str,
    default: float | None,
    help: str,
    *,
    figure: str,
    direction: Direction,
    precision: int,
    formula: str,
    kinds: frozenset[str],
    agg: Literal["mean", "sum", "max", "min"],
    extract: Extractor,
    integer: bool = False,
    model_only: bool = False,
) -> Rule:
    key = Key(name, "int" if integer else "float", default, help, minimum=0, is_threshold=True)
    return Rule(key, figure, direction, precision, formula, kinds, agg, extract, model_only)


RULES: tuple[Rule, ...] = (
    _rule(
        "max_vio",
        1.0,
        "Fail when MaxVio (max load / fair share - 1) exceeds this.",
        figure="MaxVio",
        direction="max",
        precision=3,
        formula="max_i c_i / (k*T/E) - 1",
        kinds=_TRACE,
        agg="mean",
        extract=_ratio("max_vio", "needs expert loads"),
    ),
    _rule(
        "max_cv",
        0.5,
        "Fail when the coefficient of variation of expert loads exceeds this.",
        figure="CV",
        direction="max",
        precision=3,
        formula="std(c) / mean(c) (population std)",
        kinds=_TRACE,
        agg="mean",
        extract=_ratio("cv", "needs expert loads"),
    ),
    _rule(
        "max_dead",
        0,
        "Fail when more experts than this received no token.",
        figure="dead experts",
        direction="max",
        precision=0,
        formula="#{i : c_i = 0}",
        kinds=_TRACE,
        agg="sum",
        extract=_expert_list("dead_experts"),
        integer=True,
    ),
    _rule(
        "max_cold",
        None,
        "Fail when more experts than this are cold (share < cold_eps / E).",
        figure="cold experts",
        direction="max",
        precision=0,
        formula="#{i : c_i / (k*T) < cold_eps / E}",
        kinds=_TRACE,
        agg="sum",
        extract=_expert_list("cold_experts"),
        integer=True,
    ),
    _rule(
        "min_entropy",
        0.8,
        "Fail when the normalised entropy of expert loads is below this.",
        figure="entropy",
        direction="min",
        precision=3,
        formula="H(c / sum c) / log E",
        kinds=_TRACE,
        agg="mean",
        extract=_ratio("entropy_norm", "needs expert loads"),
    ),
    _rule(
        "max_aux_loss",
        None,
        "Fail when the Switch-style aux loss (balanced = 1) exceeds this.",
        figure="aux loss",
        direction="max",
        precision=3,
        formula="E * sum_i (c_i / (k*T)) * P_i",
        kinds=_TRACE,
        agg="mean",
        extract=_ratio("aux_loss", "needs router logits"),
    ),
    _rule(
        "max_aux_loss_unbiased",
        None,
        "Fail when the aux loss of the plain top-k (no selection bias or group limits; Megatron's logged "
        "value) exceeds this.",
        figure="unbiased aux loss",
        direction="max",
        precision=3,
        formula="E * sum_i (c'_i / (k*T)) * P_i, c' = loads of the top-k of the scores alone",
        kinds=_TRACE,
        agg="mean",
        extract=_ratio("aux_loss_unbiased", "needs router logits"),
    ),
    _rule(
        "max_drop_rate",
        None,
        "Fail when the share of assignments dropped at --capacity-factor exceeds this.",
        figure="drop rate",
        direction="max",
        precision=3,
        formula="1 - sum_i min(c_i, C) / sum_i c_i, C = ceil(CF * k * T_group / E)",
        kinds=_TRACE,
        agg="mean",
        extract=_drop_rate,
    ),
    _rule(
        "min_accuracy",
        None,
        "Fail when an expert's accuracy (top-1 attribution) is below this.",
        figure="expert accuracy",
        direction="min",
        precision=3,
        formula="min over experts with >= accuracy_min_tokens tokens of correct_i / tokens_i",
        kinds=_TRACE,
        agg="min",
        extract=_layer_expert_accuracy,
    ),
    _rule(
        "min_path_accuracy",
        None,
        "Fail when a frequent routing path's accuracy is below this.",
        figure="path accuracy",
        direction="min",
        precision=3,
        formula="min over paths with >= accuracy_min_tokens tokens of correct_p / tokens_p",
        kinds=_TRACE,
        agg="min",
        extract=lambda row, config: (None, "model-level rule"),
        model_only=True,
    ),
    _rule(
        "max_redundant_pairs",
        0,
        "Fail when more expert pairs than this are near-duplicates (checkpoints).",
        figure="redundant pairs",
        direction="max",
        precision=0,
        formula="#{(i, j) : cos(W_i, W_j) > redundancy threshold}",
        kinds=_CKPT,
        agg="sum",
        extract=_redundant_pairs,
        integer=True,
    ),
    _rule(
        "max_nonfinite",
        0,
        "Fail when the router, the biases or the expert weights read hold NaN or infinite values "
        "(checkpoints).",
        figure="non-finite values",
        direction="max",
        precision=0,
        formula="#non-finite router and bias values + #experts with a non-finite value in the rows read",
        kinds=_CKPT,
        agg="sum",
        extract=_nonfinite,
        integer=True,
    ),
    _rule(
        "max_bias_spread",
        None,
        "Fail when the selection bias spread (max - min) exceeds this.",
        figure="bias spread",
        direction="max",
        precision=3,
        formula="max_i b_i - min_i b_i",
        kinds=_ANY,
        agg="max",
        extract=_bias_spread,
    ),
)

RULES_BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}

OPTIONS: tuple[Key, ...] = (
    Key("scope", "str", "layer", "Apply rules to each selected layer, or once to the model figure.", SCOPES),
    Key("layers", "layers", None, "Layers to check, e.g. '0,3-5' (default: all)."),
    Key("strict", "bool", False, "Treat a skipped rule (its data is missing) as a failure."),
    Key(
        "capacity_factor",
        "float",
        options.default("capacity_factor"),
        "Capacity factor at which max_drop_rate is measured (0 < factor <= 1000).",
        minimum=0,
        maximum=1000,
        exclusive=True,
    ),
    Key(
        "drop_policy",
        "str",
        "token-order",
        "Which assignments a full expert drops first (the total rate is the same for every policy): "
        "token-order | highest-weight | first-choices-first.",
        CAPACITY_POLICIES,
    ),
    Key(
        "min_capacity",
        "int",
        options.default("min_capacity"),
        "Capacity floor per expert and group for max_drop_rate (DeepSpeed's min_capacity; 0 = none).",
        minimum=0,
    ),
    Key("cold_eps", "float", options.default("cold_eps"), options.BY_NAME["cold_eps"].help, minimum=0),
    Key(
        "min_expected_load",
        "float",
        20.0,
        "Dead/cold rules are skipped below this many expected assignments per expert (k*T/E).",
        minimum=0,
    ),
    Key(
        "accuracy_min_tokens",
        "int",
        30,
        "Accuracy rules ignore experts and paths with fewer tokens.",
        minimum=0,
    ),
    Key(
        "precision",
        "int",
        None,
        "Decimal places figures are rounded to before comparing (default per rule).",
        minimum=0,
    ),
    Key(
        "baseline_margin",
        "float",
        0.05,
        "With --baseline: how much a figure may worsen (absolute).",
        minimum=0,
    ),
)

KEYS: dict[str, Key] = {k.name: k for k in [r.key for r in RULES] + list(OPTIONS)}


#: the largest layer index a selector may name (trace layer names have at most four digits)
