"""``moediag inspect CHECKPOINT``: the checkpoint half of ``inspect`` (dispatched from cli/inspect.py).

A thin adapter: call :func:`moediag.api.inspect_checkpoint`, show a progress bar on stderr while
weights are read, print warnings to stderr, and render a table or JSON to stdout.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from moediag.errors import ExitCode


def inspect_checkpoint_command(
    path: Path,
    *,
    as_json: bool,
    layer: int | None,
    weights: bool | None = None,
    redundancy_threshold: float | None = None,
    console_width: int | None = None,
    chunk_mib: int = 64,
) -> int:
    """Inspect a checkpoint; returns the exit code (0). Bad input raises a MoediagError (exit 2).

    ``weights`` / ``redundancy_threshold``: None = from the config file, else the default (moediag.options).

    Example: moediag inspect ./Qwen1.5-MoE-A2.7B --no-weights
    """
    from moediag.api import inspect_checkpoint
    from moediag.cli.common import print_json, progress_bar, stdout_console

    analysis = inspect_checkpoint(
        path,
        weights=weights,
        layer=layer,
        redundancy_threshold=redundancy_threshold,
        chunk_mib=chunk_mib,
        progress=progress_bar,
    )
    for w in analysis.warnings:
        sys.stderr.write(f"moediag: warning: {os.fspath(path)}: {w}\n")
    if as_json:
        print_json(analysis.to_dict())
        return int(ExitCode.OK)
    from moediag.render.checkpoint_table import render_checkpoint

    console = stdout_console()
    if console_width is not None:
        console.width = console_width
    render_checkpoint(analysis, console)
    return int(ExitCode.OK)
