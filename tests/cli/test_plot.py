"""``moediag plot``: each kind to PNG or SVG; kinds listed in --help; errors are one line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from moediag.cli import app
from moediag.render.plots.kinds import PlotKind
from tests.render._traces import report_trace

runner = CliRunner()


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return report_trace(
        tmp_path_factory.mktemp("plot") / "t.safetensors", layers=2, tokens=400, correct=False
    )


def test_help_lists_every_kind() -> None:
    result = runner.invoke(app, ["plot", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for kind in PlotKind:
        assert kind.value in result.output


@pytest.mark.parametrize(
    ("kind", "suffix", "layer"),
    [("load-heatmap", ".png", None), ("imbalance", ".svg", None), ("load-histograms", ".png", "1")],
)
def test_plot_writes_the_file(trace: Path, tmp_path: Path, kind: str, suffix: str, layer: str | None) -> None:
    out = tmp_path / f"fig{suffix}"
    args = ["plot", str(trace), "--kind", kind, "-o", str(out)] + (["--layer", layer] if layer else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "pie"], "pie"),
        (["--kind", "imbalance", "--layer", "7"], "--layer 7"),
        (["--kind", "path-accuracy"], "tokens.correct"),
    ],
)
def test_plot_errors(trace: Path, tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "f.png"
    result = runner.invoke(app, ["plot", str(trace), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_plot_rejects_other_suffixes(trace: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["plot", str(trace), "--kind", "imbalance", "-o", str(tmp_path / "f.jpg")])
    assert result.exit_code == 2 and ".png or .svg" in result.output
