"""Every figure kind: drawn, titled, labelled, sized; absent data is a clear error, not a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from moediag.analysis import TraceAnalysis, analyze_trace
from moediag.errors import UsageError
from moediag.render.plots.accuracy import path_accuracy
from moediag.render.plots.data import accuracy_counts, path_rows, wilson
from moediag.render.plots.kinds import DESCRIPTIONS, PlotKind, PlotUnavailableError
from moediag.render.plots.load import imbalance_bars
from moediag.render.plots.output import save_figure
from moediag.render.plots.registry import PLOTTERS, make_figure
from tests.render._traces import report_trace


@pytest.fixture(scope="module")
def analysis(tmp_path_factory: pytest.TempPathFactory) -> TraceAnalysis:
    return analyze_trace(report_trace(tmp_path_factory.mktemp("plots") / "t.safetensors"))


@pytest.fixture(scope="module")
def ids_only(tmp_path_factory: pytest.TempPathFactory) -> TraceAnalysis:
    path = report_trace(
        tmp_path_factory.mktemp("plots") / "ids.safetensors", logits=False, steps=False, correct=False
    )
    return analyze_trace(path)


def test_mapping_is_exhaustive() -> None:
    assert set(PLOTTERS) == set(PlotKind)
    assert set(DESCRIPTIONS) == set(PlotKind)


def _texts(fig) -> list[str]:  # type: ignore[no-untyped-def]
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    return [t for t in out if t]


@pytest.mark.parametrize("kind", list(PlotKind))
def test_every_kind_draws_with_title_and_labels(
    kind: PlotKind, analysis: TraceAnalysis, tmp_path: Path
) -> None:
    fig = make_figure(kind, analysis)
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert axes, "no visible axes"
    titles = [ax.get_title() for ax in axes] + [t.get_text() for t in fig.texts]
    assert any(titles), "no title"
    data_axes = [ax for ax in axes if ax.get_label() != "<colorbar>"]
    sup = any(t.get_text() for t in fig.texts)  # suptitle / supxlabel / supylabel of small multiples
    assert sup or any(ax.get_xlabel() for ax in data_axes), f"{kind}: no x label"
    for ax in data_axes:  # shared x axes label the bottom one; every y axis says what it measures
        assert sup or ax.get_ylabel(), f"{kind}: an axis lacks a y label"
    for ax in axes:
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel() or ax.get_xlabel(), "colour bar without a label"
    w, h = fig.get_size_inches()
    assert 4 <= w <= 16 and 2 <= h <= 16
    png = save_figure(fig, tmp_path / "f.png")
    svg = save_figure(fig, tmp_path / "f.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < png.stat().st_size < 2_000_000
    text = svg.read_text()
    assert "<svg" in text and all(t.split("\n")[0][:20] in text for t in _texts(fig) if t.isascii())


def test_single_layer_variants(analysis: TraceAnalysis) -> None:
    for kind in (
        PlotKind.LOAD_HISTOGRAMS,
        PlotKind.EXPERT_ACCURACY,
        PlotKind.COACTIVATION,
        PlotKind.MARGIN,
        PlotKind.DROP_RATE,
        PlotKind.LOAD_HEATMAP,
    ):
        fig = make_figure(kind, analysis, layer=2)
        assert any("2" in t for t in _texts(fig)) or kind in (
            PlotKind.LOAD_HEATMAP,
            PlotKind.DROP_RATE,
            PlotKind.MARGIN,
        )


def test_heatmap_marks_dead_and_uses_a_log_colour_bar(analysis: TraceAnalysis) -> None:
    fig = make_figure(PlotKind.LOAD_HEATMAP, analysis)
    image = fig.axes[0].images[0]
    assert type(image.norm).__name__ == "LogNorm"
    assert image.get_array().mask[-1, 0]  # the dead expert of the last layer is masked (drawn black)
    assert "dead" in fig.axes[0].get_title()


def test_absent_data_is_a_clear_error(ids_only: TraceAnalysis) -> None:
    for kind in (PlotKind.MARGIN, PlotKind.STEPS, PlotKind.EXPERT_ACCURACY, PlotKind.PATH_ACCURACY):
        with pytest.raises(PlotUnavailableError):
            make_figure(kind, ids_only)
    make_figure(PlotKind.LOAD_HEATMAP, ids_only)  # loads need only top-k ids


def test_bad_kind_layer_and_suffix(analysis: TraceAnalysis, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown plot kind"):
        make_figure("pie", analysis)
    with pytest.raises(UsageError, match="layer 99"):
        make_figure(PlotKind.IMBALANCE, analysis, layer=99)
    fig = make_figure(PlotKind.IMBALANCE, analysis)
    with pytest.raises(UsageError, match=".png or .svg"):
        save_figure(fig, tmp_path / "f.jpg")
    assert list(tmp_path.iterdir()) == []


def test_accuracy_adapters() -> None:
    assert accuracy_counts({"hits": [1, 2], "totals": [2, 4]}) == ([1.0, 2.0], [2.0, 4.0])
    rows = [{"expert": 1, "correct": 3, "tokens": 4}, {"expert": 0, "correct": 1, "tokens": 2}]
    assert accuracy_counts(rows) == ([1.0, 3.0], [2.0, 4.0])
    windows = [{"layers": [0, 1], "frequent": [{"path": [1, 2], "correct": 5, "tokens": 10}]}]
    assert path_rows(windows) == [{"path": "1→2", "hits": 5.0, "total": 10.0}]
    lo, hi = wilson(8, 10)
    assert round(lo, 4) == 0.4902 and round(hi, 4) == 0.9433


def test_imbalance_guides_sit_at_the_check_defaults(analysis: TraceAnalysis) -> None:
    """The dashed guides are `moediag check`'s default limits, so a bar above the line is a failing check."""
    from moediag.checks import RULES_BY_NAME

    fig = imbalance_bars(analysis)
    guides = [line.get_ydata()[0] for ax in fig.axes[:2] for line in ax.get_lines()]
    assert guides == [RULES_BY_NAME["max_vio"].key.default, RULES_BY_NAME["max_cv"].key.default]


def test_path_accuracy_says_why_when_no_path_has_support() -> None:
    """The sample trace has tokens.correct, but 8 layers make nearly every path unique: the message must
    say that, not that tokens.correct is missing."""
    repo = Path(__file__).resolve().parents[2]
    a = analyze_trace(repo / "sample_traces" / "healthy.safetensors")
    with pytest.raises(PlotUnavailableError, match="no routing path has the 10 tokens"):
        path_accuracy(a)
