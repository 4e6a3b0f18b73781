"""Analyse a trace in parallel: plan the units, run them on a runner (:mod:`moediag.analysis.runners`), fold
the states in the fixed tree (:mod:`moediag.analysis.units`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from moediag.analysis.runners import DaskRunner, LocalRunner, Runner, ordered
from moediag.analysis.units import (
    MAX_LOCAL_THREADS,
    UNIT_THREADS,
    Collect,
    ProgressFn,
    UnitResult,
    compute_unit,
    merge_results,
    merge_stats,
    pinned_threads,
    plan_units,
    raise_failure,
    tree_fold,
)
from moediag.stats import ModelStats, StatsOptions
from moediag.trace import Trace


def unit_stats(
    trace: Trace,
    *,
    collect: Collect,
    options: StatsOptions | None = None,
    chunk_tokens: int | None = None,
    unit_tokens: int | None = None,
    layers: Iterable[int] | None = None,
    progress: ProgressFn | None = None,
    runner: Runner | None = None,
    local_threads: int | None = None,
) -> ModelStats:
    """Per-token statistics of the whole trace, unit by unit, here (``runner`` None) or on ``runner``.

    Count-only layers are registered but not filled (``analysis.add_count_layers`` does that once).
    Without a runner, up to ``local_threads`` units run side by side in threads (default: torch's thread
    count, at most :data:`MAX_LOCAL_THREADS`); 1 runs them one after another.
    """
    options = options or StatsOptions()
    layers = None if layers is None else list(layers)
    units = plan_units(
        trace,
        collect=collect,
        chunk_tokens=chunk_tokens,
        unit_tokens=unit_tokens,
        options=options,
        layers=layers,
    )
    if isinstance(runner, LocalRunner) and len(units) <= 1:
        runner = None  # one unit: starting worker processes (~2 s) would cost more than the unit
    if runner is None:
        if not units:
            return collect(trace, [], options, None, layers)
        wanted_threads = local_threads or min(torch.get_num_threads(), MAX_LOCAL_THREADS)
        side_by_side = max(1, min(wanted_threads, len(units)))
        with pinned_threads(UNIT_THREADS):
            if side_by_side == 1:
                total = tree_fold((compute_unit(u, progress) for u in units), merge_stats)
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(side_by_side, thread_name_prefix="moediag-unit") as pool:
                    stream = ordered(
                        lambda u: pool.submit(compute_unit, u, progress), units, 2 * side_by_side
                    )
                    try:
                        total = tree_fold(stream, merge_stats)
                    finally:
                        stream.close()
        assert total is not None
        return total
    if not units:
        return collect(trace, [], options, None, layers)
    if isinstance(runner, DaskRunner):
        result = runner.reduce(units, progress)
    else:

        def results() -> Iterator[UnitResult]:
            stream = runner.map(units)
            try:
                for unit, res in zip(units, stream, strict=True):
                    if res.stats is None:
                        raise_failure(res, unit, len(units))
                    if progress is not None:
                        progress(unit.tokens)
                    yield res
            finally:
                stream.close()  # type: ignore[attr-defined]

        folded = tree_fold(results(), merge_results)
        assert folded is not None
        result = folded
    if result.stats is None:
        raise_failure(result, units[result.index], len(units))
    assert result.stats is not None
    total = result.stats
    return total
