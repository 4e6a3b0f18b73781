"""The HTML report: sections, no external references, golden structure, and a real browser.

Regenerate the golden file after an intended change to the page (review the diff before committing):

    MOEDIAG_REGEN_GOLDEN=1 python -m pytest tests/render/test_html.py -k golden
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from moediag.analysis import TraceAnalysis, analyze_trace
from moediag.render.html.embed import inline_svg
from moediag.render.html.report import render_report, write_report
from tests.render._traces import report_trace

GOLDEN = Path(__file__).parent / "golden" / "report.html"
CHROMIUM = next(
    (
        p
        for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
        if p
    ),
    None,
)

#: anything that would make the page reach outside itself
EXTERNAL = re.compile(
    r"https?://|ftp://|(?:src|href|action|poster|data)\s*=\s*[\"']?\s*//|url\(\s*[\"']?\s*(?:https?:)?//"
    r"|@import|<link\b|<iframe\b|<object\b|<embed\b|\bsrc\s*=\s*[\"']?(?!data:)[a-z]",
    re.I,
)


def scrub(page: str) -> str:
    """Dates and versions out, so the golden file only changes when the page does."""
    page = re.sub(r'(<time class="created">)[^<]*(</time>)', r"\1DATE\2", page)
    page = re.sub(r'(<span class="version">)[^<]*(</span>)', r"\1VERSION\2", page)
    return re.sub(r'(<meta name="generator" content="moediag )[^"]*(">)', r"\1VERSION\2", page)


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> TraceAnalysis:
    return analyze_trace(report_trace(tmp_path_factory.mktemp("html") / "t.safetensors"))


@pytest.fixture(scope="module")
def page(analysis: TraceAnalysis) -> str:
    return render_report(analysis)


SECTIONS = (
    "overview",
    "layers",
    "load-heatmap",
    "load-histograms",
    "coactivation",
    "margin",
    "drop-rate",
    "steps",
    "expert-accuracy",
    "path-accuracy",
)


def test_sections_present_and_in_order(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert 'class="verdict bad"' in page and "UNHEALTHY" in page  # the last layer has a dead expert
    positions = [page.index(f'<section id="{s}">') for s in SECTIONS]
    assert positions == sorted(positions)
    assert page.index('class="verdict') < positions[0]
    for s in SECTIONS:
        assert f'href="#{s}"' in page
    assert 'class="data sortable"' in page and "<script>" in page


def test_no_external_reference_anywhere(page: str) -> None:
    assert EXTERNAL.search(page) is None, EXTERNAL.search(page)
    assert "xmlns" not in page and "<metadata>" not in page


def test_figures_inline_and_ids_unique(page: str) -> None:
    assert page.count("<svg") >= 7
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "duplicate element ids across inline figures"
    for ref in set(re.findall(r'(?:href="#|url\(#)([^")]+)', page)):
        assert ref in ids, f"dangling reference #{ref}"


def test_big_heatmaps_become_png(analysis: TraceAnalysis, monkeypatch: pytest.MonkeyPatch) -> None:
    from moediag.render.html import embed

    monkeypatch.setattr(embed, "PNG_CELLS", 4)
    page = render_report(analysis)
    assert page.count('src="data:image/png;base64,') >= 2
    assert EXTERNAL.search(page) is None


def test_inline_svg_strips_namespaces_and_prefixes_ids() -> None:
    svg = (
        '<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/x.dtd">\n'
        '<svg xmlns:xlink="http://www.w3.org/1999/xlink" width="1" xmlns="http://www.w3.org/2000/svg">'
        '<metadata><rdf:RDF xmlns:dc="http://purl.org/dc/elements/1.1/"/></metadata>'
        '<defs><path id="m1"/></defs><use xlink:href="#m1" fill="#m1x"/><g clip-path="url(#m1)"/></svg>'
    )
    out = inline_svg(svg, "f3-")
    assert out.startswith("<svg") and "http" not in out and "metadata" not in out
    assert 'id="f3-m1"' in out and 'href="#f3-m1"' in out and "url(#f3-m1)" in out and 'fill="#m1x"' in out


def test_golden(analysis: TraceAnalysis, regen_golden: bool) -> None:
    """The page's structure and text (figures replaced by placeholders: their bytes depend on matplotlib)."""
    page = scrub(render_report(analysis, figures=False, created="2000-01-01T00:00:00+00:00"))
    page = page.replace(os.path.basename(analysis.path), "t.safetensors")
    if regen_golden:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(page, encoding="utf-8")
    assert GOLDEN.exists(), "no golden file: run MOEDIAG_REGEN_GOLDEN=1 pytest tests/render/test_html.py"
    assert page == GOLDEN.read_text(encoding="utf-8"), (
        "report changed: review, then regenerate: "
        "MOEDIAG_REGEN_GOLDEN=1 python -m pytest tests/render/test_html.py -k golden"
    )


def test_checkpoint_sections_from_a_dict(analysis: TraceAnalysis) -> None:
    ckpt = {
        "meta": {"kind": "checkpoint", "path": "/m/ckpt", "files": 2},
        "summary": {
            "total_params": 1000,
            "active_params": 300,
            "health": {"status": "warn", "findings": ["2 duplicate pairs"]},
        },
        "layers": [
            {
                "layer": 1,
                "num_experts": 4,
                "router_norms": [1.0, 2.0, 0.1, 1.5],
                "bias": {"values": [0.1, -0.2, 0.5, 0.0], "pushed": [2]},
                "redundant_pairs": [[0, 3, 0.999]],
            }
        ],
    }
    page = render_report(None, ckpt)
    for sid in ("checkpoint", "checkpoint-layers"):
        assert f'<section id="{sid}">' in page
    assert "<h3>Parameters</h3>" in page and "Near-duplicate" in page and "WEIGHTS ONLY: CHECK" in page
    assert 'class="verdict warn"' in page
    assert page.count("<svg") == 2  # router norms and selection bias
    both = render_report(analysis, ckpt, figures=False)
    assert "Checkpoint: 2 duplicate pairs." in both and '<section id="layer' in both


def test_checks_replace_the_verdict(analysis: TraceAnalysis) -> None:
    checks = {
        "status": "fail",
        "verdict": "FAIL: 1 of 2 rules failed (max_vio)",
        "meta": {"config_file": "x.toml"},
        "rules": [
            {
                "rule": "max_vio",
                "status": "fail",
                "threshold": 0.5,
                "worst": {"layer": 2, "shown": "1.90"},
                "reason": None,
            }
        ],
    }
    page = render_report(analysis, checks=checks, figures=False)
    assert "FAIL: 1 of 2 rules failed" in page and '<section id="checks">' in page and "x.toml" in page


def test_write_is_atomic(tmp_path: Path) -> None:
    target = tmp_path / "r.html"
    write_report(target, "<p>x</p>")
    assert target.read_text() == "<p>x</p>" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


@pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install -y chromium)"
)
def test_real_browser_renders_without_console_errors(page: str, tmp_path: Path) -> None:
    from PIL import Image, ImageStat

    html = tmp_path / "report.html"
    # a console error anywhere (including the sorting script) is reported on stderr by --enable-logging
    html.write_text(
        page.replace("</script>", "\nconsole.log('moediag-script-ran');\n</script>"), encoding="utf-8"
    )
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,2400",
        f"--screenshot={shot}",
        html.as_uri(),
    ]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "console" in line]
    assert any("moediag-script-ran" in line for line in console), proc.stderr[-2000:]
    errors = [line for line in console if re.search(r"error|uncaught|exception", line, re.I)]
    assert not errors, errors
    img = Image.open(shot).convert("L")
    assert img.size[0] >= 1000
    stat = ImageStat.Stat(img)
    assert stat.stddev[0] > 20, "screenshot is (nearly) blank"
    assert len(img.resize((128, 256)).getcolors(maxcolors=65536) or []) > 20


def test_checkpoint_part_reads_as_groups_not_a_dump() -> None:
    """Facts grouped and worded (no "is moe yes", no "n group —" for what the model lacks), parameter counts
    in millions beside the exact count, a per-layer table without tensor-name columns."""
    from moediag.checkpoint import analyze_checkpoint

    ckpt = analyze_checkpoint(Path(__file__).resolve().parents[2] / "sample_traces" / "trained_aux")
    page = render_report(None, ckpt, figures=False)
    end = page.index("</section>", page.index('<section id="checkpoint-layers">'))
    part = page[page.index('<section id="checkpoint">') : end]
    for title in ("Model", "Routing", "Layers", "Parameters"):
        assert f"<h3>{title}</h3>" in part
    for dump in ("is moe", "n group", "index", "family source", "router tensor", "config sources"):
        assert f">{dump}<" not in part, dump
    assert "0.87 M (870,976)" in part and "32.3% of all" in part and "3.3 MB" in part
    assert "MoE layers</th><td>4 (0–3)" in part
    assert "model.layers.0.block_sparse_moe.gate.weight" in part  # kept, as a tooltip


def _widest_cells(table: str) -> int:
    """A width estimate in pixels: the longest text of each column at ~7.5 px a character, plus padding."""
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    widths: dict[int, int] = {}
    for row in rows:
        for i, cell in enumerate(re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)):
            widths[i] = max(widths.get(i, 0), len(re.sub(r"<[^>]+>|&\w+;", "x", cell)))
    return int(sum(7.5 * w + 16 for w in widths.values()))


def test_layer_tables_fit_the_page(analysis: TraceAnalysis) -> None:
    from moediag.checkpoint import analyze_checkpoint

    ckpt = analyze_checkpoint(Path(__file__).resolve().parents[2] / "sample_traces" / "trained_aux")
    page = render_report(analysis, ckpt, figures=False)
    tables = re.findall(r'<table class="data sortable">.*?</table>', page, re.S)
    assert len(tables) >= 3  # trace layers, more figures per layer, checkpoint layers
    for table in tables:
        assert _widest_cells(table) < 1150, table[:200]
    assert "<summary>More figures per layer</summary>" in page


def test_a_checkpoint_alone_is_weights_only_never_healthy() -> None:
    """sample_traces/trained_noaux/ is the model the README calls collapsed: its weights look fine, and the
    report says weights only (no green), as the terminal and inspect --json do."""
    from moediag.checkpoint import analyze_checkpoint

    ckpt = analyze_checkpoint(Path(__file__).parents[2] / "sample_traces" / "trained_noaux")
    page = render_report(None, ckpt, figures=False)
    assert 'class="verdict info"' in page and "WEIGHTS ONLY" in page and "HEALTHY" not in page
    doc = ckpt.to_dict()
    assert doc["summary"]["verdict"]["level"] == "weights_only"
    assert doc["summary"]["verdict"]["text"] in page
