"""Where moediag may write (:func:`check_output`): an output never lands on one of the command's inputs
(compared by real path and by device + inode), never replaces a folder moediag did not write, and replaces
an existing file only when it looks like a moediag output or ``--force`` is given. docs/cli.md ("Outputs")
is the user-facing statement of these rules; what may be read is :mod:`moediag.io.paths`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from moediag.errors import InvalidInputError, MoediagError
from moediag.io.paths import file_kind, is_within, open_regular, os_error_message

#: bytes sniffed from an existing output to tell whether moediag wrote it
_SNIFF_BYTES = 1 << 16


MARKER = b"moediag"


class OutputError(MoediagError):
    """An output that must not or cannot be written (onto an input, over foreign data, unwritable)."""

    slug = "output"


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


#: the files beside a checkpoint or trace file that reading it may open (its config, index, other shards)
_SIBLINGS = ("*.safetensors", "config.json", "*.index.json")


def _files_read(inputs: list[str | os.PathLike[str]]) -> list[Path]:
    """Every file the inputs stand for: a folder's files (two levels down, as the importers read), and for
    a checkpoint or trace file, itself and the config, indexes and shards beside it."""
    out: list[Path] = []
    for src in inputs:
        p = Path(src)
        try:
            if p.is_dir():
                out += [c for c in p.iterdir() if c.is_file()]
                out += [g for c in p.iterdir() if c.is_dir() for g in c.iterdir() if g.is_file()]
            elif p.is_file():
                out.append(p)
                if p.suffix == ".safetensors" or p.name.endswith(".index.json") or p.name == "config.json":
                    out += [c for pattern in _SIBLINGS for c in p.parent.glob(pattern) if c.is_file()]
        except OSError:
            continue
    return out


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
    - an existing file inside an input folder (a checkpoint's shard or config) never, unless it is one of
      moediag's own text or image outputs (not a trace shard: that is input); no new file in an input
      trace folder;
    - never a file an input reads under another name (a hard link, a symlink), nor the config, index or
      shards beside an input checkpoint or trace file;
    - an existing folder is replaced only when it is a moediag trace folder (``folder=True``);
    - an existing file is replaced only when moediag wrote it, or with ``force``;
    - FIFOs, devices and sockets are never written.
    Announces (stderr) when a previous moediag output is replaced.
    """
    t = Path(target)
    name = f"output ({flag})"
    tst = _stat(t)
    inputs = list(inputs)
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
        if any(
            os.path.realpath(t.parent) == os.path.realpath(d) and is_trace_folder(Path(d)) for d in inputs
        ):
            raise OutputError(f"{name} is inside the input trace folder {t.parent}; refusing to add to it", t)
        return t
    mode = tst.st_mode
    for src in inputs:  # what an input folder holds (shards, a config, trace folders) is read as input too
        sst = _stat(src)
        if sst is None or not stat.S_ISDIR(sst.st_mode) or not is_within(t, src):
            continue
        if stat.S_ISDIR(mode) or t.suffix == ".safetensors" or not looks_like_moediag_output(t):
            raise OutputError(
                f"{name} is inside the input folder {src}; refusing to replace it, --force or not", t
            )
    for f in _files_read(inputs):  # a hard link or symlink to a file an input reads, or its sibling shards
        fst = _stat(f)
        if (
            fst is not None
            and _same_file(tst, fst)
            and (t.suffix == ".safetensors" or not looks_like_moediag_output(t))
        ):
            raise OutputError(
                f"{name} is {f}, a file the inputs read (or another name for it); refusing to replace it", t
            )
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
        raise OutputError(f"{name} is {file_kind(mode)}; refusing to write to it", t)
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

    cli = sys.modules.get("moediag.cli.app")  # a note: silenced by the CLI's --quiet when it runs
    if cli is not None and cli.is_quiet():
        return
    sys.stderr.write(f"moediag: note: replacing the previous moediag output {what} {path}\n")


def output_error(exc: OSError, target: str | os.PathLike[str]) -> OutputError:
    """An OSError met while writing ``target`` as a one-line error naming it."""
    reason = os_error_message(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    return OutputError(f"cannot write: {reason}", target)


FORCE_HELP = "Replace an existing output file that moediag did not write (never a folder, never an input)."
