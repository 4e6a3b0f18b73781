"""Path safety for reading: what moediag may read (where it may write: :mod:`moediag.io.outputs`).

Reading: only regular files are opened (a FIFO or a device is refused *before* opening, so it can't block
or stream forever), text inputs have a size cap, and paths named inside an input (a checkpoint index, an
importer's sidecar) must resolve inside the input's folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from moediag.errors import InvalidInputError

#: ``--config`` / ``moediag.toml`` / ``pyproject.toml``
CONFIG_MAX_BYTES = 1 << 20
#: ``--baseline`` and other JSON documents read whole (``inspect --json --detail`` of a large model fits)
JSON_MAX_BYTES = 256 << 20
#: a JSON sidecar or index inside a checkpoint or dump (``config.json``, ``*.index.json``, metadata)
SIDECAR_MAX_BYTES = 64 << 20


def file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def os_error_message(exc: OSError) -> str:
    """``permission denied``, ``too many levels of symbolic links``, ... (lower-case, no errno prefix)."""
    text = exc.strerror or type(exc).__name__
    return text[:1].lower() + text[1:]


def require_regular(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a Path if it is an existing regular file (symlinks followed); else InvalidInputError.

    Uses ``stat`` only, so a FIFO or a device is never opened."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InvalidInputError("no such file", p) from None
    except OSError as exc:
        raise InvalidInputError(os_error_message(exc), p) from None
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{file_kind(st.st_mode)}, expected a regular {what}", p)
    return p


def open_regular(path: str | os.PathLike[str], what: str = "file") -> int:
    """An ``O_RDONLY`` descriptor of a regular file. Opened non-blocking and checked with ``fstat``, so a
    path swapped for a FIFO between a check and the open can't block either."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InvalidInputError("no such file", p) from None
    except IsADirectoryError:
        raise InvalidInputError(f"a folder, expected a regular {what}", p) from None
    except OSError as exc:
        raise InvalidInputError(os_error_message(exc), p) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InvalidInputError(f"{file_kind(st.st_mode)}, expected a regular {what}", p)
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return fd


def read_capped(path: str | os.PathLike[str], limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (InvalidInputError beyond, or on I/O errors)."""
    p = require_regular(path, what)
    fd = open_regular(p, what)
    try:
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InvalidInputError(os_error_message(exc), p) from None
    if len(data) > limit:
        raise InvalidInputError(f"{what} is larger than the {limit >> 10} KiB limit", p)
    return data


def read_text_capped(path: str | os.PathLike[str], limit: int, what: str = "file") -> str:
    data = read_capped(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{what} is not UTF-8 text (byte {exc.start})", path) from None


def is_within(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> bool:
    """Whether ``path`` resolves (symlinks followed) to ``root`` or somewhere below it."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def confined(root: str | os.PathLike[str], name: str, source: str | os.PathLike[str]) -> Path:
    """``root / name`` for a file name read from inside an input (``source``); InvalidInputError when the
    name is absolute or climbs out of ``root`` (``../x``, ``a/../../x``).

    The check is on the name, as written: symlinks the folder itself holds are the folder owner's choice
    and are followed (a Hugging Face cache snapshot links every file to ``../../blobs/``)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise InvalidInputError(f"invalid file name {name!r}", source)
    if os.path.isabs(name) or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise InvalidInputError(
            f"names the absolute path {name!r}; only files inside the folder are read", source
        )
    normal = os.path.normpath(name.replace("\\", "/"))
    if normal == ".." or normal.startswith(".." + os.sep) or normal.startswith("../"):
        raise InvalidInputError(
            f"names {name!r}, which lies outside {Path(root)}; refusing to read it", source
        )
    return Path(root) / normal
