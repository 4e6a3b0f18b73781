"""Path safety in one place: what moediag may read, and where it may write.

Reading: only regular files are opened (a FIFO or a device is refused *before* opening, so it can't block
or stream forever), text inputs have a size cap, and paths named inside an input (a checkpoint index, an
importer's sidecar) must resolve inside the input's folder.

Writing (:func:`check_output`): an output never lands on one of the command's inputs (compared by real
path and by device + inode), never replaces a folder moediag did not write, and replaces an existing file
only when it looks like a moediag output or ``--force`` is given. docs/cli.md ("Outputs") is the user-facing
statement of these rules.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from moediag.errors import InvalidInputError, MoediagError

#: ``--config`` / ``moediag.toml`` / ``pyproject.toml``
CONFIG_MAX_BYTES = 1 << 20
#: ``--baseline`` and other JSON documents read whole (``inspect --json --detail`` of a large model fits)
JSON_MAX_BYTES = 256 << 20
#: a JSON sidecar or index inside a checkpoint or dump (``config.json``, ``*.index.json``, metadata)
SIDECAR_MAX_BYTES = 64 << 20
#: bytes sniffed from an existing output to tell whether moediag wrote it
_SNIFF_BYTES = 1 << 16
MARKER = b"moediag"


class OutputError(MoediagError):
    """An output that must not or cannot be written (onto an input, over foreign data, unwritable)."""

    slug = "output"


def _kind(mode: int) -> str:
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
        raise InvalidInputError(f"{_kind(st.st_mode)}, expected a regular {what}", p)
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
        raise InvalidInputError(f"{_kind(st.st_mode)}, expected a regular {what}", p)
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


# -- outputs ---------------------------------------------------------------------------------------
def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _stat(path: str | os.PathLike[str]) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def is_trace_file(path: Path) -> bool:
    """A safetensors file whose header says moediag-trace (header only; any problem means no)."""
    try:
        from moediag.io.safetensors_file import SafetensorsFile
        from moediag.trace.schema import FORMAT_NAME

        return SafetensorsFile(path).metadata.get("format") == FORMAT_NAME
    except (MoediagError, OSError, ValueError):
        return False


def is_trace_folder(path: Path) -> bool:
    """A folder holding only moediag trace shards (what TraceWriter writes), or an empty folder."""
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    return all(e.suffix == ".safetensors" and e.is_file() and is_trace_file(e) for e in entries)


def looks_like_moediag_output(path: Path) -> bool:
    """An existing file that moediag wrote: a trace, or text/image output carrying the ``moediag`` mark."""
    if path.suffix == ".safetensors":
        return is_trace_file(path)
    try:
        fd = open_regular(path)
    except InvalidInputError:
        return False
    with os.fdopen(fd, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    return MARKER in head


def check_output(
    target: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    force: bool = False,
    folder: bool = False,
    flag: str = "-o",
) -> Path:
    """Refuse (:class:`OutputError`, exit 2) an output that would destroy data. Returns ``target``.

    - never onto an input, never a folder holding an input, never inside a file;
    - an existing folder is replaced only when it is a moediag trace folder (``folder=True``);
    - an existing file is replaced only when moediag wrote it, or with ``force``;
    - FIFOs, devices and sockets are never written.
    Announces (stderr) when a previous moediag output is replaced.
    """
    t = Path(target)
    name = f"output ({flag})"
    tst = _stat(t)
    for src in inputs:
        sst = _stat(src)
        if sst is None:
            continue
        if tst is not None and _same_file(tst, sst):
            raise OutputError(f"{name} is one of the inputs; refusing to write over it", t)
        if tst is not None and stat.S_ISDIR(tst.st_mode) and is_within(src, t):
            raise OutputError(f"{name} holds the input {src}; refusing to replace it", t)
        if os.path.realpath(src) == os.path.realpath(t):
            raise OutputError(f"{name} is one of the inputs; refusing to write over it", t)
    parent = t.parent
    for up in (parent, *parent.parents):
        ust = _stat(up)
        if ust is None:
            continue
        if not stat.S_ISDIR(ust.st_mode):
            raise OutputError(f"{name}: {up} is not a folder", t)
        break
    if tst is None:
        if t.is_symlink():
            raise OutputError(f"{name} is a dangling symbolic link; refusing to write through it", t)
        return t
    mode = tst.st_mode
    if stat.S_ISDIR(mode):
        if not folder:
            raise OutputError(f"{name} is a folder; name a file to write", t)
        if not is_trace_folder(t):
            raise OutputError(
                f"{name} is an existing folder that is not a moediag trace; refusing to replace it "
                "(moediag only deletes what it wrote)",
                t,
            )
        _announce(t, "trace folder")
        return t
    if not stat.S_ISREG(mode):
        raise OutputError(f"{name} is {_kind(mode)}; refusing to write to it", t)
    if folder and t.suffix != ".safetensors":
        raise OutputError(f"{name} is an existing file; a folder trace needs a folder path", t)
    if looks_like_moediag_output(t):
        _announce(t, "file")
        return t
    if not force:
        raise OutputError(
            f"{name} exists and was not written by moediag; refusing to replace it "
            "(pass --force to replace it)",
            t,
        )
    return t


def _announce(path: Path, what: str) -> None:
    import sys

    sys.stderr.write(f"moediag: note: replacing the previous moediag output {what} {path}\n")


def output_error(exc: OSError, target: str | os.PathLike[str]) -> OutputError:
    """An OSError met while writing ``target`` as a one-line error naming it."""
    reason = os_error_message(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    return OutputError(f"cannot write: {reason}", target)


FORCE_HELP = "Replace an existing output file that moediag did not write (never a folder, never an input)."
