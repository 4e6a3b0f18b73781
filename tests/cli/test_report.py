"""``moediag report``: writes one self-contained file; bad input is one line and exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from moediag.cli import app
from tests.render._traces import report_trace

runner = CliRunner()


def test_report_writes_one_html_file(tmp_path: Path) -> None:
    trace = report_trace(tmp_path / "in" / "t.safetensors", layers=2, tokens=400, correct=False)
    out = tmp_path / "out" / "report.html"
    result = runner.invoke(app, ["report", str(trace), "-o", str(out), "--title", "My run"])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "<title>My run</title>" in page and '<section id="load-heatmap">' in page
    assert "http://" not in page and "https://" not in page
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]


def test_report_errors_leave_nothing(tmp_path: Path) -> None:
    trace = report_trace(tmp_path / "t.safetensors", layers=2, tokens=200, steps=False, correct=False)
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        ([str(trace), "-o", str(out / "r.txt")], "html"),
        ([str(tmp_path / "missing.safetensors"), "-o", str(out / "r.html")], "no such file"),
        ([str(trace), str(trace), "-o", str(out / "r.html")], "at most one trace"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["report", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_report_help_lists_usage() -> None:
    result = runner.invoke(app, ["report", "--help"])
    assert result.exit_code == 0 and "--output" in result.output


def test_report_verdict_fails_closed_on_nothing_to_judge(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    dense = tmp_path / "dense.safetensors"
    save_file({"embed.weight": torch.zeros(4, 4)}, str(dense))
    config = tmp_path / "moediag.toml"
    config.write_text("[check]\nmax_vio = 1.0\n")
    out = tmp_path / "r.html"
    closed = runner.invoke(app, ["report", str(dense), "-o", str(out), "--config", str(config)])
    assert closed.exit_code == 2 and "nothing was checked" in closed.output and not out.exists()
    opened = runner.invoke(
        app, ["report", str(dense), "-o", str(out), "--config", str(config), "--allow-empty"]
    )
    assert opened.exit_code == 0, opened.output
    assert out.exists()
