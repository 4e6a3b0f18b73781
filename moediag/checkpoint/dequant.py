"""Dequantisation of stored expert weights to float32, bit for bit as torch and transformers decode them.

FP8 (``F8_E4M3``/``F8_E5M2``) with block ``weight_scale_inv`` scales (DeepSeek-V3) and MXFP4 ``_blocks``
with their E8M0 ``_scales`` (GPT-OSS; shared/design/checkpoints.md). No per-element Python, no float64.

Two decoders give the same bits. Where the package was built with a C compiler (setup.py), the compiled
one, ``_decode.c``, about twice as fast on one core (docs/benchmarks.md): one lookup in a table (torch's
own conversion of every FP8 byte; FP4's 16 exact values) and one float32 multiply by the scale per
output, the reference's own arithmetic. :func:`decoder` says which is in use; the tests run both.

The torch route, for builds without it (one chunk of about :data:`DECODE_ELEMENTS` outputs at a time,
so the float32 written is still in cache when its scale is applied):

1. Integer bit moves turn each code into the IEEE half-precision pattern of its value times a fixed
   power of two: FP8 E5M2 *is* the top byte of a half; E4M3 and FP4 (E2M1) move their sign to bit 15
   and their exponent and mantissa below it (a half's smaller exponent bias makes the value
   ``code * 2**-8`` for E4M3, ``code * 2**-14`` for FP4, subnormal codes included).
2. One half -> float32 conversion (exact, vectorised; subnormal halves become normal floats).
3. One float32 multiply per element by the block scale times the inverse power of two. The product is
   the same real number as ``code * scale``, so it rounds to the same float: the result equals torch's
   float8 cast times the scale (and transformers' MXFP4 ``ldexp``) bit for bit. Where that folded
   scale would overflow (a scale above ``2**100``, an E8M0 exponent above 240) the power of two is
   applied first, exactly, and then the scale (for E8M0 255, ``2**128``: twice the value times
   ``2**127``, which is what transformers' ``ldexp`` gives: 0 stays 0, not NaN).

NaN codes (FP8 only; never in real weights, one byte in 128 of random data) do not survive step 2 with
their payload: chunks holding any are decoded through a table of torch's own conversion instead (65,536
float32 pairs, one lookup per two codes), and scaled as the reference does.

One case has no single reference: a NaN code times a NaN scale. Which operand's NaN payload the product
keeps depends on the instruction (torch's own ``w.float() * scale`` differs between its vector body and
its scalar tail), so only that the result is NaN is specified there.
"""

from __future__ import annotations

import functools
import sys
import threading

import numpy as np
import torch

try:
    from moediag.checkpoint import _decode as _compiled
except ImportError:  # built without a C compiler: the torch route
    _compiled = None  # type: ignore[assignment]

__all__ = ["DECODE_ELEMENTS", "MXFP4_LUT", "decode_fp8", "decoder", "dequant_fp8", "dequant_mxfp4"]

#: FP4 (e2m1) values by nibble.
MXFP4_LUT = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=torch.float32,
)
#: Outputs decoded per step: the chunk's float32 (4 MiB) and its integer scratch stay in cache between
#: the conversion and the scale multiply; large enough that per-step overhead does not show.
DECODE_ELEMENTS = 1 << 20
_FP8_TORCH = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
#: value of the half built from a code, relative to the code's own value
_F16_EXP = {"F8_E4M3": -8, "F8_E5M2": 0}
#: a scale at or above this is not multiplied by 2**8 before use (it could overflow)
_FOLD_LIMIT = 2.0**100
#: E8M0 exponents up to this fold with FP4's 2**14 into one normal float32 factor (2**(s - 113))
_MX_FOLD_MAX = 240


@functools.lru_cache(maxsize=4)
def _lut(kind: str) -> torch.Tensor:
    """float32 [256]: torch's value of every byte code of ``kind`` (F8_E4M3 or F8_E5M2)."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    return codes.view(getattr(torch, _FP8_TORCH[kind])).float()


@functools.lru_cache(maxsize=4)
def _pair_lut(kind: str) -> torch.Tensor:
    """int64 [65536]: two float32 values per entry, for the two bytes of a little-endian uint16 code."""
    single = _lut(kind)
    codes = torch.arange(65536, dtype=torch.int64)
    pairs = torch.stack((single[codes & 0xFF], single[codes >> 8]), dim=1)
    return pairs.contiguous().view(torch.int64).reshape(65536)


@functools.lru_cache(maxsize=1)
def _e8m0_halves() -> torch.Tensor:
    """float32 [256]: ``2 ** (e - 128)`` for every E8M0 exponent byte, all finite (``2**-128`` is a
    subnormal): half the scale, so that 255 (``2**128``) needs no infinity."""
    return torch.ldexp(torch.ones(256), torch.arange(256) - 128)


def _as_codes(w: torch.Tensor) -> tuple[torch.Tensor, str | None]:
    """The raw bytes of ``w`` (uint8) and the FP8 kind its dtype names (None for plain uint8)."""
    for kind, attr in _FP8_TORCH.items():
        if w.dtype == getattr(torch, attr, None):
            return w.view(torch.uint8), kind
    if w.dtype != torch.uint8:
        raise TypeError(f"expected FP8 or uint8 codes, got {w.dtype}")
    return w, None


def _has_nan(codes: torch.Tensor, kind: str) -> bool:
    """Whether FP8 ``codes`` (uint8) hold a NaN code: two byte reductions, no copy. A NaN's low 7 bits
    are all ones (E4M3) or above 0x7C (E5M2), so it is the largest code of its sign."""
    if codes.numel() == 0:
        return False
    least = 0x7F if kind == "F8_E4M3" else 0x7D
    return int(codes.max()) >= 0x80 | least or int(codes.view(torch.int8).max()) >= least


def decoder() -> str:
    """The decoder in use: ``"compiled"`` (``_decode.c``, built with the package) or ``"torch"``."""
    return "torch" if _compiled is None else "compiled"


def _output(out: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    """``out``, checked to be what the decoders write into (contiguous float32 of ``shape``), or a new one."""
    if out is None:
        return torch.empty(shape, dtype=torch.float32)
    if out.dtype != torch.float32 or tuple(out.shape) != tuple(shape) or not out.is_contiguous():
        raise ValueError(f"out must be contiguous float32 {list(shape)}, got {out.dtype} {list(out.shape)}")
    return out


def _aligned(t: torch.Tensor) -> bool:
    """Whether ``t``'s memory is aligned for its elements (the compiled decoder needs it; a tensor made
    over a byte buffer at an odd offset may not be)."""
    return t.data_ptr() % t.element_size() == 0


def _np(t: torch.Tensor) -> np.ndarray:
    """``t`` flat and C-contiguous as numpy, for the compiled decoder's buffers: a view of its memory
    where ``t`` is contiguous (the only kind of output passed), else a contiguous copy (an input)."""
    return t.detach().contiguous().view(-1).numpy()


_held = threading.local()


def _scratch(n: int, dtype: torch.dtype = torch.int16, slot: str = "codes") -> torch.Tensor:
    """A buffer of at least ``n`` elements of ``dtype`` (int16: an even number, viewable as int32), kept
    per thread between calls: a fresh multi-megabyte buffer is fresh pages, and faulting them in cost a
    fifth of an expert's decode. At most one chunk's worth (about :data:`DECODE_ELEMENTS`) is kept."""
    n += n % 2
    if n > 2 * DECODE_ELEMENTS:  # a one-off large call (decode_fp8 of a whole tensor): not kept
        return torch.empty(n, dtype=dtype)
    buf = getattr(_held, slot, None)
    if buf is None or buf.dtype != dtype or buf.numel() < n:
        buf = torch.empty(n, dtype=dtype)
        setattr(_held, slot, buf)
    return buf[:n]


def _fp8_halves(codes: torch.Tensor, kind: str, out: torch.Tensor, scratch: torch.Tensor) -> None:
    """``out`` (float32, contiguous, like ``codes``) := each FP8 code's value times ``2**_F16_EXP[kind]``,
    for codes without NaN (a NaN half loses its payload in the conversion). ``scratch``: int16, at least
    ``codes.numel()``."""
    flat = codes.reshape(-1)
    h = scratch[: flat.numel()]
    if kind == "F8_E5M2":  # E5M2 is the top byte of a half
        h.copy_(flat)
        h.bitwise_left_shift_(8)
    else:  # E4M3: sign-extend, move sign to bit 15 and exponent/mantissa to bits 7..13, clear bit 14
        h.copy_(flat.view(torch.int8))
        h.bitwise_left_shift_(7)
        h.bitwise_and_(-0x4080)  # 0xBF80
    out.view(-1).copy_(h.view(torch.float16))


def _fp8_table(codes: torch.Tensor, kind: str, out: torch.Tensor, scratch: torch.Tensor) -> None:
    """``out`` := torch's value of every FP8 code, NaN payloads included, through a table of 65,536 float32
    pairs indexed by each little-endian uint16 of the codes (one lookup per two codes). ``scratch``:
    int16, at least ``codes.numel()``, of even length (it holds the int32 indices)."""
    flat, dest = codes.reshape(-1), out.view(-1)
    n = flat.numel()
    aligned = flat.storage_offset() % 2 == 0 and dest.storage_offset() % 2 == 0 and dest.data_ptr() % 8 == 0
    pairs = n // 2 if sys.byteorder == "little" and aligned else 0
    if pairs:
        idx = scratch.view(torch.int32)[:pairs]
        idx.copy_(flat[: 2 * pairs].view(torch.uint16))  # zero-extended: 0 .. 65535
        torch.index_select(_pair_lut(kind), 0, idx, out=dest[: 2 * pairs].view(torch.int64))
    if n > 2 * pairs:
        torch.index_select(_lut(kind), 0, flat[2 * pairs :].to(torch.int32), out=dest[2 * pairs :])


def _decode(codes: torch.Tensor, kind: str, out: torch.Tensor, scratch: torch.Tensor, nan: bool) -> float:
    """Decode ``codes`` into ``out`` by bit moves, or by the table when ``nan`` and the codes hold a NaN;
    returns the factor ``out`` still lacks (``2**-_F16_EXP[kind]`` or 1)."""
    if nan and _has_nan(codes.reshape(-1), kind):
        _fp8_table(codes, kind, out, scratch)
        return 1.0
    _fp8_halves(codes, kind, out, scratch)
    return 2.0 ** -_F16_EXP[kind]


def decode_fp8(
    codes: torch.Tensor,
    kind: str = "F8_E4M3",
    out: torch.Tensor | None = None,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 values of FP8 ``codes`` (uint8 or a float8 dtype, contiguous) in ``out`` (same shape).

    ``scratch``: an int16 buffer of at least ``codes.numel()`` elements (an even number), reused.
    Equal, bit for bit, to torch's own cast (``codes.view(float8 dtype).float()``).
    """
    raw, own = _as_codes(codes)
    kind = own or kind
    raw = raw.contiguous()
    out = _output(out, tuple(raw.shape))
    if scratch is None or scratch.numel() < raw.numel() or scratch.numel() % 2:
        scratch = _scratch(raw.numel())
    unit = _decode(raw, kind, out, scratch, True)
    if unit != 1.0:
        out.mul_(unit)  # exact: a power of two on a normal float
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
    raw, kind = raw.contiguous(), own or kind
    r, c = raw.shape
    out = _output(out, (r, c))
    if scale_inv.dim() > 2 and scale_inv.numel() != 1:
        raise ValueError(
            f"an FP8 scale is a scalar, per row (1-D) or per block (2-D), not {list(scale_inv.shape)}"
        )
    if min(block) < 1:
        raise ValueError(f"FP8 block {block}: sizes must be positive")
    if rows is not None and (rows.dim() != 1 or rows.numel() != r):
        raise ValueError(f"rows: one index per row of w ({r}), got {list(rows.shape)}")
    s = scale_inv.float()
    if s.dim() == 0 or s.numel() == 1:
        s = s.reshape(1, 1)
    elif s.dim() == 1:
        s = s.reshape(-1, 1)
    unit = 2.0 ** -_F16_EXP[kind]
    # the decoded halves' power of two folded into the scale, where that cannot overflow
    folded = s * unit if unit != 1.0 and bool(s.abs().amax() < _FOLD_LIMIT) else None
    br, bc = block
    if s.shape[0] == 1:
        block_row = torch.zeros(r, dtype=torch.int64)
    elif rows is None:
        block_row = torch.arange(row0, row0 + r) // br - row0 // br
    else:
        block_row = rows.to(torch.int64) // br
    if _compiled is not None and out.numel() and _aligned(out):
        cols = bc if s.shape[1] > 1 else c  # columns per scale column
        sc = s.contiguous()
        low, high = int(block_row.min()), int(block_row.max())
        if low >= 0 and high < sc.shape[0] and (c - 1) // cols < sc.shape[1] and _aligned(sc):
            _compiled.fp8(_np(raw), _np(_lut(kind)), _np(sc), _np(block_row), sc.shape[1], cols, _np(out))
            return out
    full = c // bc if s.shape[1] > 1 else 0
    step = max(1, DECODE_ELEMENTS // max(c, 1))
    scratch = _scratch(min(r, step) * c)
    nan = _has_nan(raw, kind)
    for a in range(0, r, step):
        b = min(r, a + step)
        o = out[a:b]
        lacks = _decode(raw[a:b], kind, o, scratch, nan)
        sc = s
        if lacks != 1.0 and folded is not None:
            sc = folded
        elif lacks != 1.0:
            o.mul_(lacks)
        srows = sc.index_select(0, block_row[a:b])  # [b - a, scale columns]
        if sc.shape[1] == 1:
            o.mul_(srows)
            continue
        if full:
            o[:, : full * bc].view(b - a, full, bc).mul_(srows[:, :full].unsqueeze(-1))
        if c > full * bc:
            o[:, full * bc :].mul_(srows[:, full : full + 1])
    return out


def dequant_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """float32 [..., G*32] from MXFP4 ``blocks`` uint8 [..., G, 16] and ``scales`` uint8 [..., G].

    Low nibble -> even output, high nibble -> odd output; each group of 32 times ``2**(scale - 127)``.
    Equal, bit for bit, to transformers' ``convert_moe_packed_tensors`` in float32 (before its transpose).
    """
    *lead, g, nb = blocks.shape
    n_out = g * nb * 2
    out = _output(out, (*lead, n_out))
    blocks, scales = blocks.contiguous(), scales.contiguous()
    if (
        _compiled is not None
        and nb == 16
        and blocks.dtype == scales.dtype == torch.uint8
        and scales.numel() * 16 == blocks.numel()
        and _aligned(out)
        and out.numel() == 2 * blocks.numel()
    ):
        _compiled.mxfp4(_np(blocks), _np(scales), _np(out))
        return out
    flat_b = blocks.reshape(-1, g * nb)
    flat_s = scales.reshape(-1, g)
    dest = out.view(-1, n_out)
    rows = flat_b.shape[0]
    step = max(1, DECODE_ELEMENTS // max(n_out, 1))
    pairs = _scratch(min(rows, step) * g * nb, torch.int32)
    fold = flat_s.numel() == 0 or int(flat_s.max()) <= _MX_FOLD_MAX
    bits = _scratch(min(rows, step) * g, torch.int32, "scales")
    for a in range(0, rows, step):
        b = min(rows, a + step)
        if fold:  # one factor per group, 2**(s - 113) = 2**14 * 2**(s - 127), built as float32 bits
            f = bits[: (b - a) * g]
            f.copy_(flat_s[a:b].reshape(-1))
            factor = f.add_(14).bitwise_left_shift_(23).view(torch.float32).view(b - a, g)
        else:  # exponents that overflow the folded factor: 2**15 first (twice the FP4 value, exact), then
            # half the scale. 255 is 2**128, beyond float32, but ldexp applies it exactly (0 stays 0,
            # 0.5 becomes 2**127, larger values inf): so do these two products.
            idx = flat_s[a:b].reshape(-1).to(torch.int32)
            factor = _e8m0_halves().index_select(0, idx).view(b - a, g)
        p = pairs[: (b - a) * g * nb]
        # each byte -> one int32 holding two halves: the low nibble's (bits 0..15), the high one's above.
        # byte at bits 12..19 and 24..31, so each 16-bit half has its nibble at bits 12..15 ...
        p.copy_(flat_b[a:b].reshape(-1))
        p.mul_(4097).bitwise_left_shift_(12)
        # ... then, per half, sign stays at bit 15 (arithmetic shift) and exponent/mantissa go to bits
        # 9..11: the half of the FP4 value times 2**-14 (code 1, 0.5, becomes a subnormal half)
        h = p.view(torch.int16)
        h.bitwise_right_shift_(3)
        h.bitwise_and_(-0x7200)  # 0x8E00
        o = dest[a:b]
        o.view(-1).copy_(p.view(torch.float16))
        if not fold:
            o.mul_(2.0**15)
        o.view(b - a, g, nb * 2).mul_(factor.unsqueeze(-1))
    return out
