"""Where units run: threads of this process (the default), local worker processes (``workers=N``) or a
Dask cluster (``scheduler=``); results come back in unit order so the merge tree is fixed.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from moediag.analysis.units import (
    ProgressFn,
    SchedulerError,
    T,
    UnitResult,
    WorkerError,
    WorkUnit,
    failure_of,
    merge_results,
    run_unit,
)
from moediag.errors import UsageError


def ordered(
    submit: Callable[[WorkUnit], Any], units: Sequence[WorkUnit], window: int
) -> Generator[Any, None, None]:
    """Futures' results in unit order, with at most ``window`` units in flight (finished states wait)."""
    todo = iter(units)
    pending: deque[Any] = deque()

    def more() -> None:
        unit = next(todo, None)
        if unit is not None:
            pending.append(submit(unit))

    for _ in range(window):
        more()
    try:
        while pending:
            result = pending.popleft().result()
            more()
            yield result
    finally:
        for future in pending:
            future.cancel()


def check_workers(workers: int | None) -> None:
    """``--workers`` below 1 is a usage error, for every command and input (None: this process)."""
    if workers is not None and workers < 1:
        raise UsageError("--workers must be at least 1")


class LocalRunner:
    """``workers`` processes on this machine (spawned: forking a process that has run torch is unsafe)."""

    def __init__(self, workers: int) -> None:
        check_workers(workers)
        self.workers = workers
        self._pool: Any = None

    def _executor(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def map(self, units: Sequence[WorkUnit]) -> Iterator[UnitResult]:
        from concurrent.futures.process import BrokenProcessPool

        pool = self._executor()
        stream = ordered(lambda u: pool.submit(run_unit, u), units, 2 * self.workers)
        index = 0
        try:
            for result in stream:
                index += 1
                yield result
        except BrokenProcessPool:
            self.close()
            unit = units[index]
            raise WorkerError(
                f"a worker process died while analysing {unit.describe()} (out of memory?); "
                "rerun with fewer --workers or a smaller --chunk-tokens",
                unit.files[0],
            ) from None
        finally:
            stream.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskRunner:
    """Units as tasks on a Dask distributed cluster (``dask scheduler`` address or a scheduler file)."""

    def __init__(self, address: str, timeout: float | None = None) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise SchedulerError(
                "--scheduler needs Dask distributed: pip install 'moediag[dask]'", address
            ) from None
        self.address = address
        if timeout is None:  # seconds to wait for the scheduler
            timeout = float(os.environ.get("MOEDIAG_DASK_TIMEOUT", "30"))
        try:
            if address.endswith(".json") and Path(address).is_file():
                self.client = Client(scheduler_file=address, timeout=timeout)
            else:
                self.client = Client(address, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SchedulerError(f"cannot connect to the Dask scheduler: {exc}", address) from None

    def reduce(self, units: Sequence[WorkUnit], progress: ProgressFn | None = None) -> UnitResult:
        """Run every unit and merge the states along the canonical tree, all on the cluster."""
        from distributed import as_completed

        tag = uuid.uuid4().hex[:12]
        level = self.client.map(run_unit, units, key=[f"moediag-unit-{tag}-{u.index}" for u in units])
        status = self.client.map(failure_of, level, key=[f"moediag-status-{tag}-{u.index}" for u in units])
        depth = 0
        while len(level) > 1:
            depth += 1
            nxt = [
                self.client.submit(
                    merge_results, level[i], level[i + 1], True, key=f"moediag-merge-{tag}-{depth}-{i // 2}"
                )
                for i in range(0, len(level) - 1, 2)
            ]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        root = level[0]
        del level  # only the root and the small status tasks stay referenced here
        by_key = {f.key: u for f, u in zip(status, units, strict=True)}
        try:
            for future in as_completed(status):
                unit = by_key[future.key]
                try:
                    failed = future.result()
                except Exception as exc:  # KilledWorker, CommClosedError, CancelledError ...
                    raise WorkerError(
                        f"the cluster lost the task for {unit.describe()}: {type(exc).__name__}: {exc}",
                        unit.files[0],
                    ) from None
                if failed is not None:
                    return failed
                if progress is not None:
                    progress(unit.tokens)
            try:
                result: UnitResult = root.result()
            except Exception as exc:
                raise WorkerError(
                    f"the cluster lost a merge task: {type(exc).__name__}: {exc}", units[0].root
                ) from None
            return result
        finally:
            self.client.cancel([root, *status])

    def close(self) -> None:
        self.client.close()


Runner = LocalRunner | DaskRunner


@contextmanager
def open_runner(workers: int | None = None, scheduler: str | None = None) -> Iterator[Runner | None]:
    """The runner for ``--workers`` / ``--scheduler`` (None: this process), closed on exit."""
    if workers is not None and scheduler is not None:
        raise UsageError("give --workers or --scheduler, not both (the cluster decides its own workers)")
    check_workers(workers)
    runner: Runner | None = None
    if scheduler is not None:
        runner = DaskRunner(scheduler)
    elif workers is not None and workers > 1:
        runner = LocalRunner(workers)
    try:
        yield runner
    finally:
        if runner is not None:
            runner.close()


def submit_task(runner: Runner, fn: Callable[..., T], *args: Any) -> Any:
    """Run any picklable ``fn(*args)`` on the runner's workers (a local process, or a Dask task) and
    return its future (``.result()``). For work that is not a trace unit: a checkpoint's layers."""
    if isinstance(runner, DaskRunner):
        return runner.client.submit(fn, *args, pure=False)
    return runner._executor().submit(fn, *args)
