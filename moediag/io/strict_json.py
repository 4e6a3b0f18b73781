"""Bounded, strict JSON for everything moediag reads from files it did not write.

Python's ``json`` accepts ``NaN``/``Infinity``, turns ``1e999`` into ``inf``, raises ``RecursionError`` on
deep nesting and ``ValueError`` on integers over 4,300 digits. :func:`loads` refuses all of these with a
``ValueError`` whose message is user-facing (callers add the file name), and bounds the nesting depth.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: deeper than any real config, index, header or dump (a checkpoint config nests 3-4 levels)
MAX_DEPTH = 64
#: digits of one number: int64 has 19, and a float needs no more than ~25 significant ones
MAX_NUMBER_CHARS = 40


class StrictJSONError(ValueError):
    """Not JSON, or JSON moediag refuses (non-finite numbers, absurd numbers, too deep)."""


def _constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise StrictJSONError(f"number {text[:20]}... has {len(text)} characters")
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"number {text} is out of range")
    return value


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise StrictJSONError(f"integer {text[:20]}... has {len(text)} digits")
    return int(text)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise StrictJSONError(f"key {dup[:40]!r} appears twice in one object")
    return out


def _check_depth(doc: Any, limit: int) -> None:
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                raise StrictJSONError(f"nested deeper than {limit} levels")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``text`` strictly; :class:`StrictJSONError` with a one-line reason on anything refused."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StrictJSONError(f"not UTF-8 text (byte {exc.start})") from None
    try:
        doc = json.loads(
            text, parse_constant=_constant, parse_float=_float, parse_int=_int, object_pairs_hook=_pairs
        )
    except StrictJSONError:
        raise
    except RecursionError:
        raise StrictJSONError(f"nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. Python's own integer-digits limit
        raise StrictJSONError(f"not valid JSON: {exc}") from None
    _check_depth(doc, max_depth)
    return doc


def load_file(path: Any, *, limit: int, what: str = "JSON file", max_depth: int = MAX_DEPTH) -> Any:
    """A regular file of at most ``limit`` bytes, parsed strictly; InvalidInputError naming the file."""
    from moediag.errors import InvalidInputError
    from moediag.io.paths import read_capped

    data = read_capped(path, limit, what)
    try:
        return loads(data, max_depth=max_depth)
    except StrictJSONError as exc:
        reason = str(exc)
        raise InvalidInputError(
            f"{what} is {reason}" if reason.startswith("not ") else f"{what}: {reason}", path
        ) from None
