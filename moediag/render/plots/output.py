"""Figures as bytes (PNG or SVG, no timestamps) and as files written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moediag.errors import UsageError
from moediag.io import atomic
from moediag.render.plots.kinds import SUFFIXES
from moediag.render.plots.style import rc

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def figure_bytes(fig: Figure, fmt: str, dpi: int = 110) -> bytes:
    """The figure encoded as ``png`` or ``svg`` (no timestamps or versions in the metadata)."""
    import io

    buf = io.BytesIO()
    # "moediag" marks the file as moediag output, so a later -o may replace it (moediag.io.paths)
    meta: dict[str, Any] = {"Software": "moediag"} if fmt == "png" else {"Date": None, "Creator": "moediag"}
    with rc():
        fig.savefig(buf, format=fmt, dpi=dpi, metadata=meta, facecolor="white")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Write ``fig`` atomically as PNG or SVG, chosen by the suffix. Returns the path written."""
    target = Path(path)
    fmt = target.suffix.lower()
    if fmt not in SUFFIXES:
        raise UsageError(f"{target}: the output must end in .png or .svg")
    data = figure_bytes(fig, fmt[1:], dpi)
    write_atomic(target, data)
    return target


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``target``, then rename: a failed write leaves nothing."""
    atomic.write_atomic(target, data)
