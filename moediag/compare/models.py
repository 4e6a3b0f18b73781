"""``moediag compare DENSE SPARSE``: two checkpoints side by side on compute, capacity and quality.

* ``models``: per checkpoint, in the order given, total parameters, active parameters a token, FLOPs a
  token at ``seq_len`` (:mod:`moediag.checkpoint.compute` has the rule) and weight bytes as stored.
* ``framing``: the two fair framings of a sparse model against a dense one. *Compute-matched*: the
  dense model does the sparse model's FLOPs a token. *Capacity-matched*: the dense model has the sparse
  model's total parameters. The pair is close to a framing when the other model's figure is within 25%
  of the reference's (the sparse model when one of the two is dense, else A); ``warning`` says so when it
  is close to neither, since then a quality gap mixes two causes.
* ``quality`` (with traces of both models on the same evaluation tokens): loss and accuracy of each,
  per domain, with 95% intervals, the paired difference B - A, and accuracy per GFLOP a token.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moediag import __version__
from moediag.checkpoint.compute import DEFAULT_SEQ_LEN, ModelCompute, model_compute
from moediag.errors import InvalidInputError, UsageError

__all__ = ["FRAMING_TOLERANCE", "ModelComparison", "compare_models", "eval_quality", "framing"]

#: JSON schema version (``meta.format``) of the model comparison; history: 1 = first release
MODELS_JSON_FORMAT = 1
#: a pair is close to a framing when the figures differ by at most this share of the reference's
FRAMING_TOLERANCE = 0.25
EVAL_CHUNK_TOKENS = 1 << 18


def _off(x: int | None, ref: int | None) -> float | None:
    if x is None or ref is None or ref <= 0:
        return None
    return abs(x - ref) / ref


def framing(a: ModelCompute, b: ModelCompute, tolerance: float = FRAMING_TOLERANCE) -> dict[str, Any]:
    """Which fair framing a pair is close to (see the module docstring)."""
    if a.moe != b.moe:
        ref, other = (a, b) if a.moe else (b, a)
        reference = "a" if a.moe else "b"
    else:
        ref, other, reference = a, b, "a"
    compute_off = _off(other.flops_per_token, ref.flops_per_token)
    capacity_off = _off(other.total_params, ref.total_params)
    close = {
        "compute-matched": compute_off is not None and compute_off <= tolerance,
        "capacity-matched": capacity_off is not None and capacity_off <= tolerance,
    }
    if close["compute-matched"] and close["capacity-matched"]:
        matched = "both"
    elif close["compute-matched"]:
        matched = "compute-matched"
    elif close["capacity-matched"]:
        matched = "capacity-matched"
    else:
        matched = "neither"
    nearest = None
    if compute_off is not None or capacity_off is not None:
        nearest = (
            "compute-matched"
            if capacity_off is None or (compute_off is not None and compute_off <= capacity_off)
            else "capacity-matched"
        )
    warning = None
    if matched == "neither" and compute_off is not None and capacity_off is not None:
        warning = (
            f"this pair is neither compute-matched (FLOPs a token {compute_off:.0%} apart) nor "
            f"capacity-matched (total parameters {capacity_off:.0%} apart): a quality gap between them "
            "mixes the effect of compute and of capacity"
        )
    elif compute_off is None:
        warning = (
            "FLOPs a token are unknown for one model (see its notes): the compute framing is not assessed"
        )
    dense_equivalent = [
        {
            "compute_matched_params": m.matmul_params,
            "capacity_matched_params": m.total_params,
        }
        for m in (a, b)
    ]
    return {
        "reference": reference,
        "tolerance": tolerance,
        "compute_off": compute_off,
        "capacity_off": capacity_off,
        "flops_ratio": (b.flops_per_token / a.flops_per_token)
        if a.flops_per_token and b.flops_per_token is not None
        else None,
        "total_params_ratio": b.total_params / a.total_params if a.total_params else None,
        "matched": matched,
        "nearest": nearest,
        "warning": warning,
        "dense_equivalent": dense_equivalent,
    }


# -- quality per compute -------------------------------------------------------------------------------


class _EvalTokens:
    """The ``tokens.*`` tensors of a trace (a file or a folder of shards), read by global token range.

    Reads headers only until asked; works for a dense model's trace too (no ``layers.*`` needed)."""

    NAMES = ("loss", "correct", "domain", "mask", "input_ids")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from moediag.io.safetensors_file import SafetensorsFile
        from moediag.trace.reader import _shard_paths

        self.path = Path(path)
        self.shards = [SafetensorsFile(p) for p in _shard_paths(self.path)]
        self.has: set[str] = set()
        self.lengths: list[int] = []
        for i, shard in enumerate(self.shards):
            names = {n.removeprefix("tokens.") for n in shard.tensors if n.startswith("tokens.")}
            names &= set(self.NAMES)
            if i == 0:
                self.has = names
            elif names != self.has:
                raise InvalidInputError(
                    f"shards disagree on tokens.* tensors ({sorted(self.has)} vs {sorted(names)})", shard.path
                )
            rows = {
                shard.tensors[f"tokens.{n}"].shape[0] for n in names if shard.tensors[f"tokens.{n}"].shape
            }
            if len(rows) > 1:
                raise InvalidInputError(f"tokens.* tensors have different lengths {sorted(rows)}", shard.path)
            self.lengths.append(rows.pop() if rows else 0)
        if not ({"loss", "correct"} & self.has):
            raise InvalidInputError(
                "quality per compute needs tokens.loss or tokens.correct; this trace has neither", self.path
            )
        raw = self.shards[0].metadata.get("domains")
        try:
            parsed = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            parsed = None
        self.domains = [str(x) for x in parsed] if isinstance(parsed, list) else None

    @property
    def num_tokens(self) -> int:
        return sum(self.lengths)

    def read(self, name: str, lo: int, hi: int) -> torch.Tensor | None:
        if name not in self.has:
            return None
        parts = []
        start = 0
        for shard, n in zip(self.shards, self.lengths, strict=True):
            a, b = max(lo, start), min(hi, start + n)
            if a < b:
                parts.append(shard.read(f"tokens.{name}", rows=(a - start, b - start)))
            start += n
        return torch.cat(parts) if len(parts) > 1 else parts[0]


def _ranges(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


def eval_quality(
    trace_a: str | os.PathLike[str],
    trace_b: str | os.PathLike[str],
    flops_a: int | None,
    flops_b: int | None,
    *,
    chunk_tokens: int | None = None,
) -> dict[str, Any]:
    """Loss and accuracy of two models on the same evaluation tokens, per domain, paired (bounded memory:
    one chunk of token figures at a time)."""
    from moediag.stats.quality import PairedQualityStats

    ta, tb = _EvalTokens(trace_a), _EvalTokens(trace_b)
    if ta.num_tokens != tb.num_tokens:
        raise InvalidInputError(
            f"the traces are not on the same evaluation tokens ({ta.num_tokens} tokens in {trace_a}, "
            f"{tb.num_tokens} here)",
            trace_b,
        )
    if ta.domains and tb.domains and "domain" in ta.has and "domain" in tb.has and ta.domains != tb.domains:
        raise InvalidInputError(f"metadata domains differ from {trace_a}'s", trace_b)
    has = {
        "loss": {"loss"} <= ta.has & tb.has,
        "correct": {"correct"} <= ta.has & tb.has,
    }
    if not has["loss"] and not has["correct"]:
        raise InvalidInputError(
            f"{trace_a} and {trace_b} share neither tokens.loss nor tokens.correct; nothing to compare",
            trace_b,
        )
    stats = PairedQualityStats()
    size = chunk_tokens or EVAL_CHUNK_TOKENS
    for lo, hi in _ranges(ta.num_tokens, size):
        ia, ib = ta.read("input_ids", lo, hi), tb.read("input_ids", lo, hi)
        if ia is not None and ib is not None and not torch.equal(ia.to(torch.int64), ib.to(torch.int64)):
            row = int(torch.nonzero(ia.to(torch.int64) != ib.to(torch.int64))[0])
            raise InvalidInputError(
                f"tokens.input_ids differ from {trace_a}'s at token {lo + row}: "
                "not the same evaluation tokens",
                trace_b,
            )
        da, db = ta.read("domain", lo, hi), tb.read("domain", lo, hi)
        if da is not None and db is not None and not torch.equal(da.to(torch.int64), db.to(torch.int64)):
            raise InvalidInputError(f"tokens.domain differs from {trace_a}'s", trace_b)
        keep = torch.ones(hi - lo, dtype=torch.bool)
        for t in (ta.read("mask", lo, hi), tb.read("mask", lo, hi)):
            if t is not None:
                keep &= t.bool()
        dom = da if da is not None else db

        def pick(t: torch.Tensor | None, keep: torch.Tensor = keep) -> torch.Tensor | None:
            return None if t is None else t[keep]

        stats.update(
            domain=pick(dom),
            loss_a=pick(ta.read("loss", lo, hi)),
            loss_b=pick(tb.read("loss", lo, hi)),
            correct_a=pick(ta.read("correct", lo, hi)),
            correct_b=pick(tb.read("correct", lo, hi)),
        )
    out = stats.compute(ta.domains or tb.domains)
    gflops = [None if f is None else f / 1e9 for f in (flops_a, flops_b)]
    for row in [out["overall"], *out["domains"]]:
        for m, g in zip(("a", "b"), gflops, strict=True):
            acc, ci = row[f"accuracy_{m}"], row[f"accuracy_{m}_ci"]
            row[f"accuracy_per_gflop_{m}"] = None if acc is None or not g else acc / g
            row[f"accuracy_per_gflop_{m}_ci"] = [None if c is None or not g else c / g for c in ci]
    worse = [r["domain"] for r in out["domains"] if _b_worse(r)]
    better = [r["domain"] for r in out["domains"] if _b_better(r)]
    notes = []
    ov = out["overall"]
    if not (ov["loss_shifted"] or ov["accuracy_shifted"]) and worse:
        notes.append(
            f"B is level with A on average but worse on {', '.join(worse)}: "
            "an average can hide a loss under a shift of domain"
        )
    return {
        "traces": [str(trace_a), str(trace_b)],
        "tokens": ov["tokens"],
        "has_loss": has["loss"],
        "has_correct": has["correct"],
        **out,
        "worse_domains": worse,
        "better_domains": better,
        "notes": notes,
    }


def _b_worse(row: dict[str, Any]) -> bool:
    lo = row["loss_delta_ci"][0]
    hi = row["accuracy_delta_ci"][1]
    return bool((lo is not None and lo > 0) or (hi is not None and hi < 0))


def _b_better(row: dict[str, Any]) -> bool:
    hi = row["loss_delta_ci"][1]
    lo = row["accuracy_delta_ci"][0]
    return bool((hi is not None and hi < 0) or (lo is not None and lo > 0))


# -- the comparison ------------------------------------------------------------------------------------


@dataclass
class ModelComparison:
    """Two checkpoints' compute accounting, their framing and (with traces) quality per compute."""

    a: str
    b: str
    models: list[ModelCompute]
    framing: dict[str, Any]
    quality: dict[str, Any] | None = None
    #: whether the two have MoE routers of the same shape at the same layers (router comparison applies)
    routers_in_common: bool = False
    notes: list[str] = field(default_factory=list)
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )

    def sections(self) -> dict[str, Any]:
        """The keys this adds to any checkpoint comparison's JSON."""
        return {
            "models": [m.to_dict() for m in self.models],
            "framing": self.framing,
            "quality": self.quality,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": {
                "format": MODELS_JSON_FORMAT,
                "moediag_version": __version__,
                "kind": "compare",
                "inputs": "models",
                "a": self.a,
                "b": self.b,
                "seq_len": self.models[0].seq_len,
                "created": self.created,
            },
            "summary": {"matched": self.framing["matched"], "notes": list(self.notes)},
            **self.sections(),
        }


def _router_shapes(analysis: Any) -> dict[tuple[str, int], tuple[int, ...]]:
    inv = analysis.inventory
    return {
        (b.stack, b.layer): tuple(inv[b.router].shape)
        for b in analysis.layout.blocks
        if b.router is not None and not b.mtp
    }


def compare_models(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    seq_len: int = DEFAULT_SEQ_LEN,
    traces: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
    chunk_tokens: int | None = None,
) -> ModelComparison:
    """Compare two checkpoints (dense or MoE, either order) on compute, capacity and, with ``traces`` (A's,
    then B's, on the same evaluation tokens), quality per compute."""
    from moediag.checkpoint import analyze_checkpoint

    if seq_len < 1:
        raise UsageError(f"--seq-len must be positive (got {seq_len})")
    an_a, an_b = analyze_checkpoint(a, weights=False), analyze_checkpoint(b, weights=False)
    ma, mb = model_compute(an_a, seq_len=seq_len), model_compute(an_b, seq_len=seq_len)
    ra, rb = _router_shapes(an_a), _router_shapes(an_b)
    common = set(ra) & set(rb)
    in_common = bool(common) and all(ra[x] == rb[x] for x in common)
    notes = [f"A: {n}" for n in ma.notes] + [f"B: {n}" for n in mb.notes]
    fr = framing(ma, mb)
    if not ma.moe and not mb.moe:
        notes.append("neither model has MoE layers: both are dense")
    quality = None
    if traces is not None:
        quality = eval_quality(
            traces[0], traces[1], ma.flops_per_token, mb.flops_per_token, chunk_tokens=chunk_tokens
        )
        notes.extend(quality["notes"])
    return ModelComparison(str(a), str(b), [ma, mb], fr, quality, in_common, notes)
