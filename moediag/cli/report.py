"""``moediag report PATH... -o report.html``: one self-contained HTML report (trace, checkpoint, or both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from moediag.cli.app import app, echo_err
from moediag.cli.common import (
    PATH_WINDOW_HELP,
    SCHEDULER_HELP,
    WORKERS_HELP,
    parse_path_windows,
    progress_bar,
    require_positive,
)
from moediag.errors import UsageError
from moediag.io.paths import FORCE_HELP, check_output


def _checks(
    doc: dict[str, Any], config_file: Path | None, allow_empty: bool = False
) -> dict[str, Any] | None:
    """``moediag check`` results when thresholds are configured (a config file found or given), else None."""
    try:
        from moediag.checks import run_checks
        from moediag.config import load_config
    except ImportError:  # pragma: no cover - the gate ships with moediag; kept optional for the renderer
        return None
    config = load_config(config_file)
    if config.file is None:
        return None
    from moediag.checks import NothingToCheckError
    from moediag.errors import InvalidInputError

    try:
        return run_checks(doc, config, allow_empty=allow_empty).to_dict()
    except NothingToCheckError as exc:
        raise InvalidInputError(str(exc), (doc.get("meta") or {}).get("path")) from None


@app.command("report")
def report_cmd(
    paths: list[Path] = typer.Argument(..., metavar="PATH", help="A trace, a checkpoint, or one of each."),
    output: Path = typer.Option(..., "--output", "-o", help="The HTML file to write."),
    title: str | None = typer.Option(None, "--title", help="Page title (default: from the input's name)."),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="Check thresholds (moediag.toml or pyproject.toml); "
        "without it the one found from the working directory is used, if any.",
    ),
    num_experts: int | None = typer.Option(
        None, "--num-experts", help="Experts per layer, if the trace lacks it."
    ),
    top_k: int | None = typer.Option(None, "--top-k", help="Experts per token, if the trace lacks it."),
    score_function: str | None = typer.Option(
        None, "--score-function", help="softmax | sigmoid | topk_softmax, if the trace lacks it."
    ),
    cold_eps: float = typer.Option(0.1, "--cold-eps", help="An expert is cold when its share < eps / E."),
    min_capacity: int = typer.Option(
        0, "--min-capacity", help="Capacity floor per expert and group (DeepSpeed's min_capacity; 0 = none)."
    ),
    capacity_group: int = typer.Option(
        4096, "--capacity-group", help="Tokens per capacity group when the trace has no sequence ids."
    ),
    weights: bool = typer.Option(
        True,
        "--weights/--no-weights",
        help="Checkpoints: read weights for router and redundancy diagnostics.",
    ),
    path_window: list[str] | None = typer.Option(
        None, "--path-window", metavar="FIRST:LAST", help=PATH_WINDOW_HELP
    ),
    workers: int | None = typer.Option(None, "--workers", "-w", metavar="N", help=WORKERS_HELP),
    scheduler: str | None = typer.Option(None, "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    allow_empty: bool = typer.Option(
        False,
        "--allow-empty",
        help="With check thresholds: a verdict of pass when there is nothing to judge (no MoE layer, "
        "no routed token) instead of exit 2.",
    ),
) -> None:
    """Write one self-contained HTML report: verdict, overview, per-layer table and figures.

    The file has no external references (no network, no other files); open it in any browser.

    Example: moediag report sample_traces/imbalanced.safetensors -o report.html
    """
    from moediag.inputs import detect_kind

    if output.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o {output}: the report is HTML; name it something.html")
    require_positive(cold_eps=cold_eps, capacity_group=capacity_group)
    if min_capacity < 0:
        raise UsageError("--min-capacity must be 0 or more")
    check_output(output, [*paths, *([config] if config else [])], force=force)
    by_kind: dict[str, Path] = {}
    for p in paths:
        kind = detect_kind(p)
        if kind in by_kind:
            raise UsageError(f"{p}: a report takes at most one trace and one checkpoint (two {kind}s given)")
        by_kind[kind] = p
    analysis = checkpoint = None
    doc: dict[str, Any] | None = None
    if "trace" in by_kind:
        from moediag.analysis import analyze_trace
        from moediag.cli.inspect import routing_overrides
        from moediag.stats import StatsOptions
        from moediag.trace import open_trace

        trace = open_trace(by_kind["trace"], overrides=routing_overrides(num_experts, top_k, score_function))
        with progress_bar("analysing trace", trace.num_tokens) as advance:
            analysis = analyze_trace(
                trace,
                options=StatsOptions(
                    cold_eps=cold_eps,
                    capacity_group_tokens=capacity_group,
                    min_capacity=min_capacity,
                    path_windows=parse_path_windows(path_window, trace.layers),
                ),
                progress=advance,
                workers=workers,
                scheduler=scheduler,
            )
        doc = analysis.to_dict()
    if "checkpoint" in by_kind:
        from moediag.checkpoint import analyze_checkpoint, check_weights

        checkpoint = analyze_checkpoint(by_kind["checkpoint"], weights=False)
        if weights:
            with progress_bar("reading expert weights", checkpoint.weight_bytes()) as advance:
                check_weights(checkpoint, progress=advance)
        for w in checkpoint.warnings:
            echo_err(f"moediag: warning: {by_kind['checkpoint']}: {w}")
        if doc is None:
            doc = checkpoint.to_dict()
    assert doc is not None
    checks = _checks(doc, config, allow_empty)
    from moediag.render.html import render_report, write_report

    page = render_report(analysis, checkpoint, checks=checks, title=title)
    write_report(output, page)
    echo_err(f"moediag: wrote {output} ({len(page.encode('utf-8')) / 1e6:.1f} MB)")
