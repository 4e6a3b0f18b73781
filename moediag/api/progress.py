"""Progress callbacks the library takes from its callers (the CLI's bars), and silent defaults."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

#: ``progress(description, total)`` -> a context manager yielding ``advance(n)`` (the CLI's progress bar)
Progress = Callable[[str, int | None], AbstractContextManager[Callable[[int], None]]]
#: a progress bar over bytes: ``(label, total)`` -> context yielding ``(advance, grow)``
ByteProgress = Callable[
    [str, int], AbstractContextManager[tuple[Callable[[int], None], Callable[[int], None]]]
]
PathLike = str | os.PathLike[str]


@contextlib.contextmanager
def silent(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


@contextlib.contextmanager
def silent_bytes(
    description: str, total: int
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    yield (lambda n: None), (lambda n: None)


def by_bytes(progress: Progress | None) -> ByteProgress | None:
    """A plain progress bar used over bytes (a total that cannot grow)."""
    if progress is None:
        return None

    @contextlib.contextmanager
    def bar(description: str, total: int) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
        with progress(description, total) as advance:
            yield advance, (lambda n: None)

    return bar
