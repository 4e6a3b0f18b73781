"""One writer for the ``meta`` block of every JSON document moediag prints (``inspect`` of a trace and of a
checkpoint, ``check``, ``replay``, ``compare``).

Every ``meta`` starts with the same keys: ``format`` (the document's schema version), ``moediag_version``,
``kind``, ``created`` (UTC, seconds), then the document's own; ``options`` holds every setting that changes
a figure (docs/json.md).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any

__all__ = ["meta", "now", "options_of"]


def now() -> str:
    """The UTC time, to the second, as every document's ``created``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def options_of(options: Any) -> dict[str, Any]:
    """A settings dataclass (``StatsOptions``) as JSON values: every field, tuples as lists."""

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        return value

    return {f.name: plain(getattr(options, f.name)) for f in dataclasses.fields(options)}


def meta(kind: str, format: int, *, created: str | None = None, **fields: Any) -> dict[str, Any]:
    """The ``meta`` block: ``format``, ``moediag_version``, ``kind``, ``created``, then ``fields`` in order
    (``created=None`` leaves it out, for documents that have no time of their own)."""
    from moediag import __version__

    out: dict[str, Any] = {"format": format, "moediag_version": __version__, "kind": kind}
    if created is not None:
        out["created"] = created
    out.update(fields)
    return out
