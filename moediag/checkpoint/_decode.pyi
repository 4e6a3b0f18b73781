"""Types of the compiled decoder (``_decode.c``); :mod:`moediag.checkpoint.dequant` is its only caller."""

from numpy import ndarray as Buffer  # the caller passes numpy views of torch tensors

def mxfp4(blocks: Buffer, scales: Buffer, out: Buffer, /) -> None:
    """blocks uint8 [G * 16], scales uint8 [G] -> out float32 [G * 32]; ValueError on sizes."""

def fp8(
    codes: Buffer,
    lut: Buffer,
    scale: Buffer,
    scale_row: Buffer,
    scale_cols: int,
    block_cols: int,
    out: Buffer,
    /,
) -> None:
    """out[r, c] = lut[codes[r, c]] * scale[scale_row[r], c // block_cols]; ValueError on sizes."""
