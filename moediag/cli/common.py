"""Helpers shared by commands: consoles, progress bars, JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

from moediag.errors import UsageError


def stdout_console() -> Console:
    """Tables for people: plain text (no ANSI codes at all) when piped, under --no-color or NO_COLOR."""
    return Console(highlight=False, soft_wrap=False, **_colour())


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, **_colour())


def _colour() -> dict[str, Any]:
    from moediag.cli.flags import colour_enabled

    return {} if colour_enabled() else {"color_system": None}


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False, default=_default) + "\n")


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


WORKERS_HELP = "Analyse the trace's shards in N local processes (same result as one; docs/scale.md)."
SCHEDULER_HELP = (
    "Analyse on a Dask cluster: the scheduler's address (tcp://host:8786) or its scheduler file "
    "(.json); needs moediag[dask] and the trace on a path every worker can read (docs/scale.md)."
)


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr, shown only when stderr is a terminal (and not under --quiet).
    Yields an ``advance(n)``. ``total=None``: the work has no known size; a spinner counts the steps."""
    from moediag.cli.flags import is_quiet

    console = stderr_console()
    if not console.is_terminal or total == 0 or is_quiet():
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        if total
        else (SpinnerColumn(), TextColumn("{task.description}: {task.completed}"), TimeElapsedColumn())
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextmanager
def byte_progress(
    description: str, total: int
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A progress bar over bytes (size, speed, time left) on stderr when it is a terminal. Yields
    ``(advance, grow)``: ``advance(n)`` after reading n bytes, ``grow(n)`` when n more are planned."""
    console = stderr_console()
    if not console.is_terminal or not total:
        yield (lambda n: None), (lambda n: None)
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        held = [total]

        def grow(n: int) -> None:
            held[0] += n
            progress.update(task, total=held[0])

        yield (lambda n: progress.advance(task, n)), grow


PATH_WINDOW_HELP = (
    "Also track routing paths over MoE layers FIRST..LAST (inclusive; repeatable), besides the full depth."
)


def parse_path_windows(specs: list[str] | None, layers: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """``--path-window FIRST:LAST`` values, checked against the trace's MoE layers."""
    present = sorted(layers)
    out = []
    for spec in specs or []:
        try:
            first, last = (int(x) for x in spec.split(":"))
        except ValueError:
            raise UsageError(f"--path-window {spec}: expected FIRST:LAST, e.g. 0:3") from None
        if first > last:
            raise UsageError(f"--path-window {spec}: FIRST must not exceed LAST")
        inside = [x for x in present if first <= x <= last]
        if not inside:
            raise UsageError(
                f"--path-window {spec}: no MoE layer of the trace in {first}..{last} "
                f"(layers: {', '.join(map(str, present))})"
            )
        if inside[0] != first or inside[-1] != last:
            from moediag.cli.app import echo_err

            echo_err(f"moediag: note: --path-window {spec} covers the MoE layers {inside[0]}..{inside[-1]}")
        out.append((first, last))
    return tuple(out)


def require_positive(**values: float | None) -> None:
    """``UsageError`` naming the first flag whose value is given and not positive (``cold_eps`` ->
    ``--cold-eps``)."""
    for name, value in values.items():
        if value is not None and value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive (got {value:g})")


def given_options(ctx: typer.Context, names: Iterable[str]) -> list[str]:
    """The flags among the parameters ``names`` that the user set (not left at their defaults), spelt as
    typed: ``--no-weights`` for a ``--weights/--no-weights`` switch turned off."""
    wanted = set(names)
    out = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name in wanted else None
        # by name: typer may carry its own copy of click, whose ParameterSource is another enum
        if source is None or source.name == "DEFAULT":
            continue
        off = getattr(param, "secondary_opts", None) and ctx.params.get(param.name) is False
        out.append(param.secondary_opts[0] if off else param.opts[0])
    return out


def explicit(ctx: typer.Context, **values: Any) -> dict[str, Any]:
    """The values among ``values`` (parameter name = value) that the user set on the command line; the
    others stay unset so the config file (moediag.options) can supply them."""
    out = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name != "DEFAULT":
            out[name] = value
    return out
