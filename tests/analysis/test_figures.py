"""The figure table (moediag/analysis/figures.py) is the one source of `moediag explain`, the terminal
legends and docs/metrics.md's "Figure reference"; these tests keep them and the check rules in step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moediag.analysis.figures import FIGURES, legend, lookup, markdown, rule_text
from moediag.checks import RULES, RULES_BY_NAME
from moediag.cli import app
from moediag.render.terminal.trace_table import LAYER_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_docs_metrics_section_is_generated_from_the_table() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = "## Figure reference" + text.split("## Figure reference", 1)[1]
    assert section == markdown(), (
        "regenerate: python -m moediag.analysis.figures (replace the section in metrics.md)"
    )


def test_every_key_the_docs_define_is_in_the_table() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text().split("## Figure reference", 1)[0]
    keys = set()
    for line in text.splitlines():
        m = re.match(r"\| (`[^|]+`) \|", line)
        if m:
            keys |= {k.removeprefix("summary.") for k in re.findall(r"`([a-z_.]+)`", m.group(1))}
    # explained inside another figure's entry (min_mean with max_mean, margin_* with margin_median, ...)
    keys -= {"group_score", "max", "topk_sum", "score_function", "softmax", "topk_softmax", "sigmoid",
             "router_entropy_norm", "min_mean", "margin_mean", "margin_p10", "margin_below",
             "consecutive_same_baseline"}  # fmt: skip
    known = {f.key for f in FIGURES}
    assert keys - known == set()


def test_every_check_rule_is_explained_with_its_own_threshold() -> None:
    explained = {f.rule for f in FIGURES if f.rule}
    assert explained == {r.name for r in RULES}
    vio = lookup("MaxVio")
    assert vio is not None and rule_text(vio) == (
        f"check rule max_vio (--max-vio): fails above {RULES_BY_NAME['max_vio'].key.default:g} by default"
    )
    cold = lookup("cold")
    assert cold is not None and rule_text(cold) is not None and "off by default" in rule_text(cold)


NAMES = [("max_vio", "max_vio"), ("MaxVio", "max_vio"), ("conf", "confidence"), ("max-cv", "cv"),
         ("--min-entropy", "entropy_norm"), ("H", "entropy_norm")]  # fmt: skip


@pytest.mark.parametrize(("name", "key"), NAMES)
def test_lookup_by_key_name_column_rule_or_flag(name: str, key: str) -> None:
    info = lookup(name)
    assert info is not None and info.key == key


def test_every_terminal_column_has_a_legend() -> None:
    text = legend(list(LAYER_COLUMNS))
    by_column = {f.column for f in FIGURES if f.column}
    for column in LAYER_COLUMNS[1:]:
        assert column in by_column, f"column {column!r} is not in moediag/analysis/figures.py"
    for abbreviation in ("H", "conf", "aux", "cold", "dead", "drop", "same"):
        assert f"{abbreviation} = " in text


def test_explain_prints_definition_source_range_and_rule() -> None:
    result = runner.invoke(app, ["explain", "max_vio"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    for label in ("means", "from", "healthy", "check", "flags", "docs"):
        assert re.search(rf"^{label}\s", result.stdout, re.M), label
    assert "--max-vio" in result.stdout and "2408.15664" in result.stdout


def test_explain_lists_every_figure_and_speaks_json() -> None:
    listing = runner.invoke(app, ["explain"], env={"COLUMNS": "120"})
    assert listing.exit_code == 0
    for f in FIGURES:
        assert f.key in listing.stdout
    doc = json.loads(runner.invoke(app, ["explain", "conf", "--json"]).stdout)
    assert doc["key"] == "confidence" and doc["column"] == "conf" and doc["check"] is None
    every = json.loads(runner.invoke(app, ["explain", "--json"]).stdout)
    assert [f["key"] for f in every["figures"]] == [f.key for f in FIGURES]


def test_explain_an_unknown_figure_is_one_line_with_a_suggestion() -> None:
    result = runner.invoke(app, ["explain", "max_vioo"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "moediag: error: no figure called 'max_vioo'; did you mean max_vio or max_mean or aux_loss?"
    ]
