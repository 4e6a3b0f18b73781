"""Expert redundancy: for each projection, the Gram matrix ``G = X X^T`` of the experts' flattened
weights, accumulated over row chunks so memory stays within ``chunk_bytes``; the cosine of a pair is the
smallest over the projections, so a pair is a duplicate only when every matrix matches.

With ``sample`` < 1 a seeded sample of rows (the same for every expert, read by byte range) screens the
pairs first, and only the candidates' experts are then read in full and verified exactly.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from moediag import options
from moediag.checkpoint.inventory import Inventory
from moediag.checkpoint.reading import Files, RowReader, row_reader
from moediag.checkpoint.structure import ExpertMatrix, MoEBlock
from moediag.options import DEFAULT_SAMPLE

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_SAMPLE",
    "ExpertSimilarity",
    "expert_similarity",
    "matrix_bytes",
    "pass_cost",
    "sample_rows",
    "screen_cutoff",
]

DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
Progress = Callable[[int], None]


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
    readers: list[tuple[ExpertMatrix, RowReader]] = []
    for m in block.matrices:
        rd = row_reader(inv, block, m)
        if isinstance(rd, str):
            res.skipped.append(f"{m.key}: {rd}")
        else:
            readers.append((m, rd))
    if not readers or n == 0:
        return res
    ranges = [sample_rows(rd.rows, rd.bytes_per_row, sample, seed, m.key) for m, rd in readers]
    exact = all(rr == [(0, rd.rows)] for rr, (_, rd) in zip(ranges, readers, strict=True))
    with Files() as files:
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
    files: Files,
    readers: list[tuple[ExpertMatrix, RowReader]],
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
        # a cosine is in [-1, 1]; float64 rounding of a scaled copy's products can step just past 1
        c = torch.where(denom > 0, (gram / denom.clamp_min(1e-300)).clamp(-1.0, 1.0), torch.zeros_like(gram))
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


def pass_cost(inv: Inventory, block: MoEBlock, sample: float = 1.0, seed: int = 0) -> tuple[int, int]:
    """(bytes read, Gram multiply-adds) of the redundancy pass over ``block``: every row of its expert
    matrices (``sample`` 1), or the sampled rows of the screen (verifying candidates comes on top)."""
    nbytes = madds = 0
    n = len(block.expert_ids)
    for m in block.matrices:
        rd = row_reader(inv, block, m)
        if isinstance(rd, str):
            continue
        rows = sum(r1 - r0 for r0, r1 in sample_rows(rd.rows, rd.bytes_per_row, sample, seed, m.key))
        nbytes += rows * rd.bytes_per_row * n
        madds += n * n * rows * rd.cols
    return nbytes, madds


def matrix_bytes(inv: Inventory, block: MoEBlock, sample: float = 1.0, seed: int = 0) -> int:
    """Bytes the redundancy pass reads for ``block`` (see :func:`pass_cost`)."""
    return pass_cost(inv, block, sample, seed)[0]
