"""Every output format of a check report: the enum is exhaustive, JUnit parses, annotations escape."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from moediag.checks import CheckConfig, CheckReport, run_checks
from moediag.render.check_formats import RENDERERS, OutputFormat, render


def row(layer: int, **over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "layer": layer,
        "num_experts": 8,
        "top_k": 2,
        "tokens": 1000,
        "source": "topk_ids",
        "assignments": 2000,
        "max_vio": 0.2,
        "cv": 0.1,
        "entropy_norm": 0.99,
        "dead_experts": [],
        "cold_experts": [],
        "aux_loss": None,
        "drop_rate": None,
    }
    r.update(over)
    return r


def report(fail: bool = True) -> CheckReport:
    layers = [row(0), row(1, max_vio=2.5 if fail else 0.3, dead_experts=[1, 2] if fail else [])]
    doc = {"meta": {"kind": "trace", "path": "runs/a,b:c.safetensors"}, "summary": {}, "layers": layers}
    return run_checks(doc, CheckConfig.from_values({"max_aux_loss": 1.5}))


def test_every_format_has_a_renderer() -> None:
    assert set(RENDERERS) == set(OutputFormat)
    for fmt in OutputFormat:
        for r in (report(True), report(False)):
            text = render(r, fmt)
            assert isinstance(text, str) and text.endswith("\n")
            assert "max_vio" in text or (fmt is OutputFormat.GITHUB and r.status == "pass")


def test_json() -> None:
    doc = json.loads(render(report(), "json"))
    assert doc["status"] == "fail" and doc["exit_code"] == 1
    vio = next(r for r in doc["rules"] if r["rule"] == "max_vio")
    assert vio["status"] == "fail" and vio["worst"] == {
        "layer": 1,
        "value": 2.5,
        "shown": "2.500",
        "threshold": 1.0,
        "status": "fail",
        "reason": None,
    }


def test_junit_has_one_testcase_per_rule() -> None:
    r = report()
    root = ET.fromstring(render(r, OutputFormat.JUNIT))
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == [o.name for o in r.outcomes]
    assert len(cases) == len({c.get("name") for c in cases})
    failed = {c.get("name"): c.find("failure") for c in cases if c.find("failure") is not None}
    assert set(failed) == {"max_vio", "max_dead"}
    node = failed["max_vio"]
    assert node is not None and node.get("message") == "layer 1: max_vio 2.500 > 1.000"
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    assert skipped == ["max_aux_loss"]
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "2" and suite.get("skipped") == "1"
    assert suite.get("tests") == str(len(cases))


def test_markdown_table() -> None:
    text = render(report(), OutputFormat.MARKDOWN)
    assert text.startswith("### moediag check: FAIL")
    assert "| `max_vio` | layer | 2.500 (layer 1) | <= 1.000 | **FAIL** | fails in layer 1 |" in text


def test_github_annotations_escape_properties() -> None:
    lines = render(report(), OutputFormat.GITHUB).splitlines()
    errors = [x for x in lines if x.startswith("::error ")]
    assert errors[0] == (
        "::error file=runs/a%2Cb%3Ac.safetensors,title=moediag check max_vio::layer 1: max_vio 2.500 > 1.000"
    )
    assert any(x.startswith("::warning ") and "needs router logits" in x for x in lines)
    assert lines[-1].startswith("::notice title=moediag check::FAIL")
    assert not [x for x in render(report(False), "github").splitlines() if x.startswith("::error")]


def test_table_shows_value_and_threshold_as_compared() -> None:
    text = render(report(), OutputFormat.TABLE)
    assert "FAIL" in text.splitlines()[0]
    assert "2.500 (layer 1)" in text and "<= 1.000" in text
    assert max(len(x) for x in text.splitlines()) <= 100


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_formats_by_name(fmt: OutputFormat) -> None:
    assert OutputFormat(fmt.value) is fmt


def test_narrow_table_lists_details_after_it() -> None:
    """At 80 columns the detail column would wrap a few characters a line: details follow the table."""
    from moediag.render.terminal.check_table import check_table_text

    narrow, wide = check_table_text(report(), width=80), check_table_text(report(), width=140)
    assert "detail" not in narrow.splitlines()[2] and "detail" in wide
    failing = [line for line in narrow.splitlines() if line.startswith("  max_vio: ")]
    assert len(failing) == 1 and "layer" in failing[0]
    assert max(len(line) for line in narrow.splitlines()) <= 80
