"""Weight diagnostics, read one layer (in fact one bounded chunk) at a time.

* Router rows: L2 norm per expert, outliers by a robust z-score (median and MAD), pairwise cosine.
* Biases: statistics of a selection bias (``e_score_correction_bias`` / ``expert_bias``) or a logit bias.
* Expert redundancy: for each projection, the Gram matrix ``G = X X^T`` of the experts' flattened weights,
  accumulated over row chunks so memory stays within ``chunk_bytes``; the cosine of a pair is the smallest
  over the projections, so a pair is a duplicate only when every matrix matches.

bf16, fp16 and fp32 are read as they are. FP8 (``F8_E4M3``/``F8_E5M2``) is dequantised with its block
``weight_scale_inv`` (or DeepSeek's ``.scale``) sibling, MXFP4 ``_blocks`` with their ``_scales``
(shared/design/checkpoints.md, GPT-OSS). Anything else (GPTQ/AWQ ints ...) is left out with a note.
"""

from __future__ import annotations

import functools
import math
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from moediag import options
from moediag.checkpoint.inventory import Inventory, TensorRef
from moediag.checkpoint.layouts import ExpertMatrix, MoEBlock
from moediag.errors import InvalidInputError

__all__ = [
    "DEFAULT_SAMPLE",
    "ExpertSimilarity",
    "MXFP4_LUT",
    "bias_stats",
    "decode_fp8",
    "dequant_fp8",
    "dequant_mxfp4",
    "expert_similarity",
    "load_tensor_f32",
    "matrix_bytes",
    "pass_cost",
    "router_stats",
    "sample_rows",
    "screen_cutoff",
]

#: FP4 (e2m1) values by nibble.
MXFP4_LUT = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=torch.float32,
)
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
OUTLIER_Z = 3.5
OUTLIER_REL = 0.25
#: Elements decoded per step: small enough that the decoded float32 is still in cache when its scale is
#: applied (one pass over memory instead of two), large enough that per-step overhead does not show.
DECODE_ELEMENTS = 1 << 20
_FP8_TORCH = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}

Progress = Callable[[int], None]


# -- dequantisation -----------------------------------------------------------------------------------
#
# Every code is decoded through a lookup table built from torch's own conversion, so the values are
# torch's, bit for bit. Two bytes are decoded per lookup: for FP8 a table of 65,536 float32 *pairs*
# (512 KiB, cache-resident) indexed by each little-endian uint16 of the input, for MXFP4 a table of
# 65,536 float32 quadruples (1 MiB): half the lookups of a 256-entry table; torch's own
# float8 -> float32 cast on CPU runs at a fraction of that. Scales are then applied by broadcasting one
# value over each block while the block is still in cache; nothing goes through float64 or per-element
# Python.


@functools.lru_cache(maxsize=8)
def _lut(kind: str) -> torch.Tensor:
    """float32 [256]: the value of every byte code of ``kind`` (F8_E4M3, F8_E5M2 or MXFP4 pairs)."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    if kind == "MXFP4":  # low nibble first, then high nibble: two values per byte, as int64 "pairs"
        pairs = torch.stack((MXFP4_LUT[codes.long() & 0x0F], MXFP4_LUT[codes.long() >> 4]), dim=1)
        return pairs.contiguous().view(torch.int64).reshape(256)
    return codes.view(getattr(torch, _FP8_TORCH[kind])).float()


@functools.lru_cache(maxsize=4)
def _pair_lut(kind: str) -> torch.Tensor:
    """int64 [65536]: two float32 values per entry, for the two bytes of a little-endian uint16 code."""
    single = _lut(kind)
    codes = torch.arange(65536, dtype=torch.int64)
    pairs = torch.stack((single[codes & 0xFF], single[codes >> 8]), dim=1)
    return pairs.contiguous().view(torch.int64).reshape(65536)


def _as_codes(w: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """The raw bytes of ``w`` (uint8) and the FP8 kind its dtype names (None for plain uint8)."""
    for kind, attr in _FP8_TORCH.items():
        if w.dtype == getattr(torch, attr, None):
            return w.view(torch.uint8), kind
    if w.dtype != torch.uint8:
        raise TypeError(f"expected FP8 or uint8 codes, got {w.dtype}")
    return w, None


def decode_fp8(
    codes: torch.Tensor,
    kind: str = "F8_E4M3",
    out: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 values of FP8 ``codes`` (uint8 or a float8 dtype, contiguous) in ``out`` (same shape).

    ``scratch``: an int32 buffer of at least half the codes, reused for the table indices.
    """
    raw, own = _as_codes(codes)
    kind = own or kind
    if out is None:
        out = torch.empty(raw.shape, dtype=torch.float32)
    flat, dest = raw.reshape(-1), out.view(-1)
    n = flat.numel()
    aligned = flat.storage_offset() % 2 == 0 and dest.storage_offset() % 2 == 0 and dest.data_ptr() % 8 == 0
    pairs = n // 2 if sys.byteorder == "little" and aligned else 0
    if pairs:
        if scratch is None or scratch.numel() < pairs:
            scratch = torch.empty(pairs, dtype=torch.int32)
        idx = scratch[:pairs]
        idx.copy_(flat[: 2 * pairs].view(torch.uint16))  # zero-extended: 0 .. 65535
        torch.index_select(_pair_lut(kind), 0, idx, out=dest[: 2 * pairs].view(torch.int64))
    if n > 2 * pairs:
        torch.index_select(_lut(kind), 0, flat[2 * pairs :].to(torch.int32), out=dest[2 * pairs :])
    return out


def dequant_fp8(
    w: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    row0: int = 0,
    *,
    rows: torch.Tensor | None = None,
    kind: str = "F8_E4M3",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 of FP8 rows ``w`` [r, c] times their block's scale (``kind`` when ``w`` is plain uint8).

    The rows are ``row0 .. row0 + r`` and ``scale_inv`` holds the scale rows that cover them (from block
    row ``row0 // block[0]``), or, with ``rows`` (their absolute indices, any order), the whole scale
    tensor. A scalar or per-row (1-D) scale works too. ``out``: where to write (float32 [r, c]).
    Equal, bit for bit, to ``w.float() * scale`` with the scale expanded to every element.
    """
    raw, own = _as_codes(w)
    kind = own or kind
    r, c = raw.shape
    if out is None:
        out = torch.empty(r, c, dtype=torch.float32)
    s = scale_inv.float()
    if s.dim() == 0 or s.numel() == 1:
        decode_fp8(raw, kind, out)
        return out.mul_(s.reshape(()))
    if s.dim() == 1:
        s = s.reshape(-1, 1)
    br, bc = block
    if rows is None:
        block_row = torch.arange(row0, row0 + r) // br - row0 // br
    else:
        block_row = rows.to(torch.int64) // br
    full = c // bc if s.shape[1] > 1 else 0
    step = max(1, DECODE_ELEMENTS // max(c, 1))
    scratch = torch.empty((min(r, step) * c + 1) // 2, dtype=torch.int32)
    for a in range(0, r, step):
        b = min(r, a + step)
        o = out[a:b]
        decode_fp8(raw[a:b], kind, o, scratch)
        srows = s.index_select(0, block_row[a:b])  # [b - a, scale columns]
        if s.shape[1] == 1:
            o.mul_(srows)
            continue
        if full:
            o[:, : full * bc].view(b - a, full, bc).mul_(srows[:, :full].unsqueeze(-1))
        if c > full * bc:
            o[:, full * bc :].mul_(srows[:, full : full + 1])
    return out


@functools.lru_cache(maxsize=1)
def _mxfp4_scales() -> torch.Tensor:
    """float32 [256]: ``2 ** (e - 127)`` for every E8M0 exponent byte (255 -> inf, as ldexp gives)."""
    return torch.ldexp(torch.ones(256), torch.arange(256) - 127)


@functools.lru_cache(maxsize=1)
def _mxfp4_quad_lut() -> torch.Tensor:
    """complex128 [65536]: the four float32 values of two MXFP4 bytes (a little-endian uint16) per entry,
    held as one 16-byte element so one lookup writes all four."""
    pairs = _lut("MXFP4")
    codes = torch.arange(65536, dtype=torch.int64)
    quad = torch.stack((pairs[codes & 0xFF], pairs[codes >> 8]), dim=1).contiguous()
    return quad.view(torch.complex128).reshape(65536)


def dequant_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 [..., G*32] from MXFP4 ``blocks`` uint8 [..., G, 16] and ``scales`` uint8 [..., G].

    Low nibble -> even output, high nibble -> odd output; each group of 32 times ``2**(scale - 127)``.
    One lookup per two bytes gives their four values; the scale multiplies each group while it is in cache.
    """
    *lead, g, nb = blocks.shape
    n_out = g * nb * 2
    if out is None:
        out = torch.empty(*lead, n_out, dtype=torch.float32)
    flat_b = blocks.reshape(-1, g * nb)
    flat_s = scales.reshape(-1, g)
    dest = out.view(-1, n_out)
    quad, pairs, powers = _mxfp4_quad_lut(), _lut("MXFP4"), _mxfp4_scales()
    step = max(1, DECODE_ELEMENTS // max(n_out, 1))
    scratch = torch.empty(min(flat_b.shape[0], step) * g * nb, dtype=torch.int32)
    for a in range(0, flat_b.shape[0], step):
        b = min(flat_b.shape[0], a + step)
        o = dest[a:b]
        src = flat_b[a:b].reshape(-1)
        fast = sys.byteorder == "little" and src.storage_offset() % 2 == 0 and src.numel() % 2 == 0
        if fast and o.data_ptr() % 16 == 0 and o.storage_offset() % 4 == 0:
            idx = scratch[: src.numel() // 2]
            idx.copy_(src.view(torch.uint16))
            torch.index_select(quad, 0, idx, out=o.view(-1).view(torch.complex128))
        else:  # odd sizes or a misaligned destination: one byte per lookup, beside it
            o.copy_(pairs.index_select(0, src.to(torch.int32)).view(torch.float32).view(b - a, n_out))
        sc = powers.index_select(0, flat_s[a:b].reshape(-1).to(torch.int32)).view(b - a, g, 1)
        o.view(b - a, g, nb * 2).mul_(sc)
    return out


# -- matrix readers -----------------------------------------------------------------------------------


@dataclass
class _Reader:
    """Reads rows ``[r0, r1)`` of one expert's matrix as float32 into ``out`` [r1 - r0, cols]."""

    rows: int
    cols: int
    read: Callable[[_Files, int, int, int, torch.Tensor], None]
    bytes_per_row: int
    #: for plain float data: where rows [r0, r1) of expert e lie, as (tensor, first element, stop element)
    span: Callable[[int, int, int], tuple[TensorRef, int, int]] | None = None


def _fp8_block(
    inv: Inventory, weight_shape: tuple[int, int], scale_shape: tuple[int, ...]
) -> tuple[int, int]:
    q = (inv.config or {}).get("quantization_config") or {}
    wbs = q.get("weight_block_size") if isinstance(q, dict) else None
    out, inp = weight_shape
    if isinstance(wbs, list) and len(wbs) == 2 and all(isinstance(x, int) and x > 0 for x in wbs):
        return int(wbs[0]), int(wbs[1])
    if len(scale_shape) >= 2:
        sr, sc = scale_shape[-2], scale_shape[-1]
        if math.ceil(out / 128) == sr and math.ceil(inp / 128) == sc:
            return 128, 128
        return max(1, math.ceil(out / max(sr, 1))), max(1, math.ceil(inp / max(sc, 1)))
    return out, inp


def _reader(inv: Inventory, block: MoEBlock, m: ExpertMatrix) -> _Reader | str:
    """A row reader for matrix ``m`` of ``block``, or a note saying why it cannot be read."""
    e_count = block.num_experts
    if m.quant and m.quant.startswith("unsupported"):
        return m.quant.replace("unsupported: ", "") + " weights are not dequantised"
    t = inv.tensors
    if m.quant == "mxfp4":
        if m.fused is None or not isinstance(m.scales, str):
            return "per-expert MXFP4 tensors are not supported"
        bref, sref = t[m.fused], t[m.scales]
        if len(bref.shape) != 4 or bref.shape[0] != e_count or tuple(sref.shape) != tuple(bref.shape[:3]):
            return f"MXFP4 blocks {bref.shape} and scales {sref.shape} do not match"
        _, rows, groups, nb = bref.shape

        def read_mx(files: _Files, e: int, r0: int, r1: int, out: torch.Tensor) -> None:
            base = e * rows + r0
            n = r1 - r0
            blk = files.raw(bref, base * groups * nb, (base + n) * groups * nb).view(n, groups, nb)
            sc = files.raw(sref, base * groups, (base + n) * groups).view(n, groups)
            dequant_mxfp4(blk, sc, out=out)

        return _Reader(rows, groups * nb * 2, read_mx, groups * nb + groups)

    if m.names is not None:
        first = t[next(iter(m.names.values()))]
        shape = first.shape
        rows = shape[0]
        cols = first.numel // max(rows, 1)
        for n in m.names.values():
            if t[n].shape != shape:
                return f"experts' {m.key} tensors differ in shape"
        scales = m.scales if isinstance(m.scales, dict) else {}
        names = m.names
        fp8_kind = first.dtype if m.quant == "fp8" else None

        def read_pe(files: _Files, e: int, r0: int, r1: int, out: torch.Tensor) -> None:
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
            blk = _fp8_block(inv, (rows, cols), sref.shape)
            if len(sref.shape) < 2:
                dequant_fp8(w, files.raw(sref, 0, sref.numel).float(), blk, r0, kind=fp8_kind, out=out)
                return
            sc = sref.shape[-1]
            a, b = r0 // blk[0], (r1 - 1) // blk[0] + 1
            s = files.raw(sref, a * sc, b * sc).view(b - a, sc)
            dequant_fp8(w, s, blk, r0, kind=fp8_kind, out=out)

        def span_pe(e: int, r0: int, r1: int) -> tuple[TensorRef, int, int]:
            return t[names[e]], r0 * cols, r1 * cols

        plain = m.quant is None
        return _Reader(rows, cols, read_pe, cols * _itemsize(first.dtype), span_pe if plain else None)

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

    def read_fused(files: _Files, e: int, r0: int, r1: int, out: torch.Tensor) -> None:
        w = files.raw(ref, e * per + r0 * cols, e * per + r1 * cols).view(r1 - r0, cols)
        if kind is None:
            out.copy_(w)
        elif fsref is None:
            decode_fp8(w, kind, out)
        elif len(fsref.shape) == 3:
            sr, sc = fsref.shape[1], fsref.shape[2]
            blk = _fp8_block(inv, (rows, cols), (sr, sc))
            a, b = r0 // blk[0], (r1 - 1) // blk[0] + 1
            s = files.raw(fsref, (e * sr + a) * sc, (e * sr + b) * sc).view(b - a, sc)
            dequant_fp8(w, s, blk, r0, kind=kind, out=out)
        else:
            dequant_fp8(w, files.raw(fsref, 0, 1).float(), (rows, cols), kind=kind, out=out)

    def span_fused(e: int, r0: int, r1: int) -> tuple[TensorRef, int, int]:
        return ref, e * per + r0 * cols, e * per + r1 * cols

    return _Reader(
        rows, cols, read_fused, cols * _itemsize(ref.dtype), span_fused if m.quant is None else None
    )


def _itemsize(dtype: str) -> int:
    from moediag.io.safetensors_file import itemsize

    return itemsize(dtype)


def pass_cost(inv: Inventory, block: MoEBlock, sample: float = 1.0, seed: int = 0) -> tuple[int, int]:
    """(bytes read, Gram multiply-adds) of the redundancy pass over ``block``: every row of its expert
    matrices (``sample`` 1), or the sampled rows of the screen (verifying candidates comes on top)."""
    nbytes = madds = 0
    n = len(block.expert_ids)
    for m in block.matrices:
        rd = _reader(inv, block, m)
        if isinstance(rd, str):
            continue
        rows = sum(r1 - r0 for r0, r1 in sample_rows(rd.rows, rd.bytes_per_row, sample, seed, m.key))
        nbytes += rows * rd.bytes_per_row * n
        madds += n * n * rows * rd.cols
    return nbytes, madds


def matrix_bytes(inv: Inventory, block: MoEBlock, sample: float = 1.0, seed: int = 0) -> int:
    """Bytes the redundancy pass reads for ``block`` (see :func:`pass_cost`)."""
    return pass_cost(inv, block, sample, seed)[0]


# -- statistics ---------------------------------------------------------------------------------------


def _robust_outliers(x: torch.Tensor) -> list[tuple[int, float, str]]:
    """Values far from the rest, with direction ("low"/"high"). A value is flagged when

    * it is below half or above twice the median of the *other* values (works for a handful of experts), or
    * its robust z-score ``0.6745 (x - median) / MAD`` exceeds 3.5 and it lies at least 25% from the
      median (so the natural spread of small random routers is not flagged).

    Needs at least 4 values.
    """
    n = x.numel()
    if n < 4:
        return []
    xd = x.double()
    med = xd.quantile(0.5)
    mad = (xd - med).abs().quantile(0.5)
    far = (xd - med).abs() > OUTLIER_REL * med.abs().clamp_min(1e-30)
    z = 0.6745 * (xd - med) / mad if float(mad) > 0 else torch.zeros_like(xd)
    out: list[tuple[int, float, str]] = []
    for i in range(n):
        others = torch.cat((xd[:i], xd[i + 1 :])).quantile(0.5)
        ratio = float(xd[i] / others) if float(others) > 0 else 1.0
        if ratio < 0.5 or ratio > 2.0 or (abs(float(z[i])) > OUTLIER_Z and bool(far[i])):
            out.append((i, float(x[i]), "low" if float(xd[i]) < float(med) else "high"))
    return out


def router_stats(
    w: torch.Tensor, threshold: float = options.default("redundancy_threshold")
) -> dict[str, Any]:
    """Row norms (with outliers) and pairwise row cosine of a router weight [E, H]."""
    w = w.float()
    norms = w.norm(dim=1)
    e = w.shape[0]
    unit = w / norms.clamp_min(1e-30).unsqueeze(1)
    cos = unit @ unit.T
    off = cos.masked_fill(torch.eye(e, dtype=torch.bool), float("nan"))
    finite = off[~torch.isnan(off)]
    if finite.numel():
        flat = torch.nan_to_num(off, nan=-2.0)
        i = int(flat.argmax())
        max_pair = [i // e, i % e]
        cos_stats: dict[str, Any] = {
            "mean": float(finite.mean()),
            "max": float(finite.max()),
            "max_pair": sorted(max_pair),
            "similar_pairs": [
                [int(a), int(b), float(cos[a, b])]
                for a, b in torch.nonzero(torch.triu(cos, diagonal=1) >= threshold).tolist()
            ],
        }
    else:
        cos_stats = {"mean": None, "max": None, "max_pair": None, "similar_pairs": []}
    med = float(norms.median())
    return {
        "router_norms": [float(v) for v in norms],
        "router_norm_stats": {
            "min": float(norms.min()),
            "median": med,
            "max": float(norms.max()),
            "cv": float(norms.std(unbiased=False) / norms.mean()) if float(norms.mean()) > 0 else None,
        },
        "router_norm_outliers": [[i, v, d] for i, v, d in _robust_outliers(norms)],
        "router_cosine": cos_stats,
    }


def bias_stats(b: torch.Tensor, kind: str, name: str) -> dict[str, Any]:
    """Statistics of a per-expert bias [E] (``[1, E]`` is squeezed). ``pushed`` lists experts whose bias
    sits more than 2 standard deviations above the mean (for a selection bias: experts training had to
    push tokens toward)."""
    v = b.float().reshape(-1)
    mean = float(v.mean())
    std = float(v.std(unbiased=False))
    pushed = []
    if std > 0:
        z = (v - mean) / std
        order = torch.argsort(z, descending=True)
        pushed = [[int(i), float(v[i]), float(z[i])] for i in order.tolist() if float(z[i]) > 2.0]
    return {
        "kind": kind,
        "tensor": name,
        "mean": mean,
        "std": std,
        "min": float(v.min()),
        "max": float(v.max()),
        "range": float(v.max() - v.min()),
        "argmax": int(v.argmax()),
        "argmin": int(v.argmin()),
        "pushed": pushed,
        "values": [float(x) for x in v],
    }


@dataclass
class ExpertSimilarity:
    """Result of the redundancy pass over one block."""

    #: [E, E] float64, min over projections (None when nothing was read). Exact where both experts were
    #: verified (or nothing was sampled); elsewhere the sampled screen's value, below the cutoff.
    cosine: torch.Tensor | None
    norms: list[float] = field(default_factory=list)  # per expert, over all projections read
    pairs: list[list[Any]] = field(default_factory=list)  # [i, j, cos] with exact cos >= threshold
    distinct: int | None = None
    zero_experts: list[int] = field(default_factory=list)
    matrices: list[str] = field(default_factory=list)  # projections used
    skipped: list[str] = field(default_factory=list)  # notes on projections left out
    bytes_read: int = 0
    #: what the screen sampled and what was verified (``screen_report`` keys); None for an exact pass
    screen: dict[str, Any] | None = None


#: Fraction of each expert's rows the screen reads (``--sample``); 1 reads everything exactly.
DEFAULT_SAMPLE = 1 / 32
#: The screen keeps a pair when its sampled cosine is at least ``threshold - margin``:
#: ``margin = max(SCREEN_MARGIN, 2 * (1 - threshold))`` (0.02 at the default 0.99).
SCREEN_MARGIN = 0.02
#: Sampled rows come in runs of about this many bytes (one read per run and expert) ...
RUN_BYTES = 32 * 1024
#: ... and at least this many rows are sampled per matrix (all of them when that is half or more).
MIN_SAMPLE_ROWS = 16


def screen_cutoff(threshold: float) -> float:
    """Sampled cosine at or above which a pair goes on to exact verification."""
    return threshold - max(SCREEN_MARGIN, 2 * (1 - threshold))


def sample_rows(rows: int, bytes_per_row: int, sample: float, seed: int, key: str) -> list[tuple[int, int]]:
    """The row ranges of a matrix that the screen reads: ``[(0, rows)]`` for ``sample >= 1`` or small
    matrices, else seeded runs of consecutive rows, about ``sample`` of them, the same for every expert.
    Depends only on (rows, bytes_per_row, sample, seed, key): the same checkpoint gives the same sample."""
    want = max(math.ceil(rows * sample), MIN_SAMPLE_ROWS)
    if sample >= 1 or 2 * want >= rows:  # half the rows or more: reading them all costs little more
        return [(0, rows)]
    run = max(1, min(RUN_BYTES // max(1, bytes_per_row), want // 8))
    slots = rows // run
    k = min(slots, -(-want // run))
    g = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (1 << 63))
    picked = sorted(torch.randperm(slots, generator=g)[:k].tolist())
    return [(j * run, j * run + run) for j in picked]


def _batches(ranges: list[tuple[int, int]], budget_rows: int) -> Iterator[list[tuple[int, int]]]:
    """Row ranges grouped (and split) so each group holds at most ``budget_rows`` rows."""
    batch: list[tuple[int, int]] = []
    held = 0
    for r0, r1 in ranges:
        while r0 < r1:
            take = min(r1 - r0, budget_rows - held)
            batch.append((r0, r0 + take))
            held += take
            r0 += take
            if held >= budget_rows:
                yield batch
                batch, held = [], 0
    if batch:
        yield batch


def expert_similarity(
    inv: Inventory,
    block: MoEBlock,
    *,
    threshold: float = options.default("redundancy_threshold"),
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
    sample: float = 1.0,
    seed: int = 0,
    plan: Progress | None = None,
) -> ExpertSimilarity:
    """Pairwise cosine of the block's experts, streamed in row chunks of at most ``chunk_bytes`` (f32).

    ``sample`` < 1: a screen first reads a seeded ``sample`` of every expert's rows (the same rows for
    all experts, by byte range) and keeps the pairs whose sampled cosine reaches :func:`screen_cutoff`,
    and experts whose sampled rows are all zero; the experts of those candidates are then read in full
    and every reported pair and zero expert is exact. Norms are exact for verified experts and
    estimated from the sample (scaled to all rows) for the others. ``plan(n)`` is told the verification's
    bytes before they are read (for a progress total); ``progress(n)`` after each chunk.
    """
    ids = block.expert_ids
    n = len(ids)
    res = ExpertSimilarity(cosine=None)
    readers: list[tuple[ExpertMatrix, _Reader]] = []
    for m in block.matrices:
        rd = _reader(inv, block, m)
        if isinstance(rd, str):
            res.skipped.append(f"{m.key}: {rd}")
        else:
            readers.append((m, rd))
    if not readers or n == 0:
        return res
    ranges = [sample_rows(rd.rows, rd.bytes_per_row, sample, seed, m.key) for m, rd in readers]
    exact = all(rr == [(0, rd.rows)] for rr, (_, rd) in zip(ranges, readers, strict=True))
    with _Files() as files:
        cos, sq = _grams(files, readers, ids, ranges, chunk_bytes, progress, res)
        res.matrices = [m.key for m, _ in readers]
        if exact:
            _finish(res, cos, sq.sum(0), ids, threshold, list(range(n)))
            return res
        # estimated norms: each matrix's sampled sum of squares scaled to all of its rows
        scale = torch.tensor(
            [rd.rows / sum(r1 - r0 for r0, r1 in rr) for rr, (_, rd) in zip(ranges, readers, strict=True)],
            dtype=torch.float64,
        )
        est = (sq * scale.unsqueeze(1)).sum(0)
        cutoff = screen_cutoff(threshold)
        cand = torch.triu(cos >= cutoff, diagonal=1)
        zero_sampled = sq.sum(0) == 0
        involved = sorted(
            set(torch.nonzero(cand).flatten().tolist()) | set(torch.nonzero(zero_sampled).flatten().tolist())
        )
        res.screen = {
            "sample": sample,
            "seed": seed,
            "cutoff": cutoff,
            "rows": {
                m.key: [sum(r1 - r0 for r0, r1 in rr), rd.rows]
                for rr, (m, rd) in zip(ranges, readers, strict=True)
            },
            "bytes": res.bytes_read,
            "candidate_pairs": int(cand.sum()),
            "verified_experts": [ids[i] for i in involved],
            "verify_bytes": 0,
        }
        if involved:
            sub = [ids[i] for i in involved]
            full = [[(0, rd.rows)] for _, rd in readers]
            need = sum(rd.rows * rd.bytes_per_row for _, rd in readers) * len(sub)
            if plan is not None:
                plan(need)
            before = res.bytes_read
            cos_v, sq_v = _grams(files, readers, sub, full, chunk_bytes, progress, res)
            res.screen["verify_bytes"] = res.bytes_read - before
            pos = torch.tensor(involved)
            cos[pos.unsqueeze(1), pos.unsqueeze(0)] = cos_v
            est[pos] = sq_v.sum(0)
        _finish(res, cos, est, ids, threshold, involved)
    return res


def _grams(
    files: _Files,
    readers: list[tuple[ExpertMatrix, _Reader]],
    ids: list[int],
    ranges: list[list[tuple[int, int]]],
    chunk_bytes: int,
    progress: Progress | None,
    res: ExpertSimilarity,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine (min over the matrices) of experts ``ids`` over rows ``ranges[m]`` of each matrix ``m``,
    and each matrix's per-expert sum of squares over those rows ([matrices, len(ids)], float64)."""
    n = len(ids)
    cos_min: torch.Tensor | None = None
    sq = torch.zeros(len(readers), n, dtype=torch.float64)
    for k, ((_m, rd), rr) in enumerate(zip(readers, ranges, strict=True)):
        gram = torch.zeros(n, n, dtype=torch.float64)
        budget = max(1, chunk_bytes // max(1, rd.cols * 4 * n))
        buf: torch.Tensor | None = None
        for batch in _batches(rr, budget):
            held = sum(r1 - r0 for r0, r1 in batch)
            width = held * rd.cols
            if buf is None or buf.numel() < n * width:
                buf = torch.empty(n * width, dtype=torch.float32)  # reused: no fresh pages per chunk
            x = buf[: n * width].view(n, width)
            if rd.span is not None:
                # raw bytes of every expert into one buffer, then one conversion (many small
                # conversions are slow: each may wake the thread pool)
                files.read_rows(x, [[rd.span(e, r0, r1) for r0, r1 in batch] for e in ids])
            else:
                for i, e in enumerate(ids):
                    off = 0
                    for r0, r1 in batch:
                        seg = (r1 - r0) * rd.cols
                        rd.read(files, e, r0, r1, x[i, off : off + seg].view(r1 - r0, rd.cols))
                        off += seg
            gram += (x @ x.T).double()
            nb = held * rd.bytes_per_row * n
            res.bytes_read += nb
            if progress is not None:
                progress(nb)
        d = gram.diagonal().clone()
        sq[k] = d
        root = torch.sqrt(d.clamp_min(0))
        denom = root.unsqueeze(0) * root.unsqueeze(1)
        c = torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))
        cos_min = c if cos_min is None else torch.minimum(cos_min, c)
    assert cos_min is not None
    return cos_min, sq


def _finish(
    res: ExpertSimilarity,
    cos_min: torch.Tensor,
    sq: torch.Tensor,
    ids: list[int],
    threshold: float,
    exact: list[int],
) -> None:
    """Pairs, distinct experts and zero experts, from the exactly known positions ``exact`` only."""
    n = len(ids)
    cos_min.fill_diagonal_(1.0)
    res.cosine = cos_min
    res.norms = [float(v) for v in torch.sqrt(sq.clamp_min(0))]
    res.zero_experts = [ids[i] for i in exact if float(sq[i]) == 0.0]
    zero = set(res.zero_experts)
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for x, a in enumerate(exact):
        for b in exact[x + 1 :]:
            v = float(cos_min[a, b])
            if v >= threshold and ids[a] not in zero:
                res.pairs.append([ids[a], ids[b], v])
                parent[find(a)] = find(b)
    res.pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    res.distinct = len({find(a) for a in range(n)})


class _Files:
    """Open file handles and one scratch buffer, kept for a whole pass (no reopen or realloc per read)."""

    def __init__(self) -> None:
        self._fh: dict[str, Any] = {}
        self._scratch = bytearray()

    def __enter__(self) -> _Files:
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
        size = _itemsize(ref.dtype)
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
        from moediag.io.safetensors_file import DTYPES

        if not 0 <= start <= stop <= ref.numel:
            raise IndexError(f"elements {start}:{stop} outside {ref.name} ({ref.numel} elements)")
        size = _itemsize(ref.dtype)
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
        from moediag.io.safetensors_file import DTYPES

        dtype = spans[0][0][0].dtype
        size = _itemsize(dtype)
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
                    blk = _fp8_block(inv, (w.shape[0], w.shape[1]), tuple(s.shape))
                    return dequant_fp8(w, s, blk)
                return w.float() * s.float().reshape(())
        return inv.read(name).float()
    return inv.read(name).float()
