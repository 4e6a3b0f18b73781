"""``moediag.inspect``: a trace or a checkpoint, detected, analysed with the resolved settings."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from moediag.api.progress import ByteProgress, PathLike, Progress, silent, silent_bytes
from moediag.errors import UsageError

if TYPE_CHECKING:
    from moediag.analysis import TraceAnalysis
    from moediag.checkpoint.analysis import CheckpointAnalysis
    from moediag.trace import RoutingSpec


def routing_overrides(
    num_experts: int | None = None, top_k: int | None = None, score_function: str | None = None
) -> RoutingSpec | None:
    """Routing settings for a trace whose metadata lacks them (None when none is given)."""
    from moediag.trace import SCORE_FUNCTIONS, RoutingSpec

    if score_function is not None and score_function not in SCORE_FUNCTIONS:
        raise UsageError(f"--score-function must be one of {', '.join(SCORE_FUNCTIONS)}")
    if num_experts is None and top_k is None and score_function is None:
        return None
    return RoutingSpec(num_experts=num_experts, top_k=top_k, score_function=score_function)


def _positive(**values: float | int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")


def inspect_trace(
    path: Any,
    *,
    command: str = "inspect",
    config: PathLike | None = None,
    num_experts: int | None = None,
    top_k: int | None = None,
    score_function: str | None = None,
    cold_eps: float | None = None,
    capacity_group: int | None = None,
    min_capacity: int | None = None,
    capacity_factors: Iterable[float] | None = None,
    path_windows: Sequence[tuple[int, int]] = (),
    chunk_tokens: int | None = None,
    layers: Iterable[int] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> TraceAnalysis:
    """Analyse a trace (a path or an open :class:`~moediag.trace.Trace`): what ``moediag inspect TRACE``
    prints. The verdict uses the check thresholds of the same config file."""
    from moediag.analysis import analyze_trace
    from moediag.checks.config import load_config
    from moediag.options import CAPACITY_FACTORS, resolve
    from moediag.stats import StatsOptions
    from moediag.trace import Trace, open_trace

    settings = resolve(
        command,
        {
            "cold_eps": cold_eps,
            "capacity_group": capacity_group,
            "min_capacity": min_capacity,
            "chunk_tokens": chunk_tokens,
        },
        config,
    )
    _positive(
        cold_eps=settings["cold_eps"],
        capacity_group=settings["capacity_group"],
        chunk_tokens=settings["chunk_tokens"],
    )
    trace = (
        path
        if isinstance(path, Trace)
        else open_trace(path, overrides=routing_overrides(num_experts, top_k, score_function))
    )
    factors = tuple(sorted(set(capacity_factors))) if capacity_factors is not None else CAPACITY_FACTORS
    options = StatsOptions(
        cold_eps=float(settings["cold_eps"]),
        capacity_factors=factors,
        capacity_group_tokens=int(settings["capacity_group"]),
        min_capacity=int(settings["min_capacity"]),
        path_windows=tuple(path_windows),
    )
    with (progress or silent)("analysing", trace.num_tokens) as advance:
        analysis = analyze_trace(
            trace,
            options=options,
            chunk_tokens=settings["chunk_tokens"],
            progress=advance,
            layers=layers,
            workers=workers,
            scheduler=scheduler,
        )
    analysis.check_config = load_config(config, required=False)
    analysis.settings = settings
    return analysis


def inspect_checkpoint(
    path: PathLike,
    *,
    command: str = "inspect",
    config: PathLike | None = None,
    weights: bool | None = None,
    layer: int | None = None,
    redundancy_threshold: float | None = None,
    chunk_mib: int = 64,
    progress: ByteProgress | None = None,
    sample: float | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    announce: Callable[[CheckpointAnalysis, int, float], None] | None = None,
) -> CheckpointAnalysis:
    """Analyse a checkpoint: structure, parameters and (unless ``weights=False``) its router and expert
    weights, as ``moediag inspect CHECKPOINT``. Weights only: a checkpoint holds no routing.

    ``sample``: the share of every expert's rows the redundancy screen reads (default
    :data:`moediag.options.DEFAULT_SAMPLE`; 1 = exact); ``workers``/``scheduler``: layers'
    weights side by side. ``announce(analysis, bytes, seconds)`` is told the estimate before the weights
    pass; ``progress(label, total)`` yields ``(advance, grow)`` over bytes."""
    from moediag.analysis.runners import check_workers
    from moediag.checkpoint import analyze_checkpoint, check_weights
    from moediag.options import DEFAULT_SAMPLE, resolve

    check_workers(workers)  # refused before anything is read, weights or not
    settings = resolve(command, {"weights": weights, "redundancy_threshold": redundancy_threshold}, config)
    analysis = analyze_checkpoint(
        path,
        weights=False,
        layer=layer,
        redundancy_threshold=float(settings["redundancy_threshold"]),
        sample=DEFAULT_SAMPLE if sample is None else sample,
    )
    if settings["weights"]:
        nbytes, seconds = analysis.weights_estimate()
        if announce is not None:
            announce(analysis, nbytes, seconds)
        with (progress or silent_bytes)("reading expert weights", nbytes) as (advance, grow):
            check_weights(
                analysis,
                chunk_bytes=max(1, chunk_mib) * 1024 * 1024,
                progress=advance,
                plan=grow,
                workers=workers,
                scheduler=scheduler,
            )
    return analysis


def inspect(path: Any, **kwargs: Any) -> TraceAnalysis | CheckpointAnalysis:
    """A trace or a checkpoint, told apart by its headers: :func:`inspect_trace` or :func:`inspect_checkpoint`
    (``weights``, ``layer`` and ``redundancy_threshold`` apply to checkpoints, the rest to traces)."""
    from moediag.io.inputs import detect_kind
    from moediag.trace import Trace

    if not isinstance(path, Trace) and detect_kind(path) == "checkpoint":
        ckpt = (
            "command",
            "config",
            "weights",
            "layer",
            "redundancy_threshold",
            "chunk_mib",
            "sample",
            "workers",
            "scheduler",
        )
        return inspect_checkpoint(path, **{k: v for k, v in kwargs.items() if k in ckpt})
    kwargs.pop("weights", None)
    kwargs.pop("redundancy_threshold", None)
    for name in ("chunk_mib", "layer", "sample"):
        kwargs.pop(name, None)
    return inspect_trace(path, **kwargs)


# -- check ------------------------------------------------------------------------------------------
