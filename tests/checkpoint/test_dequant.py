"""FP8 and MXFP4 dequantisation: bit for bit against torch's own float8 cast times the scales and against
transformers' ``convert_moe_packed_tensors``, on both decoding routes (bit moves for NaN-free chunks, the
table for chunks with NaN codes), with chunk boundaries inside the tensors, and at the edges of the scale
ranges (zero, subnormal results, overflow, E8M0 255). Each runs on both decoders (``route``): the
compiled one (``_decode.c``) and the torch ops it stands in for where no C compiler was found."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moediag.checkpoint import dequant
from moediag.checkpoint.dequant import decode_fp8, dequant_fp8, dequant_mxfp4

from .conftest import fp8_quantise, mxfp4_quantise


@pytest.fixture(params=["compiled", "torch"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test on the compiled decoder, then on the torch route (the compiled one switched off)."""
    if request.param == "torch":
        monkeypatch.setattr(dequant, "_compiled", None)
    elif dequant._compiled is None:
        pytest.skip("moediag was built without its compiled decoder (no C compiler); torch route only")
    assert dequant.decoder() == request.param
    return str(request.param)


def test_fp8_dequantisation_round_trip(route: str) -> None:
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    q, s = fp8_quantise(w, (8, 16))
    back = dequant_fp8(q, s, (8, 16))
    assert torch.nn.functional.cosine_similarity(back.flatten(), w.flatten(), dim=0) > 0.999
    # a row range starting mid-block uses the right scale rows
    part = dequant_fp8(q[10:20], s[1:3], (8, 16), row0=10)
    assert torch.equal(part, back[10:20])


def test_mxfp4_dequantisation_by_hand(route: str) -> None:
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0] = 0x21  # low nibble 1 -> 0.5 (even slot), high nibble 2 -> 1.0 (odd slot)
    blocks[0, 1] = 0xF9  # low 9 -> -0.5, high 15 -> -6
    out = dequant_mxfp4(blocks, torch.tensor([128], dtype=torch.uint8))  # scale 2^(128-127) = 2
    assert out.shape == (32,)
    assert out[:4].tolist() == [1.0, 2.0, -1.0, -12.0]
    torch.manual_seed(1)
    w = torch.randn(3, 5, 64)
    b, sc = mxfp4_quantise(w)
    back = dequant_mxfp4(b, sc)
    assert back.shape == w.shape
    assert torch.nn.functional.cosine_similarity(back.flatten(), w.flatten(), dim=0) > 0.95


# -- dequantisation: bit for bit against torch's own conversion and transformers' MXFP4 ------------------


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)  # NaN == NaN, -0 != +0: exact identity of every value


def _expanded(s: torch.Tensor, block: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    return s.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)[: shape[0], : shape[1]]


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_fp8_decode_every_code_is_torchs(dtype: torch.dtype) -> None:
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    for n in (256, 255, 1):  # pairs, pairs plus a single tail, one code alone
        c = codes[:n].view(dtype)
        assert torch.equal(_bits(decode_fp8(c)), _bits(c.float()))
    kind = "F8_E4M3" if dtype == torch.float8_e4m3fn else "F8_E5M2"
    assert torch.equal(_bits(decode_fp8(codes, kind)), _bits(codes.view(dtype).float()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    br=st.sampled_from([1, 7, 128]),
    bc=st.sampled_from([1, 16, 128]),
    e5m2=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fp8_dequant_bit_for_bit(
    route: str, rows: int, cols: int, br: int, bc: int, e5m2: bool, seed: int
) -> None:
    dtype = torch.float8_e5m2 if e5m2 else torch.float8_e4m3fn
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (rows, cols), dtype=torch.uint8, generator=g)
    w = raw.view(dtype)
    s = torch.rand(-(-rows // br), -(-cols // bc), generator=g) * 3
    ref = w.float() * _expanded(s, (br, bc), (rows, cols))
    assert torch.equal(_bits(dequant_fp8(w, s, (br, bc))), _bits(ref))
    # uint8 codes with an explicit kind, into a given buffer
    out = torch.empty(rows, cols)
    dequant_fp8(raw, s, (br, bc), kind="F8_E5M2" if e5m2 else "F8_E4M3", out=out)
    assert torch.equal(_bits(out), _bits(ref))
    # a row range starting mid-block, with only the scale rows that cover it
    a, b = rows // 3, rows
    part = dequant_fp8(w[a:b], s[a // br :], (br, bc), row0=a)
    assert torch.equal(_bits(part), _bits(ref[a:b]))
    # arbitrary rows in any order (the sampled screen) with the whole scale tensor
    pick = torch.randperm(rows, generator=g)[: max(1, rows // 4)]
    got = dequant_fp8(w[pick].contiguous(), s, (br, bc), rows=pick)
    assert torch.equal(_bits(got), _bits(ref[pick]))


def test_fp8_dequant_scalar_and_per_row_scales(route: str) -> None:
    raw = torch.randint(0, 256, (9, 33), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    w = raw.view(torch.float8_e4m3fn)
    assert torch.equal(_bits(dequant_fp8(w, torch.tensor(0.25), (9, 33))), _bits(w.float() * 0.25))
    per_row = torch.rand(9)
    assert torch.equal(_bits(dequant_fp8(w, per_row, (1, 33))), _bits(w.float() * per_row[:, None]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mxfp4_dequant_matches_transformers(route: str, dtype: torch.dtype) -> None:
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(5)
    blocks = torch.randint(0, 256, (3, 10, 6, 16), dtype=torch.uint8, generator=g)  # [E, rows, G, 16]
    scales = torch.randint(100, 150, (3, 10, 6), dtype=torch.uint8, generator=g)
    scales[0, 0, 0], scales[1, 2, 3] = 0, 254  # the extremes of the exponent byte
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # [E, G*32, rows]
    ours = dequant_mxfp4(blocks, scales)  # [E, rows, G*32] float32
    assert torch.equal(ours.to(dtype).transpose(1, 2), theirs)
    if dtype == torch.float32:
        assert torch.equal(_bits(ours.transpose(1, 2)), _bits(theirs))


# -- both FP8 routes, chunk boundaries, scale edges -----------------------------------------------------

_KINDS = [(torch.float8_e4m3fn, "F8_E4M3"), (torch.float8_e5m2, "F8_E5M2")]


def _nan_free(raw: torch.Tensor, kind: str) -> torch.Tensor:
    """``raw`` with every NaN code replaced by a finite one (real weights hold no NaN)."""
    low = raw & 0x7F
    bad = low == 0x7F if kind == "F8_E4M3" else low > 0x7C
    return torch.where(bad, raw & 0x80 | 0x11, raw)


def _no_table(*_: object) -> None:
    raise AssertionError("a NaN-free chunk went through the table")


@pytest.mark.parametrize(("dtype", "kind"), _KINDS)
def test_fp8_nan_free_codes_are_decoded_by_bit_moves(
    dtype: torch.dtype, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dequant, "_compiled", None)  # the torch route's own two ways
    monkeypatch.setattr(dequant, "_fp8_table", _no_table)
    monkeypatch.setattr(dequant, "DECODE_ELEMENTS", 300)  # many chunks, boundaries inside scale blocks
    codes = _nan_free(torch.arange(256, dtype=torch.int32).to(torch.uint8), kind)
    assert torch.equal(_bits(decode_fp8(codes.view(dtype))), _bits(codes.view(dtype).float()))
    g = torch.Generator().manual_seed(11)
    raw = _nan_free(torch.randint(0, 256, (77, 130), dtype=torch.uint8, generator=g), kind)
    s = torch.rand(-(-77 // 16), -(-130 // 32), generator=g) * 3
    ref = raw.view(dtype).float() * _expanded(s, (16, 32), (77, 130))
    assert torch.equal(_bits(dequant_fp8(raw.view(dtype), s, (16, 32))), _bits(ref))
    pick = torch.randperm(77, generator=g)[:20]
    got = dequant_fp8(raw[pick].contiguous().view(dtype), s, (16, 32), rows=pick)
    assert torch.equal(_bits(got), _bits(ref[pick]))


@pytest.mark.parametrize(("dtype", "kind"), _KINDS)
def test_fp8_nan_codes_in_some_chunks_only(
    route: str, dtype: torch.dtype, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dequant, "DECODE_ELEMENTS", 256)  # 4 rows of 64 per chunk
    g = torch.Generator().manual_seed(12)
    raw = _nan_free(torch.randint(0, 256, (40, 64), dtype=torch.uint8, generator=g), kind)
    raw[5, 7], raw[6, 0], raw[33, 63] = 0x7F, 0xFF, 0xFE  # NaN in chunks 1 and 8 (E5M2: also 0xFE)
    s = torch.rand(5, 2, generator=g)
    ref = raw.view(dtype).float() * _expanded(s, (8, 32), (40, 64))
    assert torch.equal(_bits(dequant_fp8(raw, s, (8, 32), kind=kind)), _bits(ref))


@pytest.mark.parametrize(("dtype", "kind"), _KINDS)
def test_fp8_scales_at_the_edges(route: str, dtype: torch.dtype, kind: str) -> None:
    """Scales the 2**8 fold must not touch (huge, inf, NaN) and ones that give subnormal products."""
    raw = _nan_free(torch.arange(256, dtype=torch.int32).to(torch.uint8), kind).repeat(6, 1)
    for edge in (2.0**110, float("inf"), float("nan"), 0.0, -0.0, 1e-40, 2.0**-140, 3.0e38):
        s = torch.tensor([[1.0, edge]])  # one ordinary block beside the edge
        ref = raw.view(dtype).float() * _expanded(s, (6, 128), (6, 256))
        assert torch.equal(_bits(dequant_fp8(raw.view(dtype), s, (6, 128))), _bits(ref)), edge


def _every_byte_and_scale(top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MXFP4 blocks [1, top + 1, 16, 16] holding every byte value in each row, row ``r`` scaled by ``r``."""
    blocks = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(16, 16).repeat(top + 1, 1, 1)
    scales = torch.arange(top + 1, dtype=torch.int32).to(torch.uint8).view(-1, 1).repeat(1, 16)
    return blocks.unsqueeze(0), scales.unsqueeze(0)


@pytest.mark.parametrize("top", [240, 255])  # 240: every scale folds into one factor; 255: some do not
def test_mxfp4_every_code_at_every_scale_is_transformers(
    route: str, top: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Zero scale and subnormal results (scales 0..2), overflow to inf (241..254), and 255 (2**128: ldexp
    keeps 0 at 0 and makes 0.5 2**127, no NaN) exactly as transformers gives them, across chunk
    boundaries."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    monkeypatch.setattr(dequant, "DECODE_ELEMENTS", 3 * 512)  # 3 rows of 512 values a chunk
    blocks, scales = _every_byte_and_scale(top)
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    ours = dequant_mxfp4(blocks, scales)
    assert torch.equal(_bits(ours.transpose(1, 2)), _bits(theirs))
    if top == 255:
        assert not bool(torch.isnan(ours).any()) and bool(torch.isinf(ours[0, 255]).any())
        assert float(ours[0, 255, 2]) == 2.0**127  # byte 0x01: low nibble 0.5
    tiny = ours[0, 0].abs()  # scale byte 0: 0.5, 1, 1.5 times 2**-127 are subnormal floats
    assert bool(((tiny > 0) & (tiny < 2.0**-126)).any())


# -- the compiled decoder: built where it can be, used, and fail-closed on sizes -------------------------


def test_compiled_decoder_is_built_where_a_compiler_is() -> None:
    """setup.py's extension is optional; where a C compiler and Python's headers exist, a build that
    silently fell back to the (slower) torch route is a defect."""
    import shutil
    import sysconfig
    from pathlib import Path

    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if not (shutil.which(cc) and headers.exists()):
        pytest.skip(f"no C compiler ({cc}) or no {headers}: the torch route is expected")
    assert dequant.decoder() == "compiled"


class _Counting:
    """Stands in for the compiled module, counting the calls it passes on."""

    def __init__(self, real: object) -> None:
        self.real, self.calls = real, 0

    def __getattr__(self, name: str) -> object:
        fn = getattr(self.real, name)

        def call(*a: object) -> object:
            self.calls += 1
            return fn(*a)

        return call


def test_readers_layouts_take_the_compiled_route(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shapes the row readers pass (row ranges into a slice of the pass's buffer, sampled rows with
    the whole scale tensor) reach the compiled decoder rather than falling back."""
    if dequant._compiled is None:
        pytest.skip("moediag was built without its compiled decoder")
    spy = _Counting(dequant._compiled)
    monkeypatch.setattr(dequant, "_compiled", spy)
    g = torch.Generator().manual_seed(2)
    buf = torch.empty(4, 480)  # rows of the pass buffer: each read lands in a contiguous slice
    dequant_mxfp4(
        torch.randint(0, 256, (3, 2, 16), dtype=torch.uint8, generator=g),
        torch.full((3, 2), 127, dtype=torch.uint8),
        out=buf[1, :192].view(3, 64),
    )
    raw = torch.randint(0, 120, (40, 48), dtype=torch.uint8, generator=g)
    s = torch.rand(5, 3, generator=g)
    dequant_fp8(raw[10:20], s[1:3], (8, 16), row0=10, out=buf[2, :480].view(10, 48))
    pick = torch.tensor([33, 2, 17])
    dequant_fp8(raw[pick], s, (8, 16), rows=pick)
    assert spy.calls == 3


def test_compiled_decoder_refuses_sizes_that_do_not_match() -> None:
    """The C side checks every size and index itself before writing a byte."""
    c = dequant._compiled
    if c is None:
        pytest.skip("moediag was built without its compiled decoder")
    u8, f32 = np.zeros(32, np.uint8), np.zeros(64, np.float32)
    with pytest.raises(ValueError, match="mxfp4"):
        c.mxfp4(u8, np.zeros(3, np.uint8), f32)  # 3 scales for 2 groups
    lut, out = np.zeros(256, np.float32), np.full(8, 7.0, np.float32)
    with pytest.raises(ValueError, match="fp8"):  # scale row 2 of a 2-row scale tensor
        c.fp8(np.zeros(8, np.uint8), lut, np.ones(2, np.float32), np.array([0, 2], np.int64), 1, 4, out)
    with pytest.raises(ValueError, match="fp8"):  # 8 columns need 2 scale columns of 4
        c.fp8(np.zeros(8, np.uint8), lut, np.ones(1, np.float32), np.array([0], np.int64), 1, 4, out)
    assert (out == 7.0).all()


def test_strided_inputs_decode_and_a_wrong_out_is_refused(route: str) -> None:
    """Codes, blocks and scales that are views with strides decode as their contiguous copies would; an
    ``out`` that the decoders cannot fill element by element in order is refused, not half-written."""
    g = torch.Generator().manual_seed(4)
    wide = torch.randint(0, 256, (1, 64), dtype=torch.uint8, generator=g)
    w = wide[:, ::2]  # one row, stride 2: flattening it is still a strided view
    s = torch.rand(1, 2, generator=g)
    ref = w.contiguous().view(torch.float8_e4m3fn).float() * _expanded(s, (1, 16), (1, 32))
    assert torch.equal(_bits(dequant_fp8(w, s, (1, 16))), _bits(ref))
    blocks = torch.randint(0, 256, (2, 6, 16), dtype=torch.uint8, generator=g)[:, ::2]
    scales = torch.randint(120, 130, (2, 3), dtype=torch.uint8, generator=g)
    assert torch.equal(
        _bits(dequant_mxfp4(blocks, scales)), _bits(dequant_mxfp4(blocks.contiguous(), scales))
    )
    raw = torch.randint(0, 120, (4, 6), dtype=torch.uint8, generator=g)
    for bad in (torch.empty(6, 4).t(), torch.empty(4, 7), torch.empty(4, 6, dtype=torch.float64)):
        with pytest.raises(ValueError, match="out must be contiguous float32"):
            dequant_fp8(raw, torch.ones(1, 1), (4, 6), out=bad)
    with pytest.raises(ValueError, match="out must be contiguous float32"):
        dequant_mxfp4(blocks, scales, out=torch.empty(2, 3 * 32).t().contiguous().t())


def test_shapes_the_decoders_do_not_take_are_refused(route: str) -> None:
    """A scale with three dimensions, a block size of 0, or ``rows`` that are not one index per row of
    ``w`` are refused on both decoders alike (the compiled one would otherwise decode another matrix)."""
    g = torch.Generator().manual_seed(6)
    w = torch.randint(0, 120, (2, 32), dtype=torch.uint8, generator=g)
    s = torch.rand(3, 2, generator=g)
    cases = [
        ({"scale_inv": s.unsqueeze(0)}, "scalar, per row"),
        ({"block": (0, 16)}, "sizes must be positive"),
        ({"rows": torch.tensor([0, 5, 9, 17])}, "one index per row"),
        ({"rows": torch.tensor([[0], [5]])}, "one index per row"),
    ]
    for change, message in cases:
        args: dict[str, Any] = {"scale_inv": s, "block": (8, 16), "rows": torch.tensor([0, 17])} | change
        with pytest.raises(ValueError, match=message):
            dequant_fp8(w, args["scale_inv"], args["block"], rows=args["rows"])


def test_misaligned_out_decodes_right(route: str) -> None:
    """An ``out`` over a byte buffer at an odd offset (not aligned for float32) is decoded into correctly:
    the compiled decoder leaves it to the torch route rather than store floats at a misaligned address."""
    g = torch.Generator().manual_seed(7)
    raw = torch.randint(0, 120, (3, 8), dtype=torch.uint8, generator=g)
    s = torch.rand(1, 1, generator=g)
    out = torch.frombuffer(bytearray(4 * 24 + 1), dtype=torch.float32, offset=1, count=24).view(3, 8)
    assert out.data_ptr() % 4 != 0
    dequant_fp8(raw, s, (3, 8), out=out)
    assert torch.equal(_bits(out), _bits(raw.view(torch.float8_e4m3fn).float() * s))
    blocks = torch.randint(0, 256, (1, 16), dtype=torch.uint8, generator=g)
    scales = torch.tensor([127], dtype=torch.uint8)
    mx = torch.frombuffer(bytearray(4 * 32 + 2), dtype=torch.float32, offset=2, count=32)
    dequant_mxfp4(blocks, scales, out=mx)
    assert torch.equal(_bits(mx), _bits(dequant_mxfp4(blocks, scales)))
    if route == "compiled":  # and the C side refuses one by itself
        arr = np.frombuffer(bytearray(4 * 32 + 1), np.uint8)[1:].view(np.float32)
        with pytest.raises(ValueError, match="misaligned"):
            dequant._compiled.mxfp4(blocks.numpy().reshape(-1), scales.numpy(), arr)
