"""Byte-range reads of expert matrices: open files kept for a pass, and one row reader per matrix that
turns rows ``[r0, r1)`` of one expert into float32 (plain floats copied, FP8 and MXFP4 dequantised).
Only the bytes asked for are read: the screen reads a small sample of every expert this way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from moediag.checkpoint.dequant import decode_fp8, dequant_fp8, dequant_mxfp4
from moediag.checkpoint.inventory import Inventory, TensorRef
from moediag.checkpoint.structure import ExpertMatrix, MoEBlock
from moediag.errors import InvalidInputError
from moediag.io.safetensors_file import DTYPES, itemsize

__all__ = ["Files", "RowReader", "fp8_block", "fp8_scale_misfit", "itemsize", "load_tensor_f32", "row_reader"]


@dataclass
class RowReader:
    """Reads rows ``[r0, r1)`` of one expert's matrix as float32 into ``out`` [r1 - r0, cols]."""

    rows: int
    cols: int
    read: Callable[[Files, int, int, int, torch.Tensor], None]
    bytes_per_row: int
    #: for plain float data: where rows [r0, r1) of expert e lie, as (tensor, first element, stop element)
    span: Callable[[int, int, int], tuple[TensorRef, int, int]] | None = None


def _quant_config(inv: Inventory) -> dict[str, Any]:
    q = (inv.config or {}).get("quantization_config") or {}
    return q if isinstance(q, dict) else {}


def fp8_block(inv: Inventory, weight_shape: tuple[int, int], scale_shape: tuple[int, ...]) -> tuple[int, int]:
    """The block (rows, columns) one scale of an FP8 weight covers: the config's ``weight_block_size``,
    else 128x128 when the scale's shape fits, else what the shape implies. :func:`fp8_scale_misfit`
    says whether the scale then covers the weight exactly."""
    wbs = _quant_config(inv).get("weight_block_size")
    out, inp = weight_shape
    if isinstance(wbs, list) and len(wbs) == 2 and all(isinstance(x, int) and x > 0 for x in wbs):
        return int(wbs[0]), int(wbs[1])
    if len(scale_shape) >= 2:
        sr, sc = scale_shape[-2], scale_shape[-1]
        if math.ceil(out / 128) == sr and math.ceil(inp / 128) == sc:
            return 128, 128
        return max(1, math.ceil(out / max(sr, 1))), max(1, math.ceil(inp / max(sc, 1)))
    # a scalar, or one scale per row (per channel) or per group of rows: whole rows per block
    return max(1, math.ceil(out / max(1, math.prod(scale_shape)))), inp


def fp8_scale_misfit(
    inv: Inventory, weight: str, weight_shape: tuple[int, int], scale: str, scale_shape: tuple[int, ...]
) -> str | None:
    """Why the FP8 ``scale`` of ``weight`` does not cover it block for block (the config's block size
    and the scale's shape disagree: bad input), or None when it does. Only the last two dimensions of a
    stacked (per-expert) scale count."""
    if math.prod(scale_shape) == 1:  # one scale for the whole weight fits any block size
        return None
    br, bc = fp8_block(inv, weight_shape, scale_shape)
    out, inp = weight_shape
    grid = (math.ceil(out / br), math.ceil(inp / bc))
    if len(scale_shape) >= 2:
        fits = tuple(scale_shape[-2:]) == grid
    else:
        fits = math.prod(scale_shape) == grid[0] and grid[1] == 1
    if fits:
        return None
    return (
        f"FP8 scale {scale} {list(scale_shape)} does not fit {weight} {list(weight_shape)} in blocks of "
        f"{br}x{bc} (that needs {list(grid)})"
    )


#: what a scale is stored as: FP8 scales are floats, MXFP4 scales E8M0 exponent bytes
_SCALE_DTYPES = {"fp8": ("F32", "BF16", "F16", "F64"), "mxfp4": ("U8",)}


def _check_scale_dtypes(inv: Inventory, m: ExpertMatrix) -> None:
    """InvalidInputError for a scale stored as another dtype (an int32 FP8 scale, float MXFP4 scales):
    its bytes would be read as something they are not."""
    allowed = _SCALE_DTYPES.get(m.quant or "")
    if allowed is None:
        return
    names = list(m.scales.values()) if isinstance(m.scales, dict) else [m.scales] if m.scales else []
    for n in names:
        dtype = inv.tensors[n].dtype
        if dtype not in allowed:
            raise InvalidInputError(
                f"{m.quant.upper() if m.quant else ''} scale {n} is {dtype}; expected {' or '.join(allowed)}",
                inv.path,
            )


def row_reader(inv: Inventory, block: MoEBlock, m: ExpertMatrix) -> RowReader | str:
    """A row reader for matrix ``m`` of ``block``, or a note saying why it cannot be read (a format
    moediag does not decode); :class:`InvalidInputError` for tensors that contradict each other."""
    e_count = block.num_experts
    t = inv.tensors
    if m.quant and m.quant.startswith("unsupported: MXFP4 blocks without"):  # blocks alone are not weights
        raise InvalidInputError(f"MXFP4 {m.fused or m.key} blocks have no _scales tensor", inv.path)
    if m.quant and m.quant.startswith("unsupported"):
        return m.quant.replace("unsupported: ", "") + " weights are not dequantised"
    _check_scale_dtypes(inv, m)
    if m.quant == "mxfp4":
        if m.fused is None or not isinstance(m.scales, str):
            return "per-expert MXFP4 tensors are not supported"
        bref, sref = t[m.fused], t[m.scales]
        if len(bref.shape) != 4 or bref.shape[0] != e_count or tuple(sref.shape) != tuple(bref.shape[:3]):
            raise InvalidInputError(
                f"MXFP4 blocks {m.fused} {list(bref.shape)} and scales {m.scales} {list(sref.shape)} do not "
                f"match (blocks [experts, rows, groups, 16], scales [experts, rows, groups]; {e_count} "
                "experts)",
                inv.path,
            )
        _, rows, groups, nb = bref.shape

        def read_mx(files: Files, e: int, r0: int, r1: int, out: torch.Tensor) -> None:
            base = e * rows + r0
            n = r1 - r0
            blk = files.raw(bref, base * groups * nb, (base + n) * groups * nb).view(n, groups, nb)
            sc = files.raw(sref, base * groups, (base + n) * groups).view(n, groups)
            dequant_mxfp4(blk, sc, out=out)

        return RowReader(rows, groups * nb * 2, read_mx, groups * nb + groups)

    if m.names is not None:
        first = t[next(iter(m.names.values()))]
        shape = first.shape
        rows = shape[0]
        cols = first.numel // max(rows, 1)
        for e, n in m.names.items():
            if t[n].shape != shape:  # a corrupt checkpoint, like a missing projection
                raise InvalidInputError(
                    f"expert {e}'s {m.key} is {list(t[n].shape)}, the others' {list(shape)} ({n})", inv.path
                )
        scales = m.scales if isinstance(m.scales, dict) else {}
        names = m.names
        fp8_kind = first.dtype if m.quant == "fp8" else None
        if fp8_kind is not None:
            lacking = [e for e in names if e not in scales]
            if lacking and (len(lacking) < len(names) or _quant_config(inv).get("quant_method") == "fp8"):
                # some experts scaled and some not, or a config that says the weights are quantised: the
                # unscaled codes are not the weights (an incomplete checkpoint, like a missing projection)
                raise InvalidInputError(
                    f"{len(lacking)} of {len(names)} experts' FP8 {m.key} weights have no scale tensor "
                    f"(first: {names[lacking[0]]})",
                    inv.path,
                )
            for e, sname in scales.items():
                misfit = fp8_scale_misfit(inv, names[e], (rows, cols), sname, tuple(t[sname].shape))
                if misfit:
                    raise InvalidInputError(misfit, inv.path)

        def read_pe(files: Files, e: int, r0: int, r1: int, out: torch.Tensor) -> None:
            ref = t[names[e]]
            w = files.raw(ref, r0 * cols, r1 * cols).view(r1 - r0, cols)
            if fp8_kind is None:
                out.copy_(w)
                return
            sname = scales.get(e)
            if sname is None:
                decode_fp8(w, fp8_kind, out)
                return
            sref = t[sname]
            if sref.numel == 1:  # one scale for the whole weight ([], [1], [1, 1]), whatever the config says
                dequant_fp8(w, files.raw(sref, 0, 1).float(), (rows, cols), kind=fp8_kind, out=out)
                return
            blk = fp8_block(inv, (rows, cols), sref.shape)
            a, b = r0 // blk[0], (r1 - 1) // blk[0] + 1  # the scale rows that cover rows r0 .. r1
            if len(sref.shape) < 2:
                dequant_fp8(w, files.raw(sref, a, b).float(), blk, r0, kind=fp8_kind, out=out)
                return
            sc = sref.shape[-1]
            s = files.raw(sref, a * sc, b * sc).view(b - a, sc)
            dequant_fp8(w, s, blk, r0, kind=fp8_kind, out=out)

        def span_pe(e: int, r0: int, r1: int) -> tuple[TensorRef, int, int]:
            return t[names[e]], r0 * cols, r1 * cols

        plain = m.quant is None
        return RowReader(rows, cols, read_pe, cols * itemsize(first.dtype), span_pe if plain else None)

    assert m.fused is not None
    ref = t[m.fused]
    per = ref.numel // e_count
    cols = ref.shape[-1] if ref.shape and per % ref.shape[-1] == 0 else per
    rows = per // cols
    fsref = t[m.scales] if isinstance(m.scales, str) else None
    kind = ref.dtype if m.quant == "fp8" else None

    if (
        kind is not None
        and fsref is not None
        and not ((len(fsref.shape) == 3 and fsref.shape[0] == e_count) or fsref.numel == 1)
    ):
        return f"FP8 scale {fsref.shape} of {m.fused} has an unknown layout; not dequantised"
    if kind is not None and fsref is None and _quant_config(inv).get("quant_method") == "fp8":
        raise InvalidInputError(
            f"FP8 {m.fused} has no scale tensor, though the config quantises to FP8", inv.path
        )
    if kind is not None and fsref is not None and len(fsref.shape) == 3:
        misfit = fp8_scale_misfit(inv, m.fused, (rows, cols), fsref.name, tuple(fsref.shape))
        if misfit:
            raise InvalidInputError(misfit, inv.path)

    def read_fused(files: Files, e: int, r0: int, r1: int, out: torch.Tensor) -> None:
        w = files.raw(ref, e * per + r0 * cols, e * per + r1 * cols).view(r1 - r0, cols)
        if kind is None:
            out.copy_(w)
        elif fsref is None:
            decode_fp8(w, kind, out)
        elif len(fsref.shape) == 3:
            sr, sc = fsref.shape[1], fsref.shape[2]
            blk = fp8_block(inv, (rows, cols), (sr, sc))
            a, b = r0 // blk[0], (r1 - 1) // blk[0] + 1
            s = files.raw(fsref, (e * sr + a) * sc, (e * sr + b) * sc).view(b - a, sc)
            dequant_fp8(w, s, blk, r0, kind=kind, out=out)
        else:
            dequant_fp8(w, files.raw(fsref, 0, 1).float(), (rows, cols), kind=kind, out=out)

    def span_fused(e: int, r0: int, r1: int) -> tuple[TensorRef, int, int]:
        return ref, e * per + r0 * cols, e * per + r1 * cols

    return RowReader(
        rows, cols, read_fused, cols * itemsize(ref.dtype), span_fused if m.quant is None else None
    )


class Files:
    """Open file handles and one scratch buffer, kept for a whole pass (no reopen or realloc per read)."""

    def __init__(self) -> None:
        self._fh: dict[str, Any] = {}
        self._scratch = bytearray()

    def __enter__(self) -> Files:
        return self

    def __exit__(self, *exc: object) -> None:
        for fh in self._fh.values():
            fh.close()
        self._fh.clear()

    def _handle(self, ref: TensorRef) -> Any:
        path = str(ref.file.path)
        fh = self._fh.get(path)
        if fh is None:
            fh = self._fh[path] = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in __exit__
        return fh

    def _read_into(self, ref: TensorRef, start: int, dest: memoryview) -> None:
        size = itemsize(ref.dtype)
        fh = self._handle(ref)
        fh.seek(ref.info.start + start * size)
        got = 0
        while got < len(dest):  # an unbuffered read may return less than asked
            k = fh.readinto(dest[got:])
            if not k:
                raise InvalidInputError(f"truncated while reading tensor {ref.name!r}", ref.file.path)
            got += k

    def raw(self, ref: TensorRef, start: int, stop: int) -> torch.Tensor:
        """Elements ``[start, stop)`` of ``ref`` as a new 1-D tensor of its dtype (FP8 as uint8)."""
        if not 0 <= start <= stop <= ref.numel:
            raise IndexError(f"elements {start}:{stop} outside {ref.name} ({ref.numel} elements)")
        size = itemsize(ref.dtype)
        buf = bytearray((stop - start) * size)
        if buf:
            self._read_into(ref, start, memoryview(buf))
        dtype = torch.uint8 if ref.dtype.startswith("F8") else DTYPES[ref.dtype]
        if not buf:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype)

    def read_rows(self, dest: torch.Tensor, spans: list[list[tuple[TensorRef, int, int]]]) -> None:
        """Row ``i`` of float32 ``dest`` := the elements of ``spans[i]``, one span after the other (the
        same dtype for every span, the same total length for every row)."""
        dtype = spans[0][0][0].dtype
        size = itemsize(dtype)
        width = dest.shape[1]
        total = width * size * len(spans)
        if len(self._scratch) < total:
            self._scratch = bytearray(total)
        mv = memoryview(self._scratch)
        for i, row in enumerate(spans):
            pos = i * width * size
            for ref, start, stop in row:
                nbytes = (stop - start) * size
                self._read_into(ref, start, mv[pos : pos + nbytes])
                pos += nbytes
        raw = torch.frombuffer(self._scratch, dtype=DTYPES[dtype], count=width * len(spans))
        dest.copy_(raw.view(len(spans), width))


def load_tensor_f32(inv: Inventory, name: str) -> torch.Tensor:
    """A whole (small) tensor as float32, FP8 dequantised with its block scale sibling when there is one."""
    ref = inv.tensors[name]
    if ref.dtype.startswith("F8"):
        base = name[: -len("weight")] if name.endswith("weight") else name + "."
        for sname in (base + "weight_scale_inv", base + "scale", base + "weight_scale"):
            if sname in inv.tensors:
                w = inv.read(name)
                s = inv.read(sname)
                if w.dim() == 2:
                    shape = (w.shape[0], w.shape[1])
                    misfit = fp8_scale_misfit(inv, name, shape, sname, tuple(s.shape))
                    if misfit:
                        raise InvalidInputError(misfit, inv.path)
                    return dequant_fp8(w, s, fp8_block(inv, shape, tuple(s.shape)))
                return w.float() * s.float().reshape(())
        return inv.read(name).float()
    return inv.read(name).float()
