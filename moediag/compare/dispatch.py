"""``compare(a, b)``: two traces or two checkpoints, detected from the inputs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from moediag.compare.checkpoints import compare_checkpoints
from moediag.compare.result import Comparison
from moediag.compare.traces import compare_traces
from moediag.errors import UsageError

if TYPE_CHECKING:
    from moediag.compare.models import ModelComparison


def compare(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    chunk_tokens: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    config: Any = None,
    progress: Any = None,
    seq_len: int | None = None,
    eval_traces: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
) -> Comparison | ModelComparison:
    """Compare two traces or two checkpoints (whichever they are; mixing the two is an error).

    Two traces: ``config`` holds the check rules that decide the verdict (moediag.compare.verdict);
    ``progress(n)`` is called as tokens are read.
    Two checkpoints: compute, capacity and framing (:func:`moediag.compare.models.compare_models`, at
    ``seq_len``; quality per compute with ``eval_traces``), plus the router comparison when they have
    routers of the same shape in common (its result then carries the model sections).
    """
    from moediag.io.inputs import detect_kind

    ka, kb = detect_kind(a), detect_kind(b)
    if ka != kb:
        raise UsageError(f"compare needs two traces or two checkpoints: {a} is a {ka}, {b} is a {kb}")
    from moediag.analysis.runners import check_workers

    check_workers(workers)  # whatever is compared (checkpoints do not use it)
    if ka == "checkpoint":
        from moediag.checkpoint.compute import DEFAULT_SEQ_LEN
        from moediag.compare.models import compare_models

        models = compare_models(
            a, b, seq_len=seq_len or DEFAULT_SEQ_LEN, traces=eval_traces, chunk_tokens=chunk_tokens
        )
        if not models.routers_in_common:
            return models
        result = compare_checkpoints(a, b)
        result.extra = models.sections()
        result.notes.extend(models.notes)
        return result
    if seq_len is not None or eval_traces is not None:
        raise UsageError("--seq-len and --trace apply to two checkpoints, not to two traces")
    return compare_traces(
        a,
        b,
        chunk_tokens=chunk_tokens,
        workers=workers,
        scheduler=scheduler,
        config=config,
        progress=progress,
    )
