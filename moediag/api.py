"""The library behind every command: ``moediag.inspect``, ``moediag.check`` and ``moediag.report``.

>>> import moediag                                                      # doctest: +SKIP
>>> analysis = moediag.inspect("sample_traces/imbalanced.safetensors")
>>> analysis.verdict().text
'IMBALANCED: worst MaxVio 2.55 at layer 3 (balanced = 0); fails max_vio, max_cv'
>>> report = moediag.check("sample_traces/imbalanced.safetensors", max_vio=3.0)
>>> report.status, report.frame()                                       # doctest: +SKIP
>>> moediag.report(["sample_traces/imbalanced.safetensors"], "report.html")

The CLI commands are thin adapters over these (argument parsing, a progress bar, rendering). Settings come
from :mod:`moediag.options` (defaults < ``[tool.moediag]`` tables < arguments), as on the command line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moediag.errors import InvalidInputError, UsageError

if TYPE_CHECKING:
    from moediag.analysis import TraceAnalysis
    from moediag.checkpoint.analysis import CheckpointAnalysis
    from moediag.checks import CheckConfig, CheckReport
    from moediag.trace import RoutingSpec

#: ``progress(description, total)`` -> a context manager yielding ``advance(n)`` (the CLI's progress bar)
Progress = Callable[[str, int | None], AbstractContextManager[Callable[[int], None]]]
#: a progress bar over bytes: ``(label, total)`` -> context yielding ``(advance, grow)``
ByteProgress = Callable[
    [str, int], AbstractContextManager[tuple[Callable[[int], None], Callable[[int], None]]]
]
PathLike = str | os.PathLike[str]

__all__ = [
    "Progress",
    "check",
    "inspect",
    "inspect_checkpoint",
    "inspect_trace",
    "report",
    "routing_overrides",
]


@contextlib.contextmanager
def _silent(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


@contextlib.contextmanager
def _silent_bytes(
    description: str, total: int
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    yield (lambda n: None), (lambda n: None)


def _by_bytes(progress: Progress | None) -> ByteProgress | None:
    """A plain progress bar used over bytes (a total that cannot grow)."""
    if progress is None:
        return None

    @contextlib.contextmanager
    def bar(description: str, total: int) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
        with progress(description, total) as advance:
            yield advance, (lambda n: None)

    return bar


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
    with (progress or _silent)("analysing", trace.num_tokens) as advance:
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
    :data:`moediag.checkpoint.weights.DEFAULT_SAMPLE`; 1 = exact); ``workers``/``scheduler``: layers'
    weights side by side. ``announce(analysis, bytes, seconds)`` is told the estimate before the weights
    pass; ``progress(label, total)`` yields ``(advance, grow)`` over bytes."""
    from moediag.checkpoint import analyze_checkpoint, check_weights
    from moediag.checkpoint.weights import DEFAULT_SAMPLE
    from moediag.options import resolve

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
        with (progress or _silent_bytes)("reading expert weights", nbytes) as (advance, grow):
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
    from moediag.inputs import detect_kind
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


def check_document(
    path: PathLike,
    config: CheckConfig,
    *,
    num_experts: int | None = None,
    top_k: int | None = None,
    score_function: str | None = None,
    chunk_tokens: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The ``inspect --json`` document ``check`` judges, analysed with the check's settings (its
    ``cold_eps`` and ``capacity_factor``, the layers it selects; selection biases of traces added)."""
    from moediag.inputs import detect_kind
    from moediag.options import CAPACITY_FACTORS
    from moediag.trace import open_trace

    if detect_kind(path) == "checkpoint":
        doc = inspect_checkpoint(path, command="check", progress=_by_bytes(progress)).to_dict()
        doc.setdefault("meta", {}).setdefault("kind", "checkpoint")
        doc["meta"].setdefault("path", str(path))
        return doc
    trace = open_trace(path, overrides=routing_overrides(num_experts, top_k, score_function))
    wanted = config["layers"]
    if wanted is not None:
        missing = [x for x in wanted if x not in trace.layers]
        if missing:
            have = ", ".join(map(str, sorted(trace.layers)))
            raise UsageError(f"--layers: layer {missing[0]} is not in {path} (layers: {have})")
    analysis = inspect_trace(
        trace,
        command="check",
        cold_eps=float(config["cold_eps"]),
        min_capacity=int(config["min_capacity"]),
        capacity_factors=set(CAPACITY_FACTORS) | {float(config["capacity_factor"])},
        chunk_tokens=chunk_tokens,
        layers=wanted,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    analysis.check_config = config
    doc = analysis.to_dict()
    for row in doc["layers"]:
        if row.get("bias") is None and row.get("selection_bias") is None:
            bias = trace.selection_bias(int(row["layer"]))
            if bias is not None:
                row["bias"] = {"min": float(bias.min()), "max": float(bias.max()), "mean": float(bias.mean())}
    return doc


def load_baseline(path: PathLike, config: CheckConfig) -> dict[str, Any]:
    """The figures of a previous ``check --json`` or ``inspect --json`` output, for ``baseline=``."""
    from moediag.checks import ConfigValueError, baseline_figures
    from moediag.io import strict_json
    from moediag.io.paths import JSON_MAX_BYTES

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InvalidInputError("baseline file not found", p)
    # a regular file (no FIFO, no /dev/zero), size-capped, depth- and number-checked
    doc = strict_json.load_file(p, limit=JSON_MAX_BYTES, what="baseline")
    try:
        return baseline_figures(doc, config)
    except ConfigValueError as exc:
        raise InvalidInputError(f"baseline: {exc}", p) from None


def check(
    path: PathLike,
    *,
    config: PathLike | None = None,
    baseline: PathLike | None = None,
    num_experts: int | None = None,
    top_k: int | None = None,
    score_function: str | None = None,
    chunk_tokens: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
    allow_empty: bool = False,
    **thresholds: Any,
) -> CheckReport:
    """Run the routing-health rules on a trace or checkpoint: ``moediag check PATH`` without the output.

    ``config``: a TOML file (default: the one found from the working directory); ``thresholds``: any key of
    :data:`moediag.checks.KEYS` (``max_vio=0.5``, ``max_cv="off"``, ``layers="0,3-5"``), as the flags.
    ``report.exit_code``, ``report.to_dict()`` and ``report.frame()`` give the outcome. Input with nothing
    to judge is an :class:`~moediag.errors.InvalidInputError` unless ``allow_empty``.
    """
    from moediag.checks import KEYS, BaselineMismatchError, ConfigValueError, NothingToCheckError, run_checks
    from moediag.checks.config import load_config

    unknown = sorted(set(thresholds) - set(KEYS))
    if unknown:
        raise UsageError(f"check: unknown setting {unknown[0]!r} (see moediag.checks.KEYS)")
    flags = dict(thresholds)  # TOML-like values or flag text: moediag.checks.coerce takes both
    cfg = load_config(config, flags)
    base = load_baseline(baseline, cfg) if baseline is not None else None
    doc = check_document(
        path,
        cfg,
        num_experts=num_experts,
        top_k=top_k,
        score_function=score_function,
        chunk_tokens=chunk_tokens,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    doc.setdefault("meta", {})["path"] = str(path)
    try:
        return run_checks(
            doc, cfg, base, None if baseline is None else str(baseline), allow_empty=allow_empty
        )
    except NothingToCheckError as exc:
        raise InvalidInputError(str(exc), path) from None
    except BaselineMismatchError as exc:
        raise InvalidInputError(f"baseline: {exc}", baseline) from None
    except ConfigValueError as exc:
        raise UsageError(f"--layers: {exc}") from None


# -- report -----------------------------------------------------------------------------------------


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
) -> Path:
    """Write one self-contained HTML report of a trace, a checkpoint, or one of each (``moediag report``).

    The check results are included when a config file is given or found. Returns the path written.
    """
    from moediag.inputs import detect_kind

    if Path(output).suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"-o {output}: the report is HTML; name it something.html")
    by_kind: dict[str, PathLike] = {}
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
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
            config=config,
            weights=weights,
            progress=_by_bytes(progress),
        )
        for w in checkpoint.warnings:
            (warn or (lambda _: None))(f"moediag: warning: {os.fspath(by_kind['checkpoint'])}: {w}")
        if doc is None:
            doc = checkpoint.to_dict()
    assert doc is not None
    checks = _configured_checks(doc, config, allow_empty)
    from moediag.render.html import render_report, write_report

    with (progress or _silent)("drawing figures", None) as advance:
        page = render_report(analysis, checkpoint, checks=checks, title=title, progress=advance)
    return write_report(output, page)


def _configured_checks(
    doc: Mapping[str, Any], config_file: PathLike | None, allow_empty: bool = False
) -> dict[str, Any] | None:
    """``moediag check`` results when thresholds are configured (a config file found or given), else None."""
    from moediag.checks import NothingToCheckError, run_checks
    from moediag.checks.config import load_config

    config = load_config(config_file)
    if config.file is None:
        return None
    try:
        return run_checks(doc, config, allow_empty=allow_empty).to_dict()
    except NothingToCheckError as exc:
        raise InvalidInputError(str(exc), (doc.get("meta") or {}).get("path")) from None
