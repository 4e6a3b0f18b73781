"""Reading Megatron-Core's router dumps record by record: JSONL lines (strict JSON), their fields, the
binary sidecars of logits and hidden states, steps, the router state, top-k indices and tokens-per-expert
rows. Shared by ``moediag import`` (moediag.importers.megatron) and the watcher (moediag.watch.decoders).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

from moediag.errors import InvalidInputError
from moediag.importers.base import (
    check_ids,
    int_tensor,
    rank_of,
    torch_load,
)
from moediag.io import strict_json
from moediag.io.paths import confined, open_regular


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        fh = os.fdopen(open_regular(path, "JSONL file"), "rb")
    except OSError as exc:
        raise InvalidInputError(f"cannot read ({exc.strerror})", path) from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            obj = parse_line(raw, path, lineno)
            if obj is not None:
                yield lineno, obj


def parse_line(line: str | bytes, path: Path, lineno: int) -> dict[str, Any] | None:
    """One JSONL line -> its object (None for a blank line); anything else is one line naming the file."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"line {lineno}: not UTF-8 text", path) from None
    if not line.strip():
        return None
    try:
        obj = strict_json.loads(line)
    except strict_json.StrictJSONError as exc:
        raise InvalidInputError(f"line {lineno}: {exc}", path) from None
    if not isinstance(obj, dict):
        raise InvalidInputError(f"line {lineno}: expected a JSON object", path)
    return obj


def int_field(rec: dict[str, Any], key: str, path: Path, lineno: int) -> int:
    v = rec.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise InvalidInputError(f"line {lineno}: field {key!r} is {v!r}, expected an integer", path)
    return v


class Sidecar:
    """Ranged reads of a raw bfloat16 sidecar file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO | None = None
        self._size = 0

    def read(self, offset: int, nbytes: int, shape: list[int], context: str) -> torch.Tensor:
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(isinstance(d, int) and d >= 0 for d in shape)
        ):
            raise InvalidInputError(f"{context}: shape {shape!r} is not [tokens, width]", self.path)
        if nbytes != math.prod(shape) * 2:
            raise InvalidInputError(f"{context}: {nbytes} bytes cannot hold bfloat16 {shape}", self.path)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InvalidInputError(f"{context}: offset {offset!r} is not a non-negative integer", self.path)
        if self._fh is None:
            if not self.path.exists():
                raise InvalidInputError(f"sidecar file referenced by {context} is missing", self.path)
            # a regular file (no FIFO) that stays inside the trace's folder (no symlink out)
            confined(self.path.parent, self.path.name, self.path)
            self._fh = os.fdopen(open_regular(self.path, "sidecar file"), "rb")
            self._size = os.fstat(self._fh.fileno()).st_size
        if offset + nbytes > self._size:
            raise InvalidInputError(
                f"{context}: truncated sidecar (wanted {nbytes} bytes at offset {offset}, the file has "
                f"{self._size})",
                self.path,
            )
        self._fh.seek(offset)
        data = self._fh.read(nbytes)
        if len(data) != nbytes:
            raise InvalidInputError(
                f"{context}: truncated sidecar (wanted {nbytes} bytes at offset {offset})", self.path
            )
        if not nbytes:
            return torch.empty(shape, dtype=torch.bfloat16)
        return torch.frombuffer(bytearray(data), dtype=torch.int16).view(torch.bfloat16).reshape(shape)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def step_groups(path: Path) -> Iterator[tuple[int, list[tuple[int, dict[str, Any]]]]]:
    """Consecutive records of one step."""
    current: int | None = None
    group: list[tuple[int, dict[str, Any]]] = []
    for lineno, rec in jsonl_records(path):
        step = int_field(rec, "step", path, lineno)
        if current is not None and step != current:
            yield current, group
            group = []
        current = step
        group.append((lineno, rec))
    if current is not None and group:
        yield current, group


def router_state(files: list[Path]) -> dict[int, dict[str, Any]]:
    for f in files:
        p = f.parent / f"router_state_rank{rank_of(f, 0)}.pt"
        if p.is_file():
            obj = torch_load(p)
            if not isinstance(obj, dict):
                raise InvalidInputError(
                    "expected a dict {layer: {weight, expert_bias, score_function, topk}}", p
                )
            return {int(k): v for k, v in obj.items() if isinstance(v, dict)}
    return {}


def top_indices(rec: dict[str, Any], path: Path, lineno: int, num_experts: int) -> torch.Tensor:
    """A router-trace record's ``top_indices`` as int64 ``[num_tokens, topk]``, checked."""
    where = f"line {lineno}"
    n = int_field(rec, "num_tokens", path, lineno)
    k = int_field(rec, "topk", path, lineno)
    if "top_indices" not in rec:
        raise InvalidInputError(f"{where}: no top_indices", path)
    ids = int_tensor(rec["top_indices"], path, f"{where}: top_indices")
    try:
        ids = ids.reshape(-1, k)
    except RuntimeError:
        raise InvalidInputError(f"{where}: top_indices is not a [tokens, topk] list", path) from None
    if ids.shape[0] != n:
        raise InvalidInputError(f"{where}: top_indices has {ids.shape[0]} rows but num_tokens={n}", path)
    check_ids(ids, num_experts, path, where)
    return ids


def tpe_rows(rec: dict[str, Any], path: Path, lineno: int) -> torch.Tensor:
    """A tokens-per-expert record's ``tpe`` as int64 ``[rows, experts]`` (one step per row), checked."""
    if "tpe" not in rec:
        raise InvalidInputError(f"line {lineno}: tpe is not a list of count lists", path)
    rows = int_tensor(rec["tpe"], path, f"line {lineno}: tpe")
    if rows.dim() == 1:
        rows = rows[None]
    if rows.dim() != 2:
        raise InvalidInputError(f"line {lineno}: tpe has shape {list(rows.shape)}", path)
    if rows.numel() and int(rows.min()) < 0:
        raise InvalidInputError(f"line {lineno}: negative counts", path)
    return rows
