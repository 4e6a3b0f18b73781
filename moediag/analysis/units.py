"""Analyse a trace in parallel: local worker processes (``workers=N``) or a Dask cluster (``scheduler=``).

A trace is cut into **work units**: runs of consecutive chunks, in token order, each of roughly
``unit_tokens`` tokens. A shard of at least half that size is a unit of its own (or several, split at chunk
boundaries when it is bigger); smaller shards are packed together. The plan depends only on the trace,
``chunk_tokens`` and ``unit_tokens`` -- never on how many workers run it.

Each unit is reduced to a :class:`~moediag.stats.ModelStats` (sufficient statistics only: counts, sums,
sketches, and the open sequence runs at its two ends) wherever it runs, and the states are merged in one
fixed **binary tree over the units in order**: (0+1), (2+3), ... then pairs of those, an odd one out
carried up a level (``merge(other)`` always folds in the tokens that come after). A single-process run
goes through the same units and the same tree, so the result is bit-for-bit the same with 1, 2 or 200
workers. (Floating sums depend on how tokens are grouped, and a torch reduction on how many threads it
uses: the units and the tree fix the first, and every unit runs with one torch thread, which fixes the
second -- and makes the figures independent of the machine's core count too.) Parallelism comes from
running units side by side instead: in threads of this process by default (torch releases the GIL),
in worker processes with ``workers=N``, on a cluster with ``scheduler=``. Locally the tree is folded in
the calling process as results arrive (at most log2(units) partial states wait); on Dask the merges are
tasks on the workers and only the root comes back.

Workers open the shard files they are given by path, so every worker must see the trace at the same
path: one machine, or a shared filesystem (NFS, Lustre, GPFS, a bucket mounted with a FUSE driver).
Only the unit descriptions (paths, row ranges, options) go out and only the states come back.
See docs/scale.md.
"""

from __future__ import annotations

import copy as _copy
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from moediag.analysis.memory import tune_allocator
from moediag.errors import InvalidInputError, MoediagError
from moediag.stats import ModelStats, StatsOptions
from moediag.trace import Chunk, RoutingSpec, Trace

#: Tokens per work unit (a shard of the benchmark trace is 131,072 tokens: one unit each).
DEFAULT_UNIT_TOKENS = 1 << 17
#: torch threads per unit. Part of the result's definition: do not make it depend on the machine.
UNIT_THREADS = 1
#: Units analysed side by side in threads of the calling process (when no runner is given): at most this
#: many, and no more than torch's thread count (the cores it would otherwise use).
MAX_LOCAL_THREADS = 8

ProgressFn = Callable[[int], None]
#: reduces chunks of a trace to statistics: ``(trace, chunks, options, progress, layers) -> ModelStats``
Collect = Callable[
    [Trace, Iterable[Chunk], StatsOptions | None, ProgressFn | None, Iterable[int] | None], ModelStats
]
T = TypeVar("T")


class WorkerError(MoediagError):
    """A worker could not finish its unit: its process died, or the cluster lost it."""


class SchedulerError(MoediagError):
    """The Dask scheduler could not be reached (or Dask is not installed)."""


@dataclass(frozen=True)
class WorkUnit:
    """Consecutive chunks of a trace: what one worker reduces to one :class:`ModelStats`."""

    index: int
    root: str  # the trace (file or folder), for messages and for re-opening
    files: tuple[str, ...]  # absolute paths of the shards the unit reads, in order
    #: (index into ``files``, first row, stop row, global index of the first token) per chunk
    chunks: tuple[tuple[int, int, int, int], ...]
    overrides: RoutingSpec | None
    options: StatsOptions
    layers: tuple[int, ...] | None
    #: ``collect(trace, chunks, options, progress, layers) -> ModelStats``: what reduces the chunks (the
    #: caller's, e.g. moediag.analysis.trace_stats; a module-level function pickles by name for workers)
    collect: Collect
    threads: int = 1  # torch intra-op threads while it runs: fixed, so reductions round identically

    @property
    def tokens(self) -> int:
        return sum(b - a for _, a, b, _ in self.chunks)

    def describe(self) -> str:
        """Which shards (and rows) the unit covers, for messages."""
        names = [Path(f).name for f in self.files]
        _, a, _, _ = self.chunks[0]
        _, _, b, _ = self.chunks[-1]
        if len(names) == 1:
            return f"shard {names[0]} rows {a}:{b}"
        return f"shards {names[0]} .. {names[-1]}"


def plan_units(
    trace: Trace,
    *,
    collect: Collect,
    chunk_tokens: int | None = None,
    unit_tokens: int | None = None,
    options: StatsOptions | None = None,
    layers: Iterable[int] | None = None,
) -> list[WorkUnit]:
    """Cut ``trace`` into work units in token order (see the module docstring for the rule)."""
    size = unit_tokens or DEFAULT_UNIT_TOKENS
    if size < 1:
        raise ValueError("unit_tokens must be positive")
    options = options or StatsOptions()
    wanted = None if layers is None else tuple(sorted(layers))
    threads = UNIT_THREADS
    groups: list[list[Chunk]] = []
    current: list[Chunk] = []
    tokens = 0
    for chunk in trace.iter_chunks(chunk_tokens):
        current.append(chunk)
        tokens += len(chunk)
        shard_end = chunk.rows[1] == trace.shard_tokens[chunk.shard_index]
        if tokens >= size or (shard_end and 2 * tokens >= size):
            groups.append(current)
            current, tokens = [], 0
    if current:
        groups.append(current)
    units = []
    for i, group in enumerate(groups):
        shard_ids = sorted({c.shard_index for c in group})
        local = {s: j for j, s in enumerate(shard_ids)}
        units.append(
            WorkUnit(
                index=i,
                root=os.path.abspath(trace.path),
                files=tuple(os.path.abspath(trace.shards[s].path) for s in shard_ids),
                chunks=tuple((local[c.shard_index], c.rows[0], c.rows[1], c.start) for c in group),
                overrides=getattr(trace, "overrides", None),
                options=options,
                layers=wanted,
                collect=collect,
                threads=threads,
            )
        )
    return units


def compute_unit(
    unit: WorkUnit, progress: ProgressFn | None = None, current: dict[str, str] | None = None
) -> ModelStats:
    """Reduce one unit to its statistics (opens only the unit's shards; raises on bad input).

    ``current["file"]`` is kept pointing at the shard being read, for error messages.
    """
    if torch.get_num_threads() != unit.threads:
        raise RuntimeError("compute_unit runs inside pinned_threads(unit.threads)")
    trace = Trace(unit.root, overrides=unit.overrides, files=list(unit.files))

    def chunks() -> Iterator[Chunk]:
        for i, a, b, start in unit.chunks:
            if current is not None:
                current["file"] = unit.files[i]
            yield Chunk(trace, i, (a, b), start)

    return unit.collect(trace, chunks(), unit.options, progress, unit.layers)


@dataclass
class UnitResult:
    """What comes back from a worker: the unit's state, or why it failed (picklable either way)."""

    index: int
    stats: ModelStats | None
    error: str | None = None  # the message
    error_path: str | None = None  # the shard at fault
    internal: bool = False  # a bug rather than bad input


def run_unit(unit: WorkUnit) -> UnitResult:
    """The function workers run: never raises, so the failing shard is reported even across processes."""
    current = {"file": unit.files[0]}
    tune_allocator()  # workers are processes of their own (Dask, process pools)
    try:
        with pinned_threads(unit.threads):
            return UnitResult(unit.index, compact(compute_unit(unit, None, current)))
    except MoediagError as exc:
        return UnitResult(unit.index, None, exc.message, exc.path or current["file"])
    except OSError as exc:
        return UnitResult(unit.index, None, f"cannot read: {exc.strerror or exc}", current["file"])
    except Exception as exc:
        return UnitResult(unit.index, None, f"{type(exc).__name__}: {exc}", current["file"], internal=True)


def raise_failure(result: UnitResult, unit: WorkUnit, total: int) -> None:
    where = f"(worker, unit {unit.index + 1} of {total}: {unit.describe()})"
    if result.internal:
        raise RuntimeError(f"{result.error_path}: {result.error} {where}")
    raise InvalidInputError(f"{result.error} {where}", result.error_path)


def tree_fold(items: Iterable[T], merge: Callable[[T, T], T]) -> T | None:
    """Merge ``items`` (in token order) along the canonical tree, streaming: pairs at each level, the odd
    one out carried up -- the same tree :meth:`DaskRunner.reduce` builds level by level."""
    stack: list[tuple[int, T]] = []
    for item in items:
        level = 0
        while stack and stack[-1][0] == level:
            item = merge(stack.pop()[1], item)
            level += 1
        stack.append((level, item))
    if not stack:
        return None
    acc = stack.pop()[1]
    while stack:
        acc = merge(stack.pop()[1], acc)
    return acc


def merge_stats(a: ModelStats, b: ModelStats) -> ModelStats:
    a.merge(b)
    return a


def merge_results(a: UnitResult, b: UnitResult, copy: bool = False) -> UnitResult:
    """The merge task: ``b`` follows ``a``; the first failure (in token order) wins."""
    if a.stats is None:
        return a
    if b.stats is None:
        return b
    left = _copy.deepcopy(a.stats) if copy else a.stats  # Dask may share task inputs: do not mutate them
    left.merge(b.stats)
    return UnitResult(a.index, compact(left) if copy else left)


def failure_of(result: UnitResult) -> UnitResult | None:
    """A small task beside each unit: its failure (without a state), or None."""
    return None if result.stats is not None else result


@contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block (process-wide), then restored."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)


def compact(obj: Any, _seen: set[int] | None = None) -> Any:
    """``obj`` with every tensor view that keeps a larger buffer alive replaced by a copy of its own.

    States hold slices of chunk tensors (the open sequence runs at a unit's ends); pickling a slice would
    ship the whole chunk's buffer. Values are unchanged. Walks dicts, lists, tuples and moediag objects.
    """
    seen = set() if _seen is None else _seen
    if isinstance(obj, torch.Tensor):
        if obj.untyped_storage().nbytes() > obj.numel() * obj.element_size():
            return obj.clone()
        return obj
    if id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = compact(value, seen)
    elif isinstance(obj, list):
        obj[:] = [compact(v, seen) for v in obj]
    elif isinstance(obj, tuple):
        return tuple(compact(v, seen) for v in obj)
    elif type(obj).__module__.startswith("moediag.") and hasattr(obj, "__dict__"):
        for key, value in vars(obj).items():
            obj.__dict__[key] = compact(value, seen)
    return obj
