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

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from moediag import options
from moediag.checkpoint.inventory import Inventory, TensorRef, read_flat
from moediag.checkpoint.layouts import ExpertMatrix, MoEBlock
from moediag.errors import InvalidInputError

__all__ = [
    "ExpertSimilarity",
    "MXFP4_LUT",
    "bias_stats",
    "dequant_fp8",
    "dequant_mxfp4",
    "expert_similarity",
    "load_tensor_f32",
    "matrix_bytes",
    "router_stats",
]

#: FP4 (e2m1) values by nibble.
MXFP4_LUT = torch.tensor(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=torch.float32,
)
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
OUTLIER_Z = 3.5
OUTLIER_REL = 0.25

Progress = Callable[[int], None]


# -- dequantisation -----------------------------------------------------------------------------------


def dequant_fp8(
    w: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], row0: int = 0
) -> torch.Tensor:
    """float32 of FP8 rows ``w`` [r, c] starting at row ``row0``, times their block's scale.

    ``scale_inv`` holds the scale rows that cover ``w`` (from block row ``row0 // block[0]``).
    """
    r, c = w.shape
    rows = (torch.arange(row0, row0 + r) // block[0]) - row0 // block[0]
    cols = torch.arange(c) // block[1]
    s = scale_inv.float()
    if s.dim() == 0 or s.numel() == 1:
        return w.float() * s.reshape(())
    if s.dim() == 1:
        s = s.reshape(-1, 1)
    if s.shape[1] == 1:
        return w.float() * s[rows]
    return w.float() * s[rows][:, cols]


def dequant_mxfp4(blocks: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """float32 [..., G*32] from MXFP4 ``blocks`` uint8 [..., G, 16] and ``scales`` uint8 [..., G].

    Low nibble -> even output, high nibble -> odd output; each group of 32 times ``2**(scale - 127)``.
    """
    b = blocks.to(torch.int64)
    lo = MXFP4_LUT[b & 0x0F]
    hi = MXFP4_LUT[b >> 4]
    vals = torch.stack((lo, hi), dim=-1).reshape(*blocks.shape[:-1], blocks.shape[-1] * 2)
    exp = scales.to(torch.float32) - 127.0
    vals = vals * torch.exp2(exp).unsqueeze(-1)
    return vals.reshape(*blocks.shape[:-2], blocks.shape[-2] * blocks.shape[-1] * 2)


# -- matrix readers -----------------------------------------------------------------------------------


@dataclass
class _Reader:
    """Reads rows ``[r0, r1)`` of one expert's matrix (as [rows, cols] float32)."""

    rows: int
    cols: int
    read: Callable[[int, int, int], torch.Tensor]
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

        def read_mx(e: int, r0: int, r1: int) -> torch.Tensor:
            base = e * rows + r0
            blk = read_flat(bref, base * groups * nb, (base + r1 - r0) * groups * nb).reshape(
                r1 - r0, groups, nb
            )
            sc = read_flat(sref, base * groups, (base + r1 - r0) * groups).reshape(r1 - r0, groups)
            return dequant_mxfp4(blk, sc)

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

        def read_pe(e: int, r0: int, r1: int) -> torch.Tensor:
            ref = t[m.names[e]]  # type: ignore[index]
            w = read_flat(ref, r0 * cols, r1 * cols).reshape(r1 - r0, cols)
            if m.quant == "fp8":
                sname = scales.get(e)
                if sname is None:
                    return w.float()
                sref = t[sname]
                blk = _fp8_block(inv, (rows, cols), sref.shape)
                if len(sref.shape) < 2:
                    return dequant_fp8(w, inv.read(sname), blk, r0)
                sc = sref.shape[-1]
                a, b = r0 // blk[0], (r1 - 1) // blk[0] + 1
                s = read_flat(sref, a * sc, b * sc).reshape(b - a, sc)
                return dequant_fp8(w, s, blk, r0)
            return w.float()

        def span_pe(e: int, r0: int, r1: int) -> tuple[TensorRef, int, int]:
            return t[m.names[e]], r0 * cols, r1 * cols  # type: ignore[index]

        plain = m.quant is None
        return _Reader(rows, cols, read_pe, cols * _itemsize(first.dtype), span_pe if plain else None)

    assert m.fused is not None
    ref = t[m.fused]
    per = ref.numel // e_count
    cols = ref.shape[-1] if ref.shape and per % ref.shape[-1] == 0 else per
    rows = per // cols
    fsref = t[m.scales] if isinstance(m.scales, str) else None

    def read_fused(e: int, r0: int, r1: int) -> torch.Tensor:
        w = read_flat(ref, e * per + r0 * cols, e * per + r1 * cols).reshape(r1 - r0, cols)
        if m.quant == "fp8" and fsref is not None:
            if len(fsref.shape) == 3 and fsref.shape[0] == e_count:
                sr, sc = fsref.shape[1], fsref.shape[2]
                blk = _fp8_block(inv, (rows, cols), (sr, sc))
                a, b = r0 // blk[0], (r1 - 1) // blk[0] + 1
                s = read_flat(fsref, (e * sr + a) * sc, (e * sr + b) * sc).reshape(b - a, sc)
                return dequant_fp8(w, s, blk, r0)
            if fsref.numel == 1:
                return w.float() * inv.read(m.scales).float().reshape(())  # type: ignore[arg-type]
        return w.float()

    if (
        m.quant == "fp8"
        and fsref is not None
        and not ((len(fsref.shape) == 3 and fsref.shape[0] == e_count) or fsref.numel == 1)
    ):
        return f"FP8 scale {fsref.shape} of {m.fused} has an unknown layout; not dequantised"

    def span_fused(e: int, r0: int, r1: int) -> tuple[TensorRef, int, int]:
        return ref, e * per + r0 * cols, e * per + r1 * cols

    return _Reader(
        rows, cols, read_fused, cols * _itemsize(ref.dtype), span_fused if m.quant is None else None
    )


def _itemsize(dtype: str) -> int:
    from moediag.io.safetensors_file import itemsize

    return itemsize(dtype)


def matrix_bytes(inv: Inventory, block: MoEBlock) -> int:
    """Bytes the redundancy pass reads for ``block`` (for progress bars and throughput)."""
    total = 0
    for m in block.matrices:
        if m.names:
            total += sum(inv.tensors[n].info.nbytes for n in m.names.values())
        elif m.fused:
            total += inv.tensors[m.fused].info.nbytes
            if isinstance(m.scales, str):
                total += inv.tensors[m.scales].info.nbytes
    return total


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

    cosine: torch.Tensor | None  # [E, E] float64, min over projections (None when nothing was read)
    norms: list[float] = field(default_factory=list)  # per expert, over all projections read
    pairs: list[list[Any]] = field(default_factory=list)  # [i, j, cos] with cos >= threshold
    distinct: int | None = None
    zero_experts: list[int] = field(default_factory=list)
    matrices: list[str] = field(default_factory=list)  # projections used
    skipped: list[str] = field(default_factory=list)  # notes on projections left out
    bytes_read: int = 0


def _chunks(rows: int, per_row_f32: int, experts: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    step = max(1, chunk_bytes // max(1, per_row_f32 * 4 * experts))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


def expert_similarity(
    inv: Inventory,
    block: MoEBlock,
    *,
    threshold: float = options.default("redundancy_threshold"),
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Progress | None = None,
) -> ExpertSimilarity:
    """Pairwise cosine of the block's experts, streamed in row chunks of at most ``chunk_bytes`` (f32)."""
    ids = block.expert_ids
    n = len(ids)
    res = ExpertSimilarity(cosine=None)
    cos_min: torch.Tensor | None = None
    sq = torch.zeros(n, dtype=torch.float64)
    with _Files() as files:
        cos_min = _grams(inv, block, ids, chunk_bytes, progress, res, sq, files)
    if cos_min is None:
        return res
    _finish(res, cos_min, sq, ids, threshold)
    return res


def _grams(
    inv: Inventory,
    block: MoEBlock,
    ids: list[int],
    chunk_bytes: int,
    progress: Progress | None,
    res: ExpertSimilarity,
    sq: torch.Tensor,
    files: _Files,
) -> torch.Tensor | None:
    n = len(ids)
    cos_min: torch.Tensor | None = None
    for m in block.matrices:
        rd = _reader(inv, block, m)
        if isinstance(rd, str):
            res.skipped.append(f"{m.key}: {rd}")
            continue
        gram = torch.zeros(n, n, dtype=torch.float64)
        buf: torch.Tensor | None = None
        for r0, r1 in _chunks(rd.rows, rd.cols, n, chunk_bytes):
            width = (r1 - r0) * rd.cols
            if buf is None or buf.shape[1] != width:
                buf = torch.empty(n, width, dtype=torch.float32)  # reused: no fresh pages per chunk
            x = buf
            if rd.span is not None:
                # raw bytes of every expert into one buffer, then one conversion (many small
                # conversions are slow: each may wake the thread pool)
                files.read_rows(x, [rd.span(e, r0, r1) for e in ids])
            else:
                for i, e in enumerate(ids):
                    x[i] = rd.read(e, r0, r1).reshape(-1)
            gram += (x @ x.T).double()
            nb = (r1 - r0) * rd.bytes_per_row * n
            res.bytes_read += nb
            if progress is not None:
                progress(nb)
        d = gram.diagonal().clone()
        sq += d
        denom = torch.sqrt(d.clamp_min(0)).unsqueeze(0) * torch.sqrt(d.clamp_min(0)).unsqueeze(1)
        c = torch.where(denom > 0, gram / denom.clamp_min(1e-300), torch.zeros_like(gram))
        cos_min = c if cos_min is None else torch.minimum(cos_min, c)
        res.matrices.append(m.key)
    return cos_min


def _finish(
    res: ExpertSimilarity, cos_min: torch.Tensor, sq: torch.Tensor, ids: list[int], threshold: float
) -> None:
    n = len(ids)
    cos_min.fill_diagonal_(1.0)
    res.cosine = cos_min
    res.norms = [float(v) for v in torch.sqrt(sq)]
    res.zero_experts = [ids[i] for i in range(n) if float(sq[i]) == 0.0]
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in range(n):
        for b in range(a + 1, n):
            v = float(cos_min[a, b])
            if v >= threshold and ids[a] not in res.zero_experts:
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

    def read_rows(self, dest: torch.Tensor, spans: list[tuple[TensorRef, int, int]]) -> None:
        """Row ``i`` of float32 ``dest`` := elements ``spans[i]`` (same dtype and length for every span)."""
        from moediag.io.safetensors_file import DTYPES

        dtype = spans[0][0].dtype
        size = _itemsize(dtype)
        width = dest.shape[1]
        total = width * size * len(spans)
        if len(self._scratch) < total:
            self._scratch = bytearray(total)
        mv = memoryview(self._scratch)
        for i, (ref, start, stop) in enumerate(spans):
            nbytes = (stop - start) * size
            path = str(ref.file.path)
            fh = self._fh.get(path)
            if fh is None:
                fh = self._fh[path] = open(path, "rb")  # noqa: SIM115 - closed in __exit__
            fh.seek(ref.info.start + start * size)
            if fh.readinto(mv[i * width * size : i * width * size + nbytes]) != nbytes:
                raise InvalidInputError(f"truncated while reading tensor {ref.name!r}", ref.file.path)
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
