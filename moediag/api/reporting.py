"""``moediag.report``: one HTML file from traces, checkpoints and the check rules."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moediag.api.checking import configured_checks
from moediag.api.inspection import inspect_checkpoint, inspect_trace
from moediag.api.progress import PathLike, Progress, by_bytes, silent
from moediag.errors import UsageError
from moediag.io.outputs import check_output


def report(
    paths: PathLike | Sequence[PathLike],
    output: PathLike,
    *,
    title: str | None = None,
    config: PathLike | None = None,
    num_experts: int | None = None,
    top_k: int | None = None,
    score_function: str | None = None,
    cold_eps: float | None = None,
    capacity_group: int | None = None,
    min_capacity: int | None = None,
    weights: bool | None = None,
    path_windows: Sequence[tuple[int, int]] = (),
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
    warn: Callable[[str], None] | None = None,
    allow_empty: bool = False,
    force: bool = False,
) -> Path:
    """Write one self-contained HTML report of a trace, a checkpoint, or one of each (``moediag report``).

    The check results are included when a config file is given or found. ``output`` follows moediag's
    output rules (never an input; an existing file moediag did not write only with ``force``). Returns
    the path written.
    """
    from moediag.io.inputs import detect_kind

    if Path(output).suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o {output}: the report is HTML; name it something.html")
    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    # where the report may go, before anything is read (never onto an input; --force for foreign files)
    check_output(output, [*given, *([config] if config else [])], force=force)
    by_kind: dict[str, PathLike] = {}
    for p in given:
        kind = detect_kind(p)
        if kind in by_kind:
            raise UsageError(f"{p}: a report takes at most one trace and one checkpoint (two {kind}s given)")
        by_kind[kind] = p
    if not by_kind:
        raise UsageError("report: give a trace, a checkpoint, or one of each")
    analysis = checkpoint = None
    doc: dict[str, Any] | None = None
    if "trace" in by_kind:
        analysis = inspect_trace(
            by_kind["trace"],
            command="report",
            config=config,
            num_experts=num_experts,
            top_k=top_k,
            score_function=score_function,
            cold_eps=cold_eps,
            capacity_group=capacity_group,
            min_capacity=min_capacity,
            path_windows=path_windows,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
        )
        doc = analysis.to_dict()
    if "checkpoint" in by_kind:
        checkpoint = inspect_checkpoint(
            by_kind["checkpoint"],
            command="report",
            workers=workers,
            scheduler=scheduler,
            config=config,
            weights=weights,
            progress=by_bytes(progress),
        )
        for w in checkpoint.warnings:
            (warn or (lambda _: None))(f"moediag: warning: {os.fspath(by_kind['checkpoint'])}: {w}")
        if doc is None:
            doc = checkpoint.to_dict()
    assert doc is not None
    checks = configured_checks(doc, config, allow_empty)
    from moediag.render.html.report import render_report, write_report

    with (progress or silent)("drawing figures", None) as advance:
        page = render_report(analysis, checkpoint, checks=checks, title=title, progress=advance)
    return write_report(output, page)
