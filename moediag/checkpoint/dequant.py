"""Dequantisation of stored expert weights to float32, bit for bit as torch and transformers decode them.

FP8 (``F8_E4M3``/``F8_E5M2``) with block ``weight_scale_inv`` scales (DeepSeek-V3) and MXFP4 ``_blocks``
with their E8M0 ``_scales`` (GPT-OSS; shared/design/checkpoints.md). No per-element Python, no float64.
"""

from __future__ import annotations

import functools
import sys

import torch

__all__ = ["DECODE_ELEMENTS", "MXFP4_LUT", "decode_fp8", "dequant_fp8", "dequant_mxfp4"]

#: FP4 (e2m1) values by nibble.
MXFP4_LUT = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=torch.float32,
)
#: Elements decoded per step: small enough that the decoded float32 is still in cache when its scale is
#: applied (one pass over memory instead of two), large enough that per-step overhead does not show.
DECODE_ELEMENTS = 1 << 20
_FP8_TORCH = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
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
