"""Atomic output: write beside the target, then rename, so a failed run leaves nothing behind.

Temp files and folders are created private (0600/0700); :func:`publish` gives them the mode a plain
``open()``/``mkdir()`` would have had under the current umask before the rename, so reports and traces
written for CI artifacts are readable as users expect.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Give ``tmp`` its normal mode and rename it over ``target``."""
    mode = 0o777 if os.path.isdir(tmp) else 0o666
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, target)


def write_atomic_with(target: str | os.PathLike[str], write: Callable[[str], Any]) -> Path:
    """Call ``write(temp_path)`` and move the result into place; on any failure remove the temp file."""
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic(target: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write bytes (or UTF-8 text) atomically."""
    raw = data.encode("utf-8") if isinstance(data, str) else data

    def write(tmp: str) -> None:
        Path(tmp).write_bytes(raw)

    return write_atomic_with(target, write)
