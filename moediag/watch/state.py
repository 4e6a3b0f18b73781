"""The watcher's resumable state: a small JSON file kept outside the watched folders.

It holds what was consumed of each followed file (:class:`~moediag.watch.follow.FileState`: inode, offset,
line count, done), the counters, the step count, and each layer's cumulative load (expert counts, first
choices, tokens) so cumulative figures survive a restart. Its size is O(files followed + layers x experts),
never the size of the data. It is written atomically (temp file + rename) beside itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moediag.errors import InvalidInputError, UsageError
from moediag.watch.follow import FileState

STATE_FORMAT = "moediag-watch-state"
STATE_VERSION = 1


@dataclass
class WatchState:
    source: list[str]
    format: str
    files: list[FileState] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    step: int = 0
    #: layer -> {"num_experts", "top_k", "counts", "top1_counts", "tokens", "empty_slots", "count_only"}
    cumulative: dict[int, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        doc = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "source": self.source,
            "watch_format": self.format,
            "step": self.step,
            "counters": self.counters,
            "files": [f.to_dict() for f in self.files],
            "cumulative": {str(k): v for k, v in sorted(self.cumulative.items())},
        }
        return json.dumps(doc, separators=(",", ":")) + "\n"


def default_state_path(sources: list[Path], fmt: str) -> Path:
    """``$XDG_STATE_HOME/moediag/watch-<hash of the sources and format>.json`` (``~/.local/state``)."""
    import hashlib

    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    key = hashlib.sha1(json.dumps([fmt, *[str(p.resolve()) for p in sources]]).encode()).hexdigest()[:16]
    return base / "moediag" / f"watch-{key}.json"


def check_outside(state_path: Path, sources: list[Path]) -> None:
    """The state file must not be in (or be) anything watched: watch never writes where it reads."""
    target = state_path.resolve()
    for src in sources:
        s = src.resolve()
        if target == s or (s.is_dir() and target.is_relative_to(s)):
            raise UsageError(
                f"--state {state_path} is inside the watched {src}: moediag watch never writes into "
                "what it watches; put the state file elsewhere"
            )


def load_state(path: Path, sources: list[Path], fmt: str) -> WatchState | None:
    """The saved state, or None when there is none. A state of other sources or another format is an error
    (resuming from it would skip or double-count data)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read the watch state ({exc})", path) from None
    try:
        doc = json.loads(text)
        if doc.get("format") != STATE_FORMAT or int(doc.get("version", 0)) != STATE_VERSION:
            raise ValueError("not a moediag watch state file (version 1)")
        source = [str(s) for s in doc["source"]]
        want = [str(p.resolve()) for p in sources]
        if source != want or doc["watch_format"] != fmt:
            raise InvalidInputError(
                f"the watch state is for {doc['watch_format']} {', '.join(source)}, not {fmt} "
                f"{', '.join(want)}; pass another --state file (or delete this one to start over)",
                path,
            )
        return WatchState(
            source=source,
            format=str(doc["watch_format"]),
            files=[FileState.from_dict(f) for f in doc.get("files", [])],
            counters={str(k): int(v) for k, v in (doc.get("counters") or {}).items()},
            step=int(doc.get("step", 0)),
            cumulative={int(k): dict(v) for k, v in (doc.get("cumulative") or {}).items()},
        )
    except InvalidInputError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInputError(f"not a usable watch state file ({exc})", path) from None


def save_state(path: Path, state: WatchState) -> None:
    from moediag.io.atomic import write_atomic

    write_atomic(path, state.to_json())
