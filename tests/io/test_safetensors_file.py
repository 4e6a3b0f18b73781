"""The ranged safetensors reader: exact reads of any rows, and one clean error for every broken header."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from moediag.errors import InvalidInputError
from moediag.io.safetensors_file import MAX_HEADER_BYTES, SafetensorsFile, looks_like_safetensors
from tests.conftest import raw_safetensors

DTYPES = [
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i, dtype in enumerate(DTYPES):
        x = torch.randn(7, 3, generator=g) * 50
        tensors[f"t{i}"] = x > 0 if dtype == torch.bool else x.to(dtype)
    tensors["scalar"] = torch.tensor(3.5)
    tensors["empty"] = torch.zeros(0, 4)
    path = tmp_path / "s.safetensors"
    save_file(tensors, str(path), metadata={"a": "1"})
    return path


def test_reads_every_dtype_and_any_rows(sample: Path) -> None:
    f = SafetensorsFile(sample)
    want = load_file(str(sample))
    assert f.metadata == {"a": "1"}
    assert set(f.tensors) == set(want)
    for name, tensor in want.items():
        assert torch.equal(f.read(name), tensor), name
        if tensor.dim() and tensor.shape[0] == 7:
            for a, b in ((0, 7), (2, 5), (6, 7), (3, 3)):
                got = f.read(name, (a, b))
                assert got.dtype == tensor.dtype and torch.equal(got, tensor[a:b]), (name, a, b)
    assert f.read("empty").shape == (0, 4)


def test_rows_out_of_range(sample: Path) -> None:
    with pytest.raises(IndexError):
        SafetensorsFile(sample).read("t0", (5, 9))


def _bad(tmp_path: Path, blob: bytes) -> InvalidInputError:
    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(InvalidInputError) as info:
        SafetensorsFile(p)
    assert info.value.path == str(p)
    assert str(p) in str(info.value)
    return info.value


F32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("blob", "words"),
    [
        (b"", "too short"),
        (b"\x01\x02\x03", "too short"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "exceeds"),
        (struct.pack("<Q", 2**63) + b"{}", "exceeds"),
        (struct.pack("<Q", 500) + b'{"a": 1}', "truncated"),
        (raw_safetensors({})[:8] + b"{not json", "not valid JSON"),
        (struct.pack("<Q", 9) + b"{not json", "not valid JSON"),
        (struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "not valid JSON"),
        (raw_safetensors([1, 2]), "JSON object"),
        (raw_safetensors({"__metadata__": {"a": 1}}), "__metadata__"),
        (raw_safetensors({"x": 5}), "not an object"),
        (
            raw_safetensors({"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
            "unknown dtype",
        ),
        (
            raw_safetensors({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
            "invalid shape",
        ),
        (
            raw_safetensors({"x": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8),
            "invalid shape",
        ),
        (
            raw_safetensors({"x": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8),
            "data_offsets",
        ),
        (
            raw_safetensors({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8),
            "data_offsets",
        ),
        (
            raw_safetensors({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
            "needs 12",
        ),
        (
            raw_safetensors(
                {"x": F32, "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12
            ),
            "overlaps",
        ),
        (raw_safetensors({"x": F32}, b"\0" * 5), "truncated"),
    ],
)
def test_broken_headers_raise_one_clean_error(tmp_path: Path, blob: bytes, words: str) -> None:
    err = _bad(tmp_path, blob)
    assert words in err.message


def test_truncated_valid_file(sample: Path, tmp_path: Path) -> None:
    blob = sample.read_bytes()
    err = _bad(tmp_path, blob[: len(blob) - 3])
    assert "truncated" in err.message


def test_directory_and_missing(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="directory"):
        SafetensorsFile(tmp_path)
    with pytest.raises(InvalidInputError, match="no such file"):
        SafetensorsFile(tmp_path / "nope.safetensors")


def test_file_shrinking_after_open_is_a_clean_error(sample: Path) -> None:
    f = SafetensorsFile(sample)
    blob = sample.read_bytes()
    sample.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(InvalidInputError, match="truncated"):
        for name in f.tensors:
            f.read(name)


def test_looks_like_safetensors(sample: Path, tmp_path: Path) -> None:
    assert looks_like_safetensors(sample)
    other = tmp_path / "x.bin"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    assert not looks_like_safetensors(other)
    assert not looks_like_safetensors(tmp_path / "missing")
    assert not looks_like_safetensors(tmp_path)


def test_gaps_between_tensors_are_allowed(tmp_path: Path) -> None:
    # safetensors' own writer never leaves gaps, but a gap is not corruption: reads use the offsets
    header = {"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}
    blob = raw_safetensors(header, b"\0\0\0\0" + struct.pack("<f", 2.5))
    p = tmp_path / "gap.safetensors"
    p.write_bytes(blob)
    assert SafetensorsFile(p).read("x").tolist() == [2.5]
    json.loads(blob[8 : 8 + struct.unpack("<Q", blob[:8])[0]])
