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
    sample: float | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> int:
    """Inspect a checkpoint; returns the exit code (0). Bad input raises a MoediagError (exit 2).

    ``weights`` / ``redundancy_threshold``: None = from the config file, else the default (moediag.options).

    Example: moediag inspect ./Qwen1.5-MoE-A2.7B --no-weights
    """
    from moediag.api import inspect_checkpoint
    from moediag.cli.common import byte_progress, print_json, stdout_console

    def announce(analysis: object, nbytes: int, seconds: float) -> None:
        if seconds > 60:
            sys.stderr.write(f"moediag: {_estimate_line(analysis, nbytes, seconds)}\n")

    analysis = inspect_checkpoint(
        path,
        weights=weights,
        layer=layer,
        redundancy_threshold=redundancy_threshold,
        chunk_mib=chunk_mib,
        progress=byte_progress,
        sample=sample,
        workers=workers,
        scheduler=scheduler,
        announce=announce,
    )
    for w in analysis.warnings:
        sys.stderr.write(f"moediag: warning: {os.fspath(path)}: {w}\n")
    if as_json:
        print_json(analysis.to_dict())
        return int(ExitCode.OK)
    from moediag.render.terminal.checkpoint_table import render_checkpoint

    console = stdout_console()
    if console_width is not None:
        console.width = console_width
    render_checkpoint(analysis, console)
    return int(ExitCode.OK)


def _estimate_line(analysis: object, nbytes: int, seconds: float) -> str:
    """One line before a long weights pass: what it reads, how long it should take, how to change that."""
    from moediag.checkpoint import CheckpointAnalysis

    assert isinstance(analysis, CheckpointAnalysis)
    layers = len(analysis.layers)
    what = (
        f"a {analysis.sample:.1%} sample of every expert's rows, then candidate pairs in full"
        if analysis.sample < 1
        else "every expert row (exact)"
    )
    eta = f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
    faster = (
        "--sample 1 reads every row exactly" if analysis.sample < 1 else "--sample 0.03 screens a 3% sample"
    )
    from moediag.checkpoint.dequant import decoder

    quantised = any(m.quant for lr in analysis.layers for m in lr.block.matrices)
    slow = (
        "; moediag was built without its compiled FP8/MXFP4 decoder, which is twice as fast (docs/install.md)"
        if quantised and decoder() == "torch"
        else ""
    )
    return (
        f"reading {nbytes / 1e9:.1f} GB of expert weights in {layers} MoE layer{'s' * (layers != 1)} "
        f"({what}): about {eta}; {faster}, --layer N reads one layer, --no-weights reads headers only{slow}"
    )
