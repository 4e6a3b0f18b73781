"""Two traces: router saturation on the same tokens (streamed in lockstep), load and imbalance shift, and
the accuracy shift per expert and per frequent path.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator
from typing import Any

import torch

from moediag.compare.result import PATH_SHIFT_TOP, Comparison, _delta, _shift_row, js_divergence
from moediag.errors import InvalidInputError, UsageError


def aligned_chunks(ta: Any, tb: Any, size: int) -> Iterator[tuple[Any, Any]]:
    """Chunks of A and B over the same token ranges; a range never spans a shard of either trace."""
    from moediag.trace import Chunk

    n = ta.num_tokens
    starts_a = [0]
    for x in ta.shard_tokens:
        starts_a.append(starts_a[-1] + x)
    starts_b = [0]
    for x in tb.shard_tokens:
        starts_b.append(starts_b[-1] + x)
    cuts = sorted(set(starts_a) | set(starts_b) | set(range(0, n, size)) | {n})
    for s, e in zip(cuts, cuts[1:], strict=False):
        if e <= s:
            continue
        ia = bisect.bisect_right(starts_a, s) - 1
        ib = bisect.bisect_right(starts_b, s) - 1
        yield (
            Chunk(ta, ia, (s - starts_a[ia], e - starts_a[ia]), s),
            Chunk(tb, ib, (s - starts_b[ib], e - starts_b[ib]), s),
        )


def _full(batch: Any, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ids and top-1 spread back onto the chunk's rows (-1 where the row was excluded)."""
    rows = batch.index - start
    ids = torch.full((n, batch.ids.shape[1]), -1, dtype=torch.int64)
    ids[rows] = batch.ids
    top1 = torch.full((n,), -1, dtype=torch.int64)
    top1[rows] = batch.top1
    return ids, top1


def saturation(
    ta: Any,
    tb: Any,
    layers: list[int],
    chunk_tokens: int | None = None,
    progress: Any = None,
) -> tuple[dict[int, dict[str, Any]] | None, str | None]:
    """Per layer ``top1_agreement`` and ``topk_overlap`` on the same tokens, or (None, reason)."""
    from moediag.analysis import chunk_mask, layer_batch

    if ta.num_tokens != tb.num_tokens:
        return None, f"token counts differ ({ta.num_tokens} vs {tb.num_tokens}): no router saturation"
    size = chunk_tokens or min(ta.default_chunk_tokens(), tb.default_chunk_tokens())
    bias_a = {x: ta.selection_bias(x) for x in layers}
    bias_b = {x: tb.selection_bias(x) for x in layers}
    acc = {x: {"tokens": 0, "agree": 0, "overlap": 0} for x in layers}
    for ca, cb in aligned_chunks(ta, tb, size):
        ia, ib = ca.token("input_ids"), cb.token("input_ids")
        if ia is not None and ib is not None and not torch.equal(ia.to(torch.int64), ib.to(torch.int64)):
            row = int(torch.nonzero(ia.to(torch.int64) != ib.to(torch.int64))[0])
            return None, f"tokens.input_ids differ at token {ca.start + row}: no router saturation"
        va, vb = chunk_mask(ca), chunk_mask(cb)
        valid = va if vb is None else (vb if va is None else va & vb)
        n = len(ca)
        for layer in layers:
            ba, _ = layer_batch(ca, ta.layers[layer], bias_a[layer], valid)
            bb, _ = layer_batch(cb, tb.layers[layer], bias_b[layer], valid)
            ids_a, top1_a = _full(ba, ca.start, n)
            ids_b, top1_b = _full(bb, cb.start, n)
            ok = (top1_a >= 0) & (top1_b >= 0)
            ids_a, ids_b = ids_a[ok], ids_b[ok]
            hit = (ids_a.unsqueeze(2) == ids_b.unsqueeze(1)) & (ids_a >= 0).unsqueeze(2)
            a = acc[layer]
            a["tokens"] += int(ok.sum())
            a["agree"] += int((top1_a[ok] == top1_b[ok]).sum())
            a["overlap"] += int(hit.any(dim=2).sum())
        if progress is not None:
            progress(n)
    out: dict[int, dict[str, Any]] = {}
    for layer in layers:
        a = acc[layer]
        e = ta.layers[layer].num_experts
        k = ta.layers[layer].spec.top_k
        t = a["tokens"]
        out[layer] = {
            "tokens_compared": t,
            "top1_agreement": a["agree"] / t if t else None,
            "top1_agreement_baseline": 1 / e,
            "topk_overlap": a["overlap"] / (k * t) if t and k else None,
            "topk_overlap_baseline": k / e if k else None,
        }
    return out, None


def _path_shift(sa: Any, sb: Any, min_support: int) -> list[dict[str, Any]] | None:
    """Accuracy shift of the full-depth paths tracked in both A and B with >= min_support tokens each."""
    if not sa.paths or not sb.paths:
        return None
    wa = max(sa.paths, key=len)
    if wa not in sb.paths:
        return None
    pa, pb = sa.paths[wa], sb.paths[wa]
    if not (pa.has_correct and pb.has_correct):
        return None
    ka, kb = pa.sketch, pb.sketch
    index_b = {tuple(r): i for i, r in enumerate(kb.keys.tolist())}
    rows = []
    for i, key in enumerate(ka.keys.tolist()):
        j = index_b.get(tuple(key))
        if j is None:
            continue
        na, nb = int(ka.values["tokens"][i]), int(kb.values["tokens"][j])
        if na < min_support or nb < min_support:
            continue
        ca, cb = int(ka.values["correct"][i]), int(kb.values["correct"][j])
        rows.append(
            {
                "layers": list(wa),
                "path": key,
                "share_a": na / pa.tokens,
                "share_b": nb / pb.tokens,
                **_shift_row(ca, na, cb, nb),
            }
        )
    rows.sort(key=lambda r: (not r["shifted"], -(r["tokens_a"] + r["tokens_b"])))
    return rows[:PATH_SHIFT_TOP]


#: a mean router-row cosine below this suggests two separately trained models
UNRELATED_COSINE = 0.5
NUMBERING_NOTE = (
    "{what}: experts are compared by id, and two separately trained models need not number the same "
    "function alike, so per-expert shifts, top-1 agreement and the load JS divergence compare ids, not "
    "roles (MaxVio and CV deltas do not depend on the numbering)"
)


def compare_traces(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    chunk_tokens: int | None = None,
    min_support: int = 10,
    workers: int | None = None,
    scheduler: str | None = None,
    config: Any = None,
    progress: Any = None,
) -> Comparison:
    """Compare two traces (see the module docstring for every figure). ``progress(n)`` is called as
    tokens are read (the lockstep pass, then each trace's analysis).

    ``workers`` / ``scheduler``: analyse each trace in parallel (moediag.analysis.parallel; same figures).
    ``config``: the :class:`moediag.checks.CheckConfig` whose rules decide ``summary.verdict``
    (moediag.compare.verdict; default: the built-in thresholds).
    """
    from moediag.analysis import analyze_trace
    from moediag.stats.imbalance import cv, max_vio
    from moediag.trace import open_trace

    ta, tb = open_trace(a), open_trace(b)
    notes: list[str] = []
    common = sorted(set(ta.layers) & set(tb.layers))
    only_a = sorted(set(ta.layers) - set(tb.layers))
    only_b = sorted(set(tb.layers) - set(ta.layers))
    if not common:
        raise UsageError(
            f"{a} and {b} have no MoE layer in common (A: {sorted(ta.layers)}, B: {sorted(tb.layers)})"
        )
    if only_a or only_b:
        notes.append(
            f"layer sets differ; comparing the {len(common)} common layer(s) "
            f"(only in A: {only_a or 'none'}, only in B: {only_b or 'none'})"
        )
    for layer in common:
        ea, eb = ta.layers[layer].num_experts, tb.layers[layer].num_experts
        if ea != eb:
            raise InvalidInputError(
                f"layer {layer} has {ea} experts in {a} but {eb} in {b}; cannot compare", b
            )
    if ta.meta.model and tb.meta.model and ta.meta.model != tb.meta.model:
        notes.append(NUMBERING_NOTE.format(what=f"A is {ta.meta.model!r} and B is {tb.meta.model!r}"))
    per_token = [x for x in common if not ta.layers[x].count_only and not tb.layers[x].count_only]
    sat, why = saturation(ta, tb, per_token, chunk_tokens, progress) if per_token else (None, None)
    if why:
        notes.append(why)
    from moediag.analysis.runners import open_runner

    with open_runner(workers, scheduler) as runner:  # one pool or client for both traces
        res_a = analyze_trace(ta, chunk_tokens=chunk_tokens, layers=common, runner=runner, progress=progress)
        res_b = analyze_trace(tb, chunk_tokens=chunk_tokens, layers=common, runner=runner, progress=progress)
    rows = []
    for layer in common:
        sa, sb = res_a.stats.layers[layer], res_b.stats.layers[layer]
        la, lb = res_a.layer(layer), res_b.layer(layer)
        s = (sat or {}).get(layer, {})
        e = sa.num_experts
        k = ta.layers[layer].spec.top_k
        row: dict[str, Any] = {
            "layer": layer,
            "num_experts": e,
            "top_k": k,
            "tokens_compared": s.get("tokens_compared"),
            "top1_agreement": s.get("top1_agreement"),
            "top1_agreement_baseline": 1 / e,
            "topk_overlap": s.get("topk_overlap"),
            "topk_overlap_baseline": (k / e) if k else None,
            "load_js_divergence": js_divergence(sa.load.counts, sb.load.counts),
            "max_vio_a": max_vio(sa.load.counts) if int(sa.load.counts.sum()) else None,
            "max_vio_b": max_vio(sb.load.counts) if int(sb.load.counts.sum()) else None,
            "cv_a": cv(sa.load.counts),
            "cv_b": cv(sb.load.counts),
            "dead_a": len(la["dead_experts"]),
            "dead_b": len(lb["dead_experts"]),
        }
        row["max_vio_delta"] = _delta(row["max_vio_a"], row["max_vio_b"])
        row["cv_delta"] = _delta(row["cv_a"], row["cv_b"])
        row["accuracy_a"], row["accuracy_b"] = la.get("accuracy"), lb.get("accuracy")
        row["accuracy_delta"] = _delta(row["accuracy_a"], row["accuracy_b"])
        ea_, eb_ = la.get("expert_accuracy"), lb.get("expert_accuracy")
        if ea_ and eb_ and ea_[0]["correct"] is not None and eb_[0]["correct"] is not None:
            row["expert_accuracy_shift"] = [
                {"expert": i, **_shift_row(x["correct"], x["tokens"], y["correct"], y["tokens"])}
                for i, (x, y) in enumerate(zip(ea_, eb_, strict=False))
            ]
        else:
            row["expert_accuracy_shift"] = None
        rows.append(row)

    def stat(key: str, worst: str = "max") -> dict[str, Any]:
        vals = [(r[key], r["layer"]) for r in rows if r[key] is not None]
        if not vals:
            return {"mean": None, "worst": None, "worst_layer": None}
        pick = max(vals) if worst == "max" else min(vals)
        return {"mean": sum(v for v, _ in vals) / len(vals), "worst": pick[0], "worst_layer": pick[1]}

    acc_a, acc_b = res_a.summary.get("accuracy"), res_b.summary.get("accuracy")
    summary = {
        "tokens_a": ta.num_tokens,
        "tokens_b": tb.num_tokens,
        "tokens_match": sat is not None,
        "layers_compared": common,
        "layers_only_in_a": only_a,
        "layers_only_in_b": only_b,
        "top1_agreement": stat("top1_agreement", "min"),
        "topk_overlap": stat("topk_overlap", "min"),
        "load_js_divergence": stat("load_js_divergence"),
        "max_vio_delta": stat("max_vio_delta"),
        "cv_delta": stat("cv_delta"),
        "accuracy_a": acc_a,
        "accuracy_b": acc_b,
        "accuracy_delta": _delta(acc_a, acc_b),
        "shifted_experts": sum(
            sum(1 for x in r["expert_accuracy_shift"] if x["shifted"])
            for r in rows
            if r["expert_accuracy_shift"]
        ),
    }
    from moediag.compare.verdict import compare_verdict

    summary["verdict"] = compare_verdict(res_a.to_dict(), res_b.to_dict(), config).to_dict()
    paths = _path_shift(res_a.stats, res_b.stats, min_support)
    return Comparison(str(a), str(b), "traces", rows, summary, paths, notes)
