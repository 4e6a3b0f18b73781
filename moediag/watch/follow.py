"""Following files that another process writes: new dumps, appended lines, rotation.

:class:`Follower` is polled; each :meth:`Follower.poll` lists what became readable since the last one:

- a **whole file** (a ``torch.save`` dump, a ``.safetensors`` file) once it is *complete*: its size and
  modification time have not changed for ``settle`` seconds. Names that writers use while writing
  (``.name``, ``*.tmp``, ``*.part``, ``*.partial``, ``*~``) are never read, so a writer that renames into
  place (atomic rename) is read on the first poll ``settle`` seconds after the rename;
- **new lines** of an appendable file (JSONL): the bytes after what was already consumed, up to the last
  newline (a half-written last line waits for its newline).

Files are known by device and inode, so a file renamed by log rotation (``x.jsonl`` -> ``x.jsonl.1``) is
followed under its new name from where it was, and the new ``x.jsonl`` is a new file. A file that shrank
below what was consumed was truncated (``copytruncate``): it is read again from the start. Rotated copies
(names ending in ``.1``, ``.2``, ``.gz``, ...) that were never seen are not read: they hold lines already
consumed. The first bytes of each file are fingerprinted, so an inode reused by a new file is not taken
for the old one.

Nothing is ever written into the followed folders; the consumed positions are :class:`FileState` records
that the caller keeps (see :mod:`moediag.watch.state`). Memory is bounded by ``max_read`` bytes per file
per poll, never by the size of a file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: names a writer uses for a file still being written
TEMP_NAME = re.compile(r"(^\..*)|(.*\.(tmp|part|partial|swp|crdownload|lock)$)|(.*~$)", re.I)
#: names log rotation gives to old files
ROTATED_NAME = re.compile(r".*\.(\d+|gz|bz2|xz|zst)$")
HEAD_BYTES = 64
DEFAULT_MAX_READ = 8 << 20


@dataclass
class FileState:
    """What has been consumed of one file (the unit of the resumable state file)."""

    path: str
    dev: int
    ino: int
    head: str  # sha1 of the first HEAD_BYTES bytes when first seen ('' if the file was empty)
    size: int = 0  # size when last looked at
    mtime_ns: int = 0
    offset: int = 0  # bytes consumed (appendable files)
    lines: int = 0  # lines consumed (appendable files), for line numbers in messages
    done: bool = False  # whole file read (or skipped as malformed)
    failed: bool = False  # the read failed: read again if the file changes
    stable_since: float | None = None  # monotonic time the size/mtime were first seen unchanged
    appendable: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("stable_since")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileState:
        fields = {k: d[k] for k in ("path", "dev", "ino", "head") if k in d}
        out = cls(**fields)
        for k in ("size", "mtime_ns", "offset", "lines"):
            setattr(out, k, int(d.get(k, 0)))
        out.done = bool(d.get("done", False))
        out.failed = bool(d.get("failed", False))
        out.appendable = bool(d.get("appendable", False))
        return out


@dataclass
class WholeFile:
    """A complete file, ready to be decoded once."""

    path: Path
    state: FileState


@dataclass
class NewLines:
    """Complete lines appended to a file: ``lines[i]`` is line number ``first_line + i``."""

    path: Path
    first_line: int
    lines: list[bytes]
    state: FileState


Ready = WholeFile | NewLines


def _head(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            data = fh.read(HEAD_BYTES)
    except OSError:
        return ""
    return hashlib.sha1(data).hexdigest() if data else ""


class Follower:
    """Polls ``sources`` (folders, searched recursively, or single files) for readable data.

    ``wants(path)`` says whether a file found in a folder is input (a file named in ``sources`` always
    is); ``appendable(path)`` whether it is read line by line as it grows (else whole, once complete).
    ``states`` maps ``(dev, ino)`` to what was consumed (restored from a state file to resume).
    """

    def __init__(
        self,
        sources: list[Path],
        wants: Callable[[Path], bool],
        appendable: Callable[[Path], bool],
        *,
        settle: float = 1.0,
        max_read: int = DEFAULT_MAX_READ,
        states: dict[tuple[int, int], FileState] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.sources = sources
        self.wants = wants
        self.appendable = appendable
        self.settle = settle
        self.max_read = max_read
        self.states: dict[tuple[int, int], FileState] = dict(states or {})
        self.clock = clock or time.monotonic
        self._verified: set[tuple[int, int]] = set()
        self._unreadable: set[tuple[int, int]] = set()
        #: (file, problem) found while polling, for the caller to report (it empties the list)
        self.problems: list[tuple[Path, str]] = []

    def _scan(self) -> Iterator[tuple[Path, os.stat_result, bool]]:
        """Every candidate file, its stat, and whether it was named explicitly (then always input)."""
        for src in self.sources:
            if src.is_dir():
                for root, dirs, files in os.walk(src):
                    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                    for name in sorted(files):
                        if TEMP_NAME.fullmatch(name):
                            continue
                        p = Path(root) / name
                        try:
                            st = p.stat()
                        except OSError:  # gone between listing and stat
                            continue
                        yield p, st, False
            else:
                try:
                    st = src.stat()
                except OSError:
                    continue
                yield src, st, True

    def poll(self) -> list[Ready]:
        """What became readable since the last poll, in path order."""
        now = self.clock()
        seen: set[tuple[int, int]] = set()
        ready: list[Ready] = []
        for path, st, explicit in self._scan():
            key = (st.st_dev, st.st_ino)
            if key in seen:  # a hard link or the same file named twice
                continue
            seen.add(key)
            state = self.states.get(key)
            if state is not None and self._reused(key, state, path, st):
                state = None  # the inode was reused by another file
            if state is None:
                if not explicit and (ROTATED_NAME.fullmatch(path.name) or not self.wants(path)):
                    continue
                state = FileState(
                    str(path), st.st_dev, st.st_ino, _head(path), appendable=self.appendable(path)
                )
                state.size, state.mtime_ns, state.stable_since = st.st_size, st.st_mtime_ns, now
                self.states[key] = state
                self._verified.add(key)
                if not state.appendable:
                    if self.settle <= 0:
                        ready.append(WholeFile(path, state))
                    continue
            state.path = str(path)
            if state.appendable:
                item = self._lines(path, st, state)
                if item is not None:
                    ready.append(item)
            else:
                changed = (st.st_size, st.st_mtime_ns) != (state.size, state.mtime_ns)
                if state.done and state.failed and changed:  # a failed file changed: try it again
                    state.done = state.failed = False
                if state.done:
                    continue
                if changed:
                    state.size, state.mtime_ns, state.stable_since = st.st_size, st.st_mtime_ns, now
                elif state.stable_since is None:
                    state.stable_since = now
                if now - (state.stable_since or now) >= self.settle:
                    ready.append(WholeFile(path, state))
        for key in [k for k in self.states if k not in seen]:  # deleted: forget (bounded state)
            del self.states[key]
            self._verified.discard(key)
        return ready

    def _reused(self, key: tuple[int, int], state: FileState, path: Path, st: os.stat_result) -> bool:
        """Whether a known inode now holds another file: its first bytes differ. Checked once per process
        for each file (after a restart) and whenever its size or mtime moved, so an idle folder of
        thousands of dumps costs one stat per file per poll, no reads."""
        moved = (st.st_size, st.st_mtime_ns) != (state.size, state.mtime_ns)
        if key in self._verified and not moved:
            return False
        self._verified.add(key)
        return bool(state.head) and st.st_size >= HEAD_BYTES and _head(path) != state.head

    def _lines(self, path: Path, st: os.stat_result, state: FileState) -> NewLines | None:
        if st.st_size < state.offset:  # truncated in place: start again
            state.offset = 0
            state.lines = 0
            state.head = _head(path)
        if not state.head and st.st_size > 0:
            state.head = _head(path)
        state.size, state.mtime_ns = st.st_size, st.st_mtime_ns
        if st.st_size == state.offset:
            return None
        try:
            with open(path, "rb") as fh:
                fh.seek(state.offset)
                data = fh.read(min(self.max_read, st.st_size - state.offset))
        except OSError as exc:  # unreadable for now (permissions, a stale mount): say so once, keep trying
            if state.key not in self._unreadable:
                self._unreadable.add(state.key)
                self.problems.append((path, f"cannot read ({exc.strerror or exc}); will keep trying"))
            return None
        self._unreadable.discard(state.key)
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) >= self.max_read:  # one line longer than max_read: skip it whole
                state.offset += len(data)
            return None
        chunk = data[: end + 1]
        lines = chunk.split(b"\n")[:-1]
        first = state.lines + 1
        state.offset += len(chunk)
        state.lines += len(lines)
        return NewLines(path, first, lines, state)

    @staticmethod
    def mark_done(state: FileState, failed: bool = False) -> None:
        """A whole file was read (``failed``: it could not be; it is read again if it changes)."""
        state.done = True
        state.failed = failed
