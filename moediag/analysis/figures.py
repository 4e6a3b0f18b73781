"""Every figure moediag reports, in one table: what it means, where it comes from, its healthy range,
the terminal column that shows it and the check rule that gates it.

``moediag explain [FIGURE]`` prints from this table, the terminal tables take their column legends from
it, and the "Figure reference" section of docs/metrics.md is generated from it
(``python -m moediag.analysis.figures > section.md``; a test checks the two agree). Thresholds are not copied
here: :func:`rule_text` reads them from :data:`moediag.checks.RULES`, so the gate and the explanation
cannot drift.

>>> lookup("conf").key
'confidence'
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FigureInfo:
    """One figure. ``key`` is its JSON key (``inspect --json``), ``column`` its terminal heading."""

    key: str
    name: str
    definition: str
    source: str
    healthy: str
    column: str | None = None
    rule: str | None = None
    flags: tuple[str, ...] = ()
    section: str = "Load and imbalance"

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["flags"] = list(self.flags)
        doc["check"] = rule_text(self)
        return doc


_COUNTS = "expert loads c_i: recorded topk_ids, else the top-k of the router logits"
_LOGITS = "router logits (layers.L.router_logits)"

FIGURES: tuple[FigureInfo, ...] = (
    FigureInfo(
        "load",
        "load",
        "c_i, the top-k assignments each expert received (A = sum c_i = k T unless slots are empty).",
        _COUNTS,
        "A/E each when balanced.",
        column="count",
    ),
    FigureInfo(
        "load_share",
        "load share",
        "c_i / A, the share of all assignments an expert received.",
        _COUNTS,
        "1/E each when balanced.",
        column="share",
    ),
    FigureInfo(
        "max_vio",
        "MaxVio",
        "max_i c_i / (A/E) - 1: how far the busiest expert is above its fair share.",
        f"{_COUNTS}; DeepSeek loss-free balancing (arXiv 2408.15664, Eq. 4).",
        "0 is balanced; above 1 the busiest expert takes more than twice its fair share.",
        column="MaxVio",
        rule="max_vio",
        flags=("--max-vio",),
    ),
    FigureInfo(
        "cv",
        "CV",
        "std(c) / mean(c), population standard deviation: the spread of expert loads.",
        _COUNTS,
        "0 is balanced; sqrt(E - 1) when one expert takes everything.",
        column="CV",
        rule="max_cv",
        flags=("--max-cv",),
    ),
    FigureInfo(
        "gini",
        "Gini",
        "sum_ij abs(c_i - c_j) / (2 E^2 mean c): inequality of expert loads.",
        _COUNTS,
        "0 is balanced; (E - 1)/E when one expert takes all.",
    ),
    FigureInfo(
        "max_mean",
        "max / mean",
        "max_i c_i / mean c (min_mean: min_i c_i / mean c).",
        _COUNTS,
        "1 is balanced.",
    ),
    FigureInfo(
        "entropy_norm",
        "load entropy (normalised)",
        "H(c / A) / log E: how evenly assignments spread over the experts.",
        _COUNTS,
        "1 is perfectly even; 0 when one expert takes everything.",
        column="H",
        rule="min_entropy",
        flags=("--min-entropy",),
    ),
    FigureInfo(
        "effective_experts",
        "effective experts",
        "exp H(c / A): the number of equally used experts with the same entropy.",
        _COUNTS,
        "E when balanced.",
    ),
    FigureInfo(
        "dead_experts",
        "dead experts",
        "Experts that received no assignment over the whole trace (per layer; the summary sums layers).",
        _COUNTS,
        "none; any dead expert is wasted capacity (or a too-short trace: see min_expected_load).",
        column="dead",
        rule="max_dead",
        flags=("--max-dead",),
    ),
    FigureInfo(
        "cold_experts",
        "cold experts",
        "Experts whose share c_i / A is below eps / E (--cold-eps, default 0.1); includes the dead ones.",
        _COUNTS,
        "none.",
        column="cold",
        rule="max_cold",
        flags=("--max-cold", "--cold-eps"),
    ),
    FigureInfo(
        "aux_loss",
        "aux loss",
        "E sum_i (c_i / A) P_i with P_i the mean router probability of expert i: the Switch / Megatron / "
        "DeepSeek load-balancing loss without its coefficient.",
        f"{_COUNTS} and {_LOGITS}",
        "1 is balanced; trained models usually sit at 1.0-1.3; E when one expert takes all.",
        column="aux",
        rule="max_aux_loss",
        flags=("--max-aux-loss",),
        section="Losses",
    ),
    FigureInfo(
        "aux_loss_unbiased",
        "unbiased aux loss",
        "aux_loss with the loads of the plain top-k of the scores: no selection bias, no group limits "
        "(what Megatron-Core logs as load_balancing_loss, divided by its coefficient).",
        f"{_LOGITS}",
        "1 is balanced; compare it with a Megatron run's logged loss; aux_loss says how balanced the "
        "experts that ran are.",
        column="aux*",
        rule="max_aux_loss_unbiased",
        flags=("--max-aux-loss-unbiased",),
        section="Losses",
    ),
    FigureInfo(
        "seq_aux_loss",
        "sequence aux loss",
        "aux_loss per sequence (a run of equal tokens.sequence_ids), then the mean over sequences "
        "(DeepSeek-V2/V3 seq_aux).",
        f"{_LOGITS} and tokens.sequence_ids",
        "1 is balanced within every sequence.",
        section="Losses",
    ),
    FigureInfo(
        "hf_aux_loss",
        "HF aux loss",
        "transformers' load_balancing_loss_func over every layer's logits pooled along tokens.",
        _LOGITS,
        "k is balanced (it is k x aux_loss on one softmax layer).",
        section="Losses",
    ),
    FigureInfo(
        "z_loss",
        "z-loss",
        "mean_t (logsumexp z_t)^2, the ST-MoE router z-loss: how large the router logits are.",
        _LOGITS,
        "no fixed range: it grows with the logits' scale; a rising z-loss during training warns of "
        "router logits drifting large (numerical trouble in bf16).",
        column="z-loss",
        section="Losses",
    ),
    FigureInfo(
        "router_entropy",
        "router entropy",
        "mean_t H(p_t) in nats (router_entropy_norm divides by log E): how undecided each token's router is.",
        _LOGITS,
        "between 0 (every token certain) and log E (uniform scores); trained routers sit well below log E.",
        section="Router behaviour",
    ),
    FigureInfo(
        "confidence",
        "router confidence",
        "mean_t max_i p_t,i: the mean probability of each token's first choice.",
        _LOGITS,
        "1/E for a uniform router, 1 for a certain one; no single healthy value: read it with the margin.",
        column="conf",
        section="Router behaviour",
    ),
    FigureInfo(
        "margin_median",
        "top-k margin",
        "per token, the lowest chosen selection score minus the highest unchosen one (s_(k) - s_(k+1)); "
        "the median (margin_mean, margin_p10 likewise) from a 200-bin histogram on [0, 1].",
        _LOGITS,
        "larger is more stable; a large share below 0.01 (margin_below) means routing flips under small "
        "noise (try replay --noise).",
        section="Router behaviour",
    ),
    FigureInfo(
        "drop_rate_total",
        "drop rate",
        "the share of assignments a capacity limit C = ceil(CF k n_g / E) per group (at least "
        "--min-capacity) would drop, at capacity factor CF; the same under every drop policy, which only "
        "decides which tokens drop (drop_rate[policy] repeats it per policy).",
        f"{_COUNTS}, per capacity group (a sequence, or --capacity-group tokens)",
        "0 is no loss; a few percent at CF 1.25 is common; the terminal column shows CF 1.0.",
        column="drop",
        rule="max_drop_rate",
        flags=("--max-drop-rate", "--capacity-factor", "--min-capacity", "--capacity-group"),
        section="Capacity and dropping",
    ),
    FigureInfo(
        "consecutive_same_rate",
        "same expert as the previous token",
        "the share of consecutive token pairs (same sequence) whose first choice is the same expert "
        "(Mixtral, section 5).",
        "first choices (topk_ids or logits) and tokens.sequence_ids",
        "near consecutive_same_baseline (sum_i q_i^2; 1/E when uniform) when routing is not sticky; well "
        "above it, experts follow syntax or position.",
        column="same",
        section="Temporal and co-activation",
    ),
    FigureInfo(
        "coactivation",
        "co-activation",
        "P(j in top-k | i in top-k) from N[i][j], the tokens with both i and j chosen (inspect --json "
        "--detail; plot --kind coactivation).",
        "per-token top-k sets",
        "near (k-1)/(E-1) everywhere; a bright pair is chosen together more than chance.",
        section="Temporal and co-activation",
    ),
    FigureInfo(
        "experts_touched",
        "experts touched",
        "per decode batch size B (1, 8, 32, 128): the mean share of a layer's experts that B consecutive "
        "tokens chose, beside uniform routing's 1 - (1 - k/E)^B (docs/compare.md).",
        "per-token top-k sets",
        "at or below the uniform curve: fewer experts touched means fewer weight bytes read a decode step; "
        "far below it, routing is concentrated (check MaxVio).",
        section="Temporal and co-activation",
    ),
    FigureInfo(
        "step_load",
        "per-step load",
        "expert counts per tokens.step (or per row of expert_counts), with MaxVio and CV per step.",
        "tokens.step or per-step layers.L.expert_counts",
        "flat or falling MaxVio over steps; a rise shows balance degrading during training.",
        section="Temporal and co-activation",
    ),
    FigureInfo(
        "expert_accuracy",
        "expert accuracy",
        "the share of correct predictions among tokens whose first choice is the expert (top-1 "
        "attribution), with a Wilson 95% interval and its token count n.",
        "tokens.correct and first choices",
        "close to the layer's overall accuracy; an interval wholly below it flags the expert.",
        column="accuracy",
        rule="min_accuracy",
        flags=("--min-accuracy", "--accuracy-min-tokens"),
        section="Accuracy",
    ),
    FigureInfo(
        "path_accuracy",
        "path accuracy",
        "the accuracy of tokens that took the same routing path (first choice in every layer of a window), "
        "for paths with enough tokens; the overall figure is over every token of the window.",
        "tokens.correct and first choices of every layer",
        "close to the overall accuracy; a path whose interval lies wholly below it underperforms.",
        rule="min_path_accuracy",
        flags=("--min-path-accuracy", "--path-window"),
        section="Accuracy",
    ),
    FigureInfo(
        "redundant_pairs",
        "redundant expert pairs",
        "pairs of experts whose weights have cosine similarity above --redundancy-threshold (0.99).",
        "checkpoint expert weights",
        "none; duplicates waste parameters (often an upcycling or initialisation fault).",
        rule="max_redundant_pairs",
        flags=("--max-redundant-pairs", "--redundancy-threshold"),
        section="Checkpoints",
    ),
    FigureInfo(
        "nonfinite",
        "non-finite values",
        "NaN or infinite values in a layer's router and biases (values), and experts with one among the "
        "weight rows read (one each).",
        "checkpoint router, bias and expert weights (after dequantisation)",
        "zero; any is a broken tensor (a NaN scale, an overflowed update); the figures it feeds are null.",
        rule="max_nonfinite",
        flags=("--max-nonfinite",),
        section="Checkpoints",
    ),
    FigureInfo(
        "bias_spread",
        "selection-bias spread",
        "max_i b_i - min_i b_i of a layer's selection bias (DeepSeek-V3 e_score_correction_bias).",
        "layers.L.selection_bias in a trace, or the checkpoint's bias",
        "small next to the score spread; a wide spread means the bias is doing heavy balancing.",
        rule="max_bias_spread",
        flags=("--max-bias-spread",),
        section="Checkpoints",
    ),
)

BY_KEY: dict[str, FigureInfo] = {f.key: f for f in FIGURES}


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-/.]+", "", text.lower())


def lookup(name: str) -> FigureInfo | None:
    """The figure called ``name``: its key (``max_vio``), name (``MaxVio``), terminal column (``conf``),
    check rule (``max_cv``) or a flag (``--max-cv``), in any case, with dashes or underscores."""
    wanted = _norm(name)
    for f in FIGURES:
        names = [f.key, f.name, f.column or "", f.rule or "", *f.flags]
        if wanted in {_norm(n) for n in names if n}:
            return f
    return None


def suggest(name: str) -> list[str]:
    import difflib

    return difflib.get_close_matches(name.lower(), [f.key for f in FIGURES], n=3, cutoff=0.5)


def rule_text(figure: FigureInfo) -> str | None:
    """How ``moediag check`` uses the figure, with its default threshold from the rule table."""
    if figure.rule is None:
        return None
    from moediag.checks import RULES_BY_NAME

    rule = RULES_BY_NAME[figure.rule]
    default = rule.key.default
    word = "above" if rule.direction == "max" else "below"
    when = "off by default" if default is None else f"fails {word} {default:g} by default"
    return f"check rule {rule.name} ({rule.key.flag}): {when}"


def legend(columns: list[str]) -> str:
    """``H = load entropy (normalised); conf = router confidence; ...`` for the terminal columns given."""
    by_column = {f.column: f for f in FIGURES if f.column}
    parts = [f"{c} = {by_column[c].name}" for c in columns if c in by_column and by_column[c].name != c]
    return "; ".join(parts)


def markdown() -> str:
    """The generated "Figure reference" section of docs/metrics.md."""
    lines = [
        "## Figure reference",
        "",
        "Generated from `moediag/analysis/figures.py` (`python -m moediag.analysis.figures`); "
        "`moediag explain FIGURE` prints "
        "the same. Thresholds come from the check rules ([checks.md](checks.md)).",
        "",
        "| key | column | means | healthy | check |",
        "|---|---|---|---|---|",
    ]
    for f in FIGURES:
        column = f"`{f.column}`" if f.column else ""
        check = rule_text(f) or ""
        lines.append(f"| `{f.key}` | {column} | {f.definition} | {f.healthy} | {check} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")
