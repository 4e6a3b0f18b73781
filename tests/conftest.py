"""Shared fixture builders: traces are made by code (plain safetensors), never committed blobs."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from moediag.trace.schema import FORMAT_NAME, FORMAT_VERSION


def trace_metadata(
    num_experts: int | None = 8,
    top_k: int | None = 2,
    score_function: str | None = "softmax",
    **extra: object,
) -> dict[str, str]:
    """A v1 ``__metadata__`` written by hand (not with moediag's own builder)."""
    meta = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
    if num_experts is not None:
        meta["num_experts"] = str(num_experts)
    if top_k is not None:
        meta["top_k"] = str(top_k)
    if score_function is not None:
        meta["score_function"] = score_function
    for key, value in extra.items():
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return meta


def write_raw(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> Path:
    """Write a safetensors file with the plain library (what any recorder could do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def random_tensors(
    seed: int = 0,
    *,
    tokens: int = 64,
    num_experts: int = 8,
    top_k: int = 2,
    layers: tuple[int, ...] = (0, 1),
    logits: bool = True,
    ids: bool = False,
    sequences: int | None = None,
    positions: bool = False,
    mask: bool = False,
    step: bool = False,
    skew: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Random trace tensors. ``skew`` adds a per-expert offset so loads are uneven."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for layer in layers:
        z = torch.randn(tokens, num_experts, generator=g) + skew * torch.linspace(0, 1, num_experts)
        if logits:
            out[f"layers.{layer}.router_logits"] = z.to(dtype)
        if ids:
            out[f"layers.{layer}.topk_ids"] = torch.argsort(
                torch.rand(tokens, num_experts, generator=g) + skew * torch.linspace(0, 1, num_experts),
                dim=1,
                descending=True,
            )[:, :top_k].to(torch.int32)
    if sequences:
        cuts = torch.sort(torch.randint(0, tokens, (sequences - 1,), generator=g)).values
        seq = torch.zeros(tokens, dtype=torch.int64)
        for c in cuts.tolist():
            seq[c:] += 1
        out["tokens.sequence_ids"] = seq
        if positions:
            pos = torch.zeros(tokens, dtype=torch.int64)
            for t in range(1, tokens):
                pos[t] = pos[t - 1] + 1 if seq[t] == seq[t - 1] else 0
            out["tokens.positions"] = pos
    if mask:
        out["tokens.mask"] = (torch.rand(tokens, generator=g) > 0.2).to(torch.uint8)
    if step:
        out["tokens.step"] = torch.arange(tokens, dtype=torch.int64) * 3 // max(1, tokens)
    return out


@pytest.fixture
def make_trace(tmp_path: Path) -> Callable[..., Path]:
    """``make_trace(name="t.safetensors", metadata=None, tensors=None, **random_tensors_kwargs) -> path``."""

    def _make(
        name: str = "trace.safetensors",
        *,
        metadata: dict[str, str] | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
        **kwargs: object,
    ) -> Path:
        if tensors is None:
            tensors = random_tensors(**kwargs)  # type: ignore[arg-type]
        if metadata is None:
            metadata = trace_metadata(
                int(kwargs.get("num_experts", 8)),  # type: ignore[call-overload]
                int(kwargs.get("top_k", 2)),  # type: ignore[call-overload]
                "softmax",
            )
        return write_raw(tmp_path / name, tensors, metadata)

    return _make


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def raw_safetensors(header: dict, data: bytes = b"", header_len: int | None = None) -> bytes:
    """Bytes of a hand-made safetensors file (for headers the library refuses to write)."""
    blob = json.dumps(header).encode()
    n = len(blob) if header_len is None else header_len
    return struct.pack("<Q", n) + blob + data


def np_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def assert_same(a: Any, b: Any, where: str = "", rel: float = 1e-9) -> None:
    """Integers (and lists of them) exactly; floats to ``rel`` relative; None only where None."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}", rel)
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            assert_same(x, y, f"{where}[{i}]", rel)
    elif isinstance(a, (bool, int)) or a is None or isinstance(a, str):
        assert a == b and type(a) is type(b), f"{where}: {a!r} != {b!r}"
    elif isinstance(a, float):
        assert isinstance(b, float), f"{where}: {a!r} vs {b!r}"
        assert math.isclose(a, b, rel_tol=rel, abs_tol=rel * 1e-3), f"{where}: {a!r} != {b!r}"
    else:  # pragma: no cover
        raise AssertionError(f"{where}: unexpected {type(a)}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regen-golden",
        action="store_true",
        help="Rewrite the golden files under tests/golden and tests/render/golden from the current output "
        "(review the diff before committing). MOEDIAG_REGEN_GOLDEN=1 does the same.",
    )


@pytest.fixture
def regen_golden(request: pytest.FixtureRequest) -> bool:
    """True when golden files are to be rewritten (``--regen-golden`` or ``MOEDIAG_REGEN_GOLDEN=1``)."""
    import os

    return bool(request.config.getoption("--regen-golden") or os.environ.get("MOEDIAG_REGEN_GOLDEN"))
