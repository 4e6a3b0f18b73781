"""Thresholds -> pass/fail: the pure core of ``moediag check`` (no I/O, no typer, no rich).

One table, :data:`KEYS`, names every setting of the gate: the rules (``max_vio``, ``min_entropy``, ...)
and the options they share (``scope``, ``layers``, ``capacity_factor``, ...), each with its type, default,
direction and description. The same table drives the configuration file (``[tool.moediag.check]``), the
command-line flags (``--max-vio``) and docs/checks.md, so the three can't drift.

``run_checks(analysis_dict, config)`` takes the document ``moediag inspect --json`` prints (a trace's or a
checkpoint's) and returns a :class:`CheckReport`. The comparison itself is :func:`should_fail`, the way
coverage.py's ``should_fail_under`` works: the measured figure is rounded to the rule's precision first,
and the message prints exactly the rounded number that was compared.

Example::

    from moediag.analysis import analyze_trace
    from moediag.checks import CheckConfig, run_checks

    doc = analyze_trace("trace.safetensors").to_dict()
    report = run_checks(doc, CheckConfig.from_values({"max_vio": 0.5}))
    print(report.status, report.exit_code)
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from moediag import options
from moediag.errors import ExitCode

#: JSON schema version of ``check --format json`` output (``meta.format``). History: 1 = first release.
CHECK_JSON_FORMAT = 1

Direction = Literal["max", "min"]
Status = Literal["pass", "fail", "skip"]
Scope = Literal["layer", "model"]

CAPACITY_POLICIES = ("position", "probs")
SCOPES = ("layer", "model")


# --------------------------------------------------------------------------------------------------
# The gate: one pure comparison, tested on both sides of every boundary
# --------------------------------------------------------------------------------------------------


def decimals(number: float) -> int:
    """Decimal places written in ``number`` (``0.25`` -> 2, ``1.0`` -> 0, ``3`` -> 0)."""
    if isinstance(number, int) or float(number).is_integer():
        return 0
    exponent = Decimal(repr(float(number))).normalize().as_tuple().exponent
    return max(0, -int(exponent))


def round_figure(value: float, precision: int) -> tuple[float, str]:
    """``value`` rounded half-up-as-printed to ``precision`` places: (the number compared, its text)."""
    text = f"{value:.{precision}f}"
    if text.startswith("-") and float(text) == 0:
        text = text[1:]
    return float(text), text


def should_fail(value: float, threshold: float, direction: Direction, precision: int) -> bool:
    """Whether ``value`` breaks ``threshold``: ``max`` fails above it, ``min`` fails below it.

    The value is rounded to ``precision`` decimal places before the comparison (as it is printed), so a
    figure shown as equal to the threshold passes. A NaN figure always fails.
    """
    if math.isnan(value):
        return True
    rounded, _ = round_figure(value, precision)
    if direction == "max":
        return rounded > threshold
    return rounded < threshold


def format_threshold(threshold: float, precision: int) -> str:
    return f"{threshold:.{precision}f}"


# --------------------------------------------------------------------------------------------------
# The key table
# --------------------------------------------------------------------------------------------------

#: What a rule reads from one row: (value, None) or (None, why the figure is absent).
Extractor = Callable[[Mapping[str, Any], "CheckConfig"], tuple[float | None, str | None]]


@dataclass(frozen=True)
class Key:
    """One setting of the gate: a config key (``max_vio``) and a flag (``--max-vio``)."""

    name: str
    type: Literal["float", "int", "bool", "str", "layers"]
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    #: a rule's threshold: may be ``off`` (``false`` in TOML) to disable the rule
    is_threshold: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Rule:
    """A rule: a figure, how it is compared, where it comes from and how layers aggregate to a model."""

    key: Key
    figure: str
    direction: Direction
    precision: int
    formula: str
    kinds: frozenset[str]
    #: how ``--scope model`` combines the selected layers' figures
    model_agg: Literal["mean", "sum", "max", "min"]
    extract: Extractor
    #: the figure exists only for the whole model (paths cross layers)
    model_only: bool = False

    @property
    def name(self) -> str:
        return self.key.name


def _ratio(name: str, needs: str) -> Extractor:
    def extract(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
        value = row.get(name)
        if value is None:
            return None, needs_reason(row, needs)
        return float(value), None

    return extract


def needs_reason(row: Mapping[str, Any], needs: str) -> str:
    source = row.get("source")
    return f"{needs} (this layer has {source})" if source else needs


def _expected_load(row: Mapping[str, Any]) -> float | None:
    assignments = row.get("assignments")
    experts = row.get("num_experts")
    if assignments is None or not experts:
        return None
    return float(assignments) / float(experts)


def _expert_list(name: str) -> Extractor:
    def extract(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
        experts = row.get(name)
        if experts is None:
            return None, "needs expert loads"
        expected = _expected_load(row)
        floor = float(config["min_expected_load"])
        if expected is not None and expected < floor:
            return None, (
                f"too few tokens to call an expert {name.split('_')[0]}: {expected:.1f} expected "
                f"assignments per expert < min_expected_load {floor:g}"
            )
        return float(len(experts)), None

    return extract


def _drop_rate(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
    rates = row.get("drop_rate")
    if rates is None:
        return None, needs_reason(row, "needs per-token routing (top-k ids or logits)")
    policy = str(config["drop_policy"])
    cf = float(config["capacity_factor"])
    by_cf = rates.get(policy)
    if by_cf is None:
        return None, f"no drop rates for policy {policy!r}"
    for key, rate in by_cf.items():
        if math.isclose(float(key), cf):
            if rate is None:
                return None, f"policy {policy!r} needs top-k weights or logits"
            return float(rate), None
    return None, f"capacity factor {cf:g} was not analysed (have {', '.join(by_cf)})"


def _min_accuracy(key: str, what: str) -> Callable[[Any, CheckConfig], tuple[float | None, str | None]]:
    def extract(entries: Any, config: CheckConfig) -> tuple[float | None, str | None]:
        if entries is None:
            return None, f"needs {key} (a trace with tokens.correct)"
        if key == "paths" and not any(e.get("accuracy") is not None for e in entries):
            return None, "needs paths with accuracy (a trace with tokens.correct)"
        floor = int(config["accuracy_min_tokens"])
        accs = [
            float(e["accuracy"])
            for e in entries
            if e.get("accuracy") is not None and int(e.get("tokens") or 0) >= floor
        ]
        if not accs:
            return None, f"no {what} has at least accuracy_min_tokens={floor} tokens"
        return min(accs), None

    return extract


_expert_accuracy = _min_accuracy("expert_accuracy", "expert")
_path_accuracy = _min_accuracy("paths", "path")


def _layer_expert_accuracy(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
    return _expert_accuracy(row.get("expert_accuracy"), config)


def _redundant_pairs(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
    pairs = row.get("redundant_pairs")
    if pairs is None:
        return None, "needs expert weights (a checkpoint inspected with weights)"
    return float(len(pairs)), None


def bias_spread(stats: Any) -> float | None:
    """max - min of a selection-bias summary (``{"min", "max", ...}``, a ``spread``, or the raw list)."""
    if stats is None:
        return None
    if isinstance(stats, Mapping):
        if stats.get("spread") is not None:
            return float(stats["spread"])
        if stats.get("max") is not None and stats.get("min") is not None:
            return float(stats["max"]) - float(stats["min"])
        return None
    values = [float(x) for x in stats]
    return max(values) - min(values) if values else None


def _bias_spread(row: Mapping[str, Any], config: CheckConfig) -> tuple[float | None, str | None]:
    spread = bias_spread(row.get("bias", row.get("selection_bias")))
    if spread is None:
        return None, "the model has no selection bias in this layer"
    return spread, None


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
        "Capacity factor at which max_drop_rate is measured.",
        minimum=0,
    ),
    Key(
        "drop_policy",
        "str",
        "position",
        "Which assignments a full expert drops: position | probs.",
        CAPACITY_POLICIES,
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


class ConfigValueError(ValueError):
    """A value that doesn't fit its key; the caller names the file or flag."""


_LAYERS_RE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_layers(spec: str | Iterable[int]) -> tuple[int, ...]:
    """``"0,3-5"`` -> ``(0, 3, 4, 5)``; a list of ints is taken as it is."""
    if isinstance(spec, str):
        out: set[int] = set()
        for part in spec.split(","):
            m = _LAYERS_RE.match(part)
            if not m:
                raise ConfigValueError(f"layer selector {spec!r}: expected numbers and ranges like '0,3-5'")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise ConfigValueError(f"layer selector {spec!r}: range {lo}-{hi} runs backwards")
            out.update(range(lo, hi + 1))
        return tuple(sorted(out))
    values = list(spec)
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in values):
        raise ConfigValueError("expected a list of non-negative layer numbers or a string like '0,3-5'")
    return tuple(sorted(set(values)))


def coerce(key: Key, value: Any) -> Any:
    """Check and convert one value for ``key``: TOML values as they are, or flag text."""
    if key.is_threshold and (
        value is False or (isinstance(value, str) and value.strip().lower() in ("off", "none"))
    ):
        return None
    if key.type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigValueError(f"expected true or false, got {value!r}")
    if key.type == "str":
        if not isinstance(value, str):
            raise ConfigValueError(f"expected a string, got {value!r}")
        if key.choices and value not in key.choices:
            raise ConfigValueError(f"expected one of {', '.join(key.choices)}, got {value!r}")
        return value
    if key.type == "layers":
        if not isinstance(value, (str, list, tuple)):
            raise ConfigValueError(f"expected a string like '0,3-5' or a list of layers, got {value!r}")
        return parse_layers(value)
    number: float | int
    if isinstance(value, bool):
        raise ConfigValueError(f"expected a number{' or off' if key.is_threshold else ''}, got {value!r}")
    if isinstance(value, str):
        try:
            number = int(value) if key.type == "int" else float(value)
        except ValueError:
            raise ConfigValueError(
                f"expected {'an integer' if key.type == 'int' else 'a number'}"
                f"{' or off' if key.is_threshold else ''}, got {value!r}"
            ) from None
    elif isinstance(value, (int, float)):
        number = value
    else:
        raise ConfigValueError(f"expected a number, got {value!r}")
    if key.type == "int":
        if isinstance(number, float):
            if not number.is_integer():
                raise ConfigValueError(f"expected an integer, got {value!r}")
            number = int(number)
    else:
        number = float(number)
    if not math.isfinite(number):
        raise ConfigValueError(f"expected a finite number, got {value!r}")
    if key.minimum is not None and number < key.minimum:
        raise ConfigValueError(f"must be >= {key.minimum:g}, got {value!r}")
    return number


@dataclass
class CheckConfig:
    """Resolved settings: every key of :data:`KEYS` with its value and where it came from.

    ``sources[key]`` is ``"default"``, a config file's path, or ``"flag"``.
    """

    values: dict[str, Any] = field(default_factory=lambda: {k: key.default for k, key in KEYS.items()})
    sources: dict[str, str] = field(default_factory=lambda: dict.fromkeys(KEYS, "default"))
    file: str | None = None

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def set(self, name: str, value: Any, source: str) -> None:
        """Set ``name`` from ``source`` after checking it (raises KeyError / ConfigValueError)."""
        key = KEYS[name]
        self.values[name] = coerce(key, value)
        self.sources[name] = source

    @classmethod
    def from_values(cls, values: Mapping[str, Any], source: str = "python") -> CheckConfig:
        config = cls()
        for name, value in values.items():
            if name not in KEYS:
                raise KeyError(name)
            config.set(name, value, source)
        return config

    def explicit(self, name: str) -> bool:
        return self.sources[name] != "default"

    def precision(self, rule: Rule) -> int:
        """The rule's precision (or the ``precision`` key), widened to the decimals the threshold shows."""
        base = self.values["precision"] if self.values["precision"] is not None else rule.precision
        threshold = self.values[rule.name]
        return max(int(base), decimals(threshold)) if threshold is not None else int(base)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.values.items()}


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclass
class RuleResult:
    """One comparison: a rule on one layer (``scope="layer"``) or on the model (``scope="model"``)."""

    name: str
    scope: Scope
    layer: int | None
    value: float | None
    threshold: float | None
    status: Status
    reason: str | None = None
    direction: Direction = "max"
    precision: int = 3

    @property
    def shown_value(self) -> str | None:
        return None if self.value is None else round_figure(self.value, self.precision)[1]

    @property
    def shown_threshold(self) -> str | None:
        return None if self.threshold is None else format_threshold(self.threshold, self.precision)

    @property
    def where(self) -> str:
        return "model" if self.layer is None else f"layer {self.layer}"

    def message(self) -> str:
        """``layer 3: MaxVio 1.520 > 1.000`` -- the same rounded numbers that were compared."""
        if self.status == "skip" or self.value is None:
            return f"{self.where}: {self.name} skipped: {self.reason}"
        op = {("max", "fail"): ">", ("max", "pass"): "<=", ("min", "fail"): "<", ("min", "pass"): ">="}[
            (self.direction, self.status)
        ]
        text = f"{self.where}: {self.name} {self.shown_value} {op} {self.shown_threshold}"
        return f"{text} ({self.reason})" if self.reason else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "value": self.value,
            "shown": self.shown_value,
            "threshold": self.threshold,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass
class RuleOutcome:
    """A rule's results over its scope; failed if any failed, skipped if all skipped."""

    name: str
    figure: str
    direction: Direction
    scope: Scope
    threshold: float | None
    precision: int
    results: list[RuleResult]
    source: str = "default"
    kind: Literal["threshold", "baseline"] = "threshold"

    @property
    def status(self) -> Status:
        statuses = {r.status for r in self.results}
        if "fail" in statuses:
            return "fail"
        if "pass" in statuses:
            return "pass"
        return "skip"

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def skips(self) -> list[RuleResult]:
        return [r for r in self.results if r.status == "skip"]

    @property
    def worst(self) -> RuleResult | None:
        """The result that decides the row: the worst failing one, else the worst measured one."""
        measured = [r for r in self.results if r.value is not None]
        pool = [r for r in measured if r.status == "fail"] or measured
        if not pool:
            return None
        if self.kind == "baseline":
            return max(
                pool,
                key=lambda r: (
                    (r.value or 0.0) - (r.threshold or 0.0)
                    if self.direction == "max"
                    else (r.threshold or 0.0) - (r.value or 0.0)
                ),
            )
        return (
            max(pool, key=lambda r: r.value or 0.0)
            if self.direction == "max"
            else min(pool, key=lambda r: r.value or 0.0)
        )

    @property
    def reason(self) -> str | None:
        if self.status == "skip" and self.results:
            return self.results[0].reason
        return None

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {
            "rule": self.name,
            "kind": self.kind,
            "figure": self.figure,
            "direction": self.direction,
            "scope": self.scope,
            "threshold": self.threshold,
            "precision": self.precision,
            "source": self.source,
            "status": self.status,
            "reason": self.reason,
            "worst": None if worst is None else worst.to_dict(),
            "results": [r.to_dict() for r in self.results],
        }


@dataclass
class CheckReport:
    """Every rule's outcome for one input, and the figures a later run can use as its baseline."""

    path: str | None
    kind: str
    outcomes: list[RuleOutcome]
    config: CheckConfig
    figures: dict[str, Any]
    disabled: list[str]
    not_applicable: list[str]
    baseline: str | None = None
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    @property
    def failed(self) -> list[RuleOutcome]:
        return [o for o in self.outcomes if o.status == "fail"]

    @property
    def status(self) -> Literal["pass", "fail"]:
        return "fail" if self.failed else "pass"

    @property
    def exit_code(self) -> ExitCode:
        return ExitCode.CHECK_FAILED if self.failed else ExitCode.OK

    def verdict(self) -> str:
        n = len(self.outcomes)
        skipped = sum(1 for o in self.outcomes if o.status == "skip")
        skip_text = f", {skipped} skipped" if skipped else ""
        if self.failed:
            names = ", ".join(o.name for o in self.failed)
            return f"FAIL: {len(self.failed)} of {n} rules failed ({names}){skip_text}"
        return f"PASS: {n - skipped} of {n} rules passed{skip_text}"

    def frame(self) -> Any:
        """One row per (rule, layer) result, as a pandas DataFrame (:func:`moediag.frames.check_frame`)."""
        from moediag.frames import check_frame

        return check_frame(self)

    def to_dict(self) -> dict[str, Any]:
        from moediag import __version__

        return {
            "meta": {
                "format": CHECK_JSON_FORMAT,
                "moediag_version": __version__,
                "command": "check",
                "kind": self.kind,
                "path": self.path,
                "created": self.created,
                "config": self.config.to_dict(),
                "config_sources": dict(self.config.sources),
                "config_file": self.config.file,
                "baseline": self.baseline,
            },
            "status": self.status,
            "exit_code": int(self.exit_code),
            "verdict": self.verdict(),
            "rules": [o.to_dict() for o in self.outcomes],
            "disabled": list(self.disabled),
            "not_applicable": list(self.not_applicable),
            "figures": self.figures,
        }


# --------------------------------------------------------------------------------------------------
# Running the rules
# --------------------------------------------------------------------------------------------------


def input_kind(doc: Mapping[str, Any]) -> str:
    return str((doc.get("meta") or {}).get("kind") or "trace")


def selected_layers(doc: Mapping[str, Any], config: CheckConfig) -> list[Mapping[str, Any]]:
    """The rows of the layers the config selects; raises ConfigValueError for a layer the input lacks."""
    rows = [r for r in doc.get("layers") or [] if not r.get("mtp")]
    wanted = config["layers"]
    if wanted is None:
        return rows
    have = {int(r["layer"]) for r in rows}
    missing = [x for x in wanted if x not in have]
    if missing:
        raise ConfigValueError(
            f"layer {missing[0]} is not in the input (layers: {', '.join(map(str, sorted(have))) or 'none'})"
        )
    return [r for r in rows if int(r["layer"]) in wanted]


def _aggregate(values: list[float], how: str) -> float:
    if how == "sum":
        return float(sum(values))
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    return sum(values) / len(values)


def model_paths(doc: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    """Per-path accuracy rows: ``summary.paths`` (a list of path windows, each with ``frequent`` rows) or a
    top-level ``paths``; None when the input has none."""
    paths = doc.get("paths")
    if paths is None:
        paths = (doc.get("summary") or {}).get("paths")
    if paths is None:
        return None
    windows = [paths] if isinstance(paths, Mapping) else list(paths)
    rows: list[Mapping[str, Any]] = []
    for window in windows:
        if isinstance(window, Mapping) and "frequent" in window:
            rows.extend(window["frequent"] or [])
        elif isinstance(window, Mapping):
            rows.append(window)
    return rows


def rule_figures(
    rule: Rule, doc: Mapping[str, Any], rows: list[Mapping[str, Any]], config: CheckConfig
) -> tuple[dict[int, tuple[float | None, str | None]], tuple[float | None, str | None]]:
    """A rule's figure per selected layer and for the model (value or the reason it is absent)."""
    if rule.model_only:
        return {}, _path_accuracy(model_paths(doc), config)
    per_layer = {int(row["layer"]): rule.extract(row, config) for row in rows}
    values = [v for v, _ in per_layer.values() if v is not None]
    if values:
        model: tuple[float | None, str | None] = (_aggregate(values, rule.model_agg), None)
    elif per_layer:
        model = (None, next(iter(per_layer.values()))[1])
    else:
        model = (None, "the input has no MoE layers")
    return per_layer, model


def _judge(
    name: str,
    scope: Scope,
    layer: int | None,
    value: float | None,
    reason: str | None,
    threshold: float,
    direction: Direction,
    precision: int,
    strict: bool,
) -> RuleResult:
    if value is None:
        if strict:
            return RuleResult(
                name,
                scope,
                layer,
                None,
                threshold,
                "fail",
                f"skipped, failed by strict: {reason}",
                direction,
                precision,
            )
        return RuleResult(name, scope, layer, None, threshold, "skip", reason, direction, precision)
    status: Status = "fail" if should_fail(value, threshold, direction, precision) else "pass"
    return RuleResult(name, scope, layer, value, threshold, status, None, direction, precision)


def run_checks(
    doc: Mapping[str, Any],
    config: CheckConfig | None = None,
    baseline: Mapping[str, Any] | None = None,
    baseline_name: str | None = None,
) -> CheckReport:
    """Evaluate every enabled rule on an ``inspect --json`` document (and against a baseline's figures).

    A rule is *disabled* when its threshold is off. A rule enabled only by default whose input kind does
    not match (redundant pairs on a trace) is *not applicable* and left out; set explicitly, it runs and
    is skipped with the reason. ``baseline`` is the dict :func:`baseline_figures` returns.
    """
    config = config or CheckConfig()
    kind = input_kind(doc)
    rows = selected_layers(doc, config)
    scope: Scope = config["scope"]
    strict = bool(config["strict"])
    outcomes: list[RuleOutcome] = []
    disabled: list[str] = []
    not_applicable: list[str] = []
    figures: dict[str, Any] = {"scope": scope, "model": {}, "layers": {}}
    for rule in RULES:
        per_layer, model = rule_figures(rule, doc, rows, config)
        figures["model"][rule.name] = model[0]
        for layer, (value, _) in per_layer.items():
            figures["layers"].setdefault(str(layer), {})[rule.name] = value
        threshold = config[rule.name]
        if threshold is None:
            disabled.append(rule.name)
            continue
        if kind not in rule.kinds and not config.explicit(rule.name):
            not_applicable.append(rule.name)
            continue
        precision = config.precision(rule)
        rule_scope: Scope = "model" if rule.model_only else scope
        if rule_scope == "model":
            results = [
                _judge(
                    rule.name, "model", None, model[0], model[1], threshold, rule.direction, precision, strict
                )
            ]
        else:
            results = [
                _judge(rule.name, "layer", layer, value, reason, threshold, rule.direction, precision, strict)
                for layer, (value, reason) in per_layer.items()
            ]
            if not results:
                results = [
                    _judge(
                        rule.name,
                        "layer",
                        None,
                        None,
                        "the input has no MoE layers",
                        threshold,
                        rule.direction,
                        precision,
                        strict,
                    )
                ]
        outcomes.append(
            RuleOutcome(
                rule.name,
                rule.figure,
                rule.direction,
                rule_scope,
                threshold,
                precision,
                results,
                config.sources[rule.name],
            )
        )
    if baseline is not None:
        outcomes.extend(compare_baseline(figures, baseline, config, kind))
    return CheckReport(
        str((doc.get("meta") or {}).get("path")) if (doc.get("meta") or {}).get("path") else None,
        kind,
        outcomes,
        config,
        figures,
        disabled,
        not_applicable,
        baseline_name,
    )


# --------------------------------------------------------------------------------------------------
# Baseline
# --------------------------------------------------------------------------------------------------


def baseline_figures(doc: Mapping[str, Any], config: CheckConfig) -> dict[str, Any]:
    """The figures of a previous run: a ``check --format json`` document (its ``figures``) or an
    ``inspect --json`` document (recomputed here with the current settings). Raises ConfigValueError
    for anything else."""
    meta = doc.get("meta") if isinstance(doc, Mapping) else None
    if not isinstance(meta, Mapping):
        raise ConfigValueError("not a moediag JSON document (no 'meta')")
    if meta.get("command") == "check":
        figures = doc.get("figures")
        if not isinstance(figures, Mapping) or "model" not in figures or "layers" not in figures:
            raise ConfigValueError("check document without 'figures'")
        return dict(figures) | {"kind": input_kind(doc)}
    if "layers" not in doc:
        raise ConfigValueError("neither a 'check --format json' nor an 'inspect --json' document")
    everything = CheckConfig(values=dict(config.values) | {"layers": None}, sources=dict(config.sources))
    rows = list(doc.get("layers") or [])
    result: dict[str, Any] = {"model": {}, "layers": {}, "kind": input_kind(doc)}
    for rule in RULES:
        per_layer, model = rule_figures(rule, doc, rows, everything)
        result["model"][rule.name] = model[0]
        for layer, (value, _) in per_layer.items():
            result["layers"].setdefault(str(layer), {})[rule.name] = value
    return result


class BaselineMismatchError(ConfigValueError):
    """The baseline does not describe the same kind of input or the same MoE layers."""


def _check_baseline_matches(
    current: Mapping[str, Any], baseline: Mapping[str, Any], config: CheckConfig, kind: str
) -> None:
    base_kind = baseline.get("kind")
    if base_kind and base_kind != kind:
        raise BaselineMismatchError(f"it holds a {base_kind}'s figures, but the input is a {kind}")
    if config["scope"] == "model":
        return
    have = {str(x) for x in current["layers"]}
    base = {str(x) for x in baseline.get("layers") or {}}
    missing = sorted(have - base, key=int)
    extra = sorted(base - have, key=int) if config["layers"] is None else []
    if missing or extra:
        raise BaselineMismatchError(
            f"it covers layers {', '.join(sorted(base, key=int)) or 'none'} and the input "
            f"{', '.join(sorted(have, key=int)) or 'none'}: a baseline must come from the same model "
            "(select common layers with --layers)"
        )


def compare_baseline(
    current: Mapping[str, Any], baseline: Mapping[str, Any], config: CheckConfig, kind: str = "trace"
) -> list[RuleOutcome]:
    """One ``baseline.<rule>`` outcome per figure present in both runs: it fails when the figure is worse
    than the baseline's by more than ``baseline_margin`` (both rounded to the rule's precision first).

    Raises :class:`BaselineMismatchError` when the baseline is of another kind of input or covers other
    MoE layers (a baseline from another model would otherwise compare only the layers in common).
    """
    _check_baseline_matches(current, baseline, config, kind)
    margin = float(config["baseline_margin"])
    scope: Scope = config["scope"]
    outcomes = []
    for rule in RULES:
        base_precision = int(config["precision"]) if config["precision"] is not None else rule.precision
        # counts (precision 0) stay whole: the margin is whole experts or pairs, rounded down
        counts = rule.precision == 0 and config["precision"] is None
        allowed = float(math.floor(margin)) if counts else margin
        precision = base_precision if counts else max(base_precision, decimals(margin))
        pairs: list[tuple[int | None, float | None, float | None]] = []
        if scope == "model" or rule.model_only:
            pairs.append(
                (None, current["model"].get(rule.name), (baseline.get("model") or {}).get(rule.name))
            )
        else:
            base_layers = baseline.get("layers") or {}
            for layer, values in current["layers"].items():
                base = (base_layers.get(str(layer)) or {}).get(rule.name)
                pairs.append((int(layer), values.get(rule.name), base))
        results = []
        for layer, value, base in pairs:
            if value is None or base is None:
                continue
            base_rounded, _ = round_figure(float(base), precision)
            limit = base_rounded + allowed if rule.direction == "max" else base_rounded - allowed
            limit, _ = round_figure(limit, precision)
            result = _judge(
                f"baseline.{rule.name}",
                "model" if layer is None else "layer",
                layer,
                float(value),
                None,
                limit,
                rule.direction,
                precision,
                False,
            )
            result.reason = f"baseline {round_figure(float(base), precision)[1]}, margin {allowed:g}"
            results.append(result)
        if results:
            outcomes.append(
                RuleOutcome(
                    f"baseline.{rule.name}",
                    f"{rule.figure} vs baseline",
                    rule.direction,
                    "model" if rule.model_only else scope,
                    None,
                    precision,
                    results,
                    config.sources["baseline_margin"],
                    "baseline",
                )
            )
    return outcomes
