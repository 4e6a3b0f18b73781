"""Atomic output: write beside the target, then rename, so a failed run leaves nothing behind.

Temp files and folders are created private (0600/0700); :func:`publish` gives them (and, for a folder, the
files in it) the mode a plain ``open()``/``mkdir()`` would have had under the current umask before the
rename, so reports and traces written for CI artifacts are readable as users expect. An ``OSError`` while
writing (EACCES, EROFS, ENOSPC, ...) becomes a one-line :class:`~moediag.io.outputs.OutputError` naming the
target. Where the target may go at all is :func:`moediag.io.outputs.check_output`'s business.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moediag.io.outputs import output_error


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Give ``tmp`` (and the files of a folder) its normal mode and rename it over ``target``."""
    mask = _umask()
    if os.path.isdir(tmp):
        for entry in os.scandir(tmp):
            if entry.is_file(follow_symlinks=False):
                os.chmod(entry.path, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
    else:
        os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, target)


def make_parent(path: Path) -> None:
    """Create the folder an output goes into (OutputError naming ``path`` when that fails)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, path) from None


def write_atomic_with(target: str | os.PathLike[str], write: Callable[[str], Any]) -> Path:
    """Call ``write(temp_path)`` and move the result into place; on any failure remove the temp file."""
    path = Path(target)
    make_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(exc, path) from None
    os.close(fd)
    try:
        write(tmp)
        st = os.lstat(path) if os.path.lexists(path) else None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "is a folder", str(path))
        publish(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise output_error(exc, path) from None
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
