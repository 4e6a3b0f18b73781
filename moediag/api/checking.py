"""``moediag.check``: analyse (or read) an input and run the check rules on it, with a baseline."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moediag.api.inspection import inspect_checkpoint, inspect_trace, routing_overrides
from moediag.api.progress import PathLike, Progress, by_bytes
from moediag.errors import InvalidInputError, UsageError

if TYPE_CHECKING:
    from moediag.checks import CheckConfig, CheckReport


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
    sample: float | None = None,
) -> dict[str, Any]:
    """The ``inspect --json`` document ``check`` judges, analysed with the check's settings (its
    ``cold_eps`` and ``capacity_factor``, the layers it selects; selection biases of traces added)."""
    from moediag.io.inputs import detect_kind
    from moediag.options import CAPACITY_FACTORS
    from moediag.trace import open_trace

    if detect_kind(path) == "checkpoint":
        doc = inspect_checkpoint(
            path,
            command="check",
            progress=by_bytes(progress),
            workers=workers,
            scheduler=scheduler,
            sample=sample,
        ).to_dict()
        doc.setdefault("meta", {}).setdefault("kind", "checkpoint")
        doc["meta"].setdefault("path", str(path))
        return doc
    if sample is not None:
        raise UsageError("--sample applies to checkpoints (the share of expert rows read), not to traces")
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
    sample: float | None = None,
    **thresholds: Any,
) -> CheckReport:
    """Run the routing-health rules on a trace or checkpoint: ``moediag check PATH`` without the output.

    ``config``: a TOML file (default: the one found from the working directory); ``thresholds``: any key of
    :data:`moediag.checks.KEYS` (``max_vio=0.5``, ``max_cv="off"``, ``layers="0,3-5"``), as the flags;
    ``sample``: for a checkpoint, the share of expert rows the weights pass reads (1: every row).
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
        sample=sample,
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


def configured_checks(
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
