"""Reading safetensors files by byte range, without a long-lived memory map.

The safetensors header (an 8-byte little-endian length, then JSON) gives every tensor's dtype, shape and
byte range, so any rows of any tensor can be read with one ``pread``. Memory is bounded by what the
caller asks for; nothing is mapped, so pages read earlier do not stay resident in this process.

Every structural problem is raised as :class:`~moediag.errors.InvalidInputError` naming the file.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moediag.errors import InvalidInputError
from moediag.io import strict_json
from moediag.io.paths import open_regular, os_error_message

#: The same bound the safetensors library itself applies to the JSON header.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# Present in real checkpoints (FP8, unsigned ints); readable as raw bytes, sized here.
_EXTRA_ITEMSIZE = {"U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1}
for _name, _attr in (
    ("U16", "uint16"),
    ("U32", "uint32"),
    ("U64", "uint64"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
):
    if hasattr(torch, _attr):
        DTYPES[_name] = getattr(torch, _attr)

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
INT_DTYPES = {"I64", "I32", "I16", "I8", "U8", "U16", "U32", "U64"}


def itemsize(dtype: str) -> int:
    if dtype in DTYPES:
        return torch.empty((), dtype=DTYPES[dtype]).element_size()
    if dtype in _EXTRA_ITEMSIZE:
        return _EXTRA_ITEMSIZE[dtype]
    raise KeyError(dtype)


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies in its file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def row_bytes(self) -> int:
        """Bytes per index of the first dimension."""
        if not self.shape:
            return self.nbytes
        return math.prod(self.shape[1:]) * itemsize(self.dtype)


class SafetensorsFile:
    """A parsed safetensors header plus ranged reads. Opening reads only the header."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tensors: dict[str, TensorInfo] = {}
        self.metadata: dict[str, str] = {}
        self._parse()

    # -- header --------------------------------------------------------------------------------
    def _fail(self, message: str) -> InvalidInputError:
        return InvalidInputError(message, self.path)

    def _parse(self) -> None:
        # a FIFO or a device is refused before it is opened (it could block or stream forever)
        fd = open_regular(self.path, "safetensors file")
        try:
            with os.fdopen(fd, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                prefix = fh.read(8)
                if len(prefix) < 8:
                    raise self._fail(f"not a safetensors file ({size} bytes, too short for a header)")
                (n,) = struct.unpack("<Q", prefix)
                if n > MAX_HEADER_BYTES:
                    raise self._fail(
                        f"not a safetensors file, or a corrupt one: header length {n} exceeds the "
                        f"{MAX_HEADER_BYTES}-byte limit"
                    )
                if 8 + n > size:
                    raise self._fail(
                        f"truncated or not a safetensors file: header claims {n} bytes, file has {size}"
                    )
                raw = fh.read(n)
        except OSError as exc:
            raise self._fail(os_error_message(exc)) from None
        try:
            header = strict_json.loads(raw)
        except strict_json.StrictJSONError as exc:
            raise self._fail(f"not a safetensors file: header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise self._fail("malformed safetensors header: expected a JSON object")
        data_start = 8 + n
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self._fail("malformed safetensors header: __metadata__ must map strings to strings")
        self.metadata = dict(meta)
        spans: list[tuple[int, int, str]] = []
        for name, info in header.items():
            self.tensors[name] = t = self._tensor_info(name, info, data_start)
            spans.append((t.start, t.end, name))
        spans.sort()
        pos = data_start
        for start, end, name in spans:
            if start < pos:
                raise self._fail(f"malformed safetensors header: tensor {name!r} overlaps another")
            pos = end
        if pos > size:
            raise self._fail(f"truncated: tensor data ends at byte {pos} but the file has {size} bytes")

    def _tensor_info(self, name: str, info: Any, data_start: int) -> TensorInfo:
        if not isinstance(info, dict):
            raise self._fail(f"malformed safetensors header: entry {name!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or (dtype not in DTYPES and dtype not in _EXTRA_ITEMSIZE):
            raise self._fail(f"malformed safetensors header: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise self._fail(f"malformed safetensors header: tensor {name!r} has invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[1] < offsets[0]
        ):
            raise self._fail(f"malformed safetensors header: tensor {name!r} has invalid data_offsets")
        expected = math.prod(shape) * itemsize(dtype)
        if dtype == "F4":  # two values a byte
            expected = (math.prod(shape) + 1) // 2
        if offsets[1] - offsets[0] != expected:
            raise self._fail(
                f"malformed safetensors header: tensor {name!r} spans {offsets[1] - offsets[0]} bytes but "
                f"{dtype}{shape} needs {expected}"
            )
        return TensorInfo(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])

    # -- data ----------------------------------------------------------------------------------
    def read(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """Rows ``[a, b)`` of a tensor (all of it when ``rows`` is None), as a new CPU tensor."""
        info = self.tensors[name]
        if info.dtype not in DTYPES:
            raise self._fail(f"tensor {name!r} has dtype {info.dtype}, which this torch cannot read")
        if rows is None:
            a, b = 0, (info.shape[0] if info.shape else 1)
        else:
            a, b = rows
        if info.shape and not (0 <= a <= b <= info.shape[0]):
            raise IndexError(f"rows {a}:{b} outside {name} {info.shape}")
        rb = info.row_bytes
        start = info.start + a * rb
        nbytes = (b - a) * rb if info.shape else info.nbytes
        shape = ((b - a), *info.shape[1:]) if info.shape else ()
        buf = bytearray(nbytes)
        if nbytes:
            try:
                with os.fdopen(open_regular(self.path, "safetensors file"), "rb") as fh:
                    fh.seek(start)
                    got = fh.readinto(buf)
            except OSError as exc:
                raise self._fail(f"reading tensor {name!r}: {os_error_message(exc)}") from None
            if got != nbytes:
                raise self._fail(f"truncated while reading tensor {name!r}")
        if not nbytes:
            return torch.empty(shape, dtype=DTYPES[info.dtype])
        return torch.frombuffer(buf, dtype=DTYPES[info.dtype]).reshape(shape)


def looks_like_safetensors(path: str | os.PathLike[str]) -> bool:
    """Cheap sniff: a plausible header length followed by '{'."""
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(9)
    except OSError:
        return False
    if len(prefix) < 9:
        return False
    (n,) = struct.unpack("<Q", prefix[:8])
    return 0 < n <= MAX_HEADER_BYTES and prefix[8:9] == b"{"
