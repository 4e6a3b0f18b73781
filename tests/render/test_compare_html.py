"""The compare section of the HTML report (``moediag compare A B --html FILE``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moediag.cli import app
from moediag.compare import compare
from moediag.render.html.compare import compare_verdict, render_compare_report
from tests.render._traces import report_trace

FIXED = {"created": "2000-01-01T00:00:00+00:00", "version": "0.0.0"}


def assert_self_contained(page: str) -> None:
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""\b(src|href)\s*=\s*["']?//""", page)
    assert not re.search(r"""\bsrc\s*=\s*["'](?!data:)""", page)
    assert "<link" not in page and "@import" not in page


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("cmp")
    return report_trace(d / "a.safetensors", seed=0), report_trace(d / "b.safetensors", seed=1)


def test_section_table_and_figure(traces: tuple[Path, Path]) -> None:
    a, b = traces
    page = render_compare_report(compare(a, b, chunk_tokens=256), **FIXED)
    assert '<section id="compare">' in page and "Compare: A against B" in page
    table = re.search(r'<table class="data sortable compare">.*?</table>', page, re.S)
    assert table is not None
    for head in ("top-1 agreement", "top-k overlap", "load JS", "MaxVio A → B", "CV A → B"):
        assert head in table.group(0)
    assert len(re.findall(r"<tr id=\"compare-layer-", page)) == 3
    assert page.count("<svg") == 1 and "Jensen-Shannon" in page
    assert "load shifted most at layer" in page.lower() and "router saturation: top-k overlap mean" in page
    assert "against baseline k/E = 2/8 = 0.250" in page
    assert "Accuracy shift per expert" in page
    assert_self_contained(page)


def test_against_itself_js_0_overlap_1(traces: tuple[Path, Path]) -> None:
    a, _ = traces
    result = compare(a, a, chunk_tokens=256)
    page = render_compare_report(result, figures=False, **FIXED)
    text, vclass = compare_verdict(result)
    assert vclass == "ok" and "did not shift" in text and "top-k overlap mean 1.000" in text
    rows = re.findall(r'<tr id="compare-layer-\d+">(.*?)</tr>', page, re.S)
    assert len(rows) == 3
    for row in rows:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        # layer, top-1 agreement, top-k overlap, k/E, load JS, ...
        assert cells[1] == "1.000" and cells[2] == "1.000" and cells[4] == "0.000"
        assert "(+0.00)" in cells[5] and "(+0.00)" in cells[6]
    assert "No expert's accuracy shifted." in page
    assert_self_contained(page)


def test_shifted_experts_listed() -> None:
    row = {
        "layer": 3,
        "num_experts": 4,
        "top_k": 1,
        "load_js_divergence": 0.2,
        "topk_overlap_baseline": 0.25,
        "expert_accuracy_shift": [
            {"expert": 0, "shifted": False, "delta": 0.01},
            {
                "expert": 2,
                "shifted": True,
                "accuracy_a": 0.9,
                "tokens_a": 100,
                "accuracy_b": 0.5,
                "tokens_b": 90,
                "delta": -0.4,
                "delta_ci_low": -0.5,
                "delta_ci_high": -0.28,
            },
        ],
    }
    doc = {
        "meta": {"inputs": "traces", "a": "x/a", "b": "y/b"},
        "summary": {
            "load_js_divergence": {"mean": 0.2, "worst": 0.2, "worst_layer": 3},
            "tokens_match": False,
            "accuracy_a": 0.9,
            "accuracy_b": 0.5,
            "accuracy_delta": -0.4,
            "shifted_experts": 1,
        },
        "layers": [row],
    }
    page = render_compare_report(doc, figures=False, **FIXED)
    shifted = re.search(r'<table class="data sortable shifted">.*?</table>', page, re.S)
    assert shifted is not None and shifted.group(0).count("<tr>") == 2  # header + expert 2 only
    assert "-0.400" in shifted.group(0) and "[-0.500, -0.280]" in shifted.group(0)
    assert 'class="verdict warn"' in page and "1 expert(s) shifted" in page
    assert "router saturation not measured" in page


def test_cli_html_writes_the_page(traces: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = traces
    out = tmp_path / "sub" / "cmp.html"
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--html", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<section id="compare">' in page
    assert_self_contained(page)
    assert "wrote" in result.stderr
    assert [p.name for p in out.parent.iterdir()] == ["cmp.html"]  # no temp file left


def test_cli_bad_input_leaves_no_file(traces: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = traces
    other = report_trace(tmp_path / "e4.safetensors", experts=4)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a trace")
    runner = CliRunner()
    for args in ([str(a), str(other)], [str(a), str(bad)], [str(a), str(tmp_path / "missing.safetensors")]):
        out = tmp_path / "out.html"
        result = runner.invoke(app, ["compare", *args, "--html", str(out)])
        assert result.exit_code == 2, result.output
        assert not out.exists()
        assert not list(tmp_path.glob(".out.html.*"))
    result = runner.invoke(app, ["compare", str(a), str(a), "--html", str(tmp_path / "out.png")])
    assert result.exit_code == 2 and not (tmp_path / "out.png").exists()


def test_path_shifts_listed() -> None:
    """Compare's top-level ``paths`` (accuracy shift per full-depth path) get their own table."""
    paths = [
        {"layers": [0, 1], "path": [2, 5], "shifted": True, "accuracy_a": 0.8, "tokens_a": 50,
         "accuracy_b": 0.4, "tokens_b": 60, "delta": -0.4, "delta_ci_low": -0.55, "delta_ci_high": -0.2},
        {"layers": [0, 1], "path": [1, 1], "shifted": False, "accuracy_a": 0.5, "tokens_a": 40,
         "accuracy_b": 0.52, "tokens_b": 41, "delta": 0.02, "delta_ci_low": -0.2, "delta_ci_high": 0.24},
    ]  # fmt: skip
    doc = {
        "meta": {"inputs": "traces", "a": "x/a", "b": "y/b"},
        "summary": {"tokens_match": False},
        "layers": [],
        "paths": paths,
    }
    page = render_compare_report(doc, figures=False, **FIXED)
    table = re.search(r'<table class="data sortable paths-shift">.*?</table>', page, re.S)
    assert table is not None and table.group(0).count("<tr") == 3
    assert "2→5" in table.group(0) and "[-0.550, -0.200]" in table.group(0) and "1 of 2 shifted" in page
    assert "paths-shift" not in render_compare_report({**doc, "paths": None}, figures=False, **FIXED)


COMPARE_GOLDEN = Path(__file__).parent / "golden" / "compare.html"
ROOT = Path(__file__).resolve().parents[2]


def test_golden(regen_golden: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compare page of two committed sample traces (figures as placeholders: their bytes are
    matplotlib's); regenerate with ``python -m pytest tests/render/test_compare_html.py --regen-golden``."""
    monkeypatch.chdir(ROOT)
    cmp = compare("sample_traces/trained_aux.safetensors", "sample_traces/trained_noaux.safetensors")
    page = render_compare_report(cmp, figures=False, **FIXED)
    if regen_golden:
        COMPARE_GOLDEN.write_text(page, encoding="utf-8")
    assert COMPARE_GOLDEN.exists(), "no golden file: pytest tests/render/test_compare_html.py --regen-golden"
    assert page == COMPARE_GOLDEN.read_text(encoding="utf-8"), (
        "compare page changed: review, then regenerate: "
        "python -m pytest tests/render/test_compare_html.py -k golden --regen-golden"
    )
