"""Megatron-Core: router traces (``--moe-routing-trace-path DIR``) and tokens-per-expert logs.

Router trace (per token): ``router_trace_rank{r}.jsonl``, one JSON object per step and layer
``{"step","stage","block","layer","rank","num_tokens","topk","top_indices":[[...]]}`` (``layer`` is the index
in ``decoder.layers``; MTP records carry ``block="mtp"`` and ``mtp_idx``). With logit / hidden-state capture a
record also has ``logit_offset``, ``logit_bytes``, ``logit_shape`` ([tokens, experts]) into
``logits_rank{r}.bin`` and ``hs_offset``, ``hs_bytes``, ``hs_shape`` into ``hidden_states_rank{r}.bin``,
both raw bfloat16. With ``dump_router_weights`` there is ``router_state_rank{r}.pt``: ``{layer: {"weight",
"expert_bias", "score_function", "topk"}}``. The JSONL is read line by line and the sidecars by offset, so
memory holds one step at a time.

Within one rank and step the k-th record of every layer covers the same tokens (the k-th micro-batch), so
they are joined into one block of tokens: ``layers.L.topk_ids`` (+ ``router_logits``, ``router_input``) and
``tokens.step``. MTP records are left out.

Tokens per expert (counts only): ``tokens_per_expert/rank{r}.jsonl`` with ``{"iter","block","layer",
"tpe":[[...]]}``; each row of ``tpe`` is taken as one count vector over all experts, one step per row; ranks
are summed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moediag.errors import InvalidInputError, MissingMetadataError
from moediag.importers.base import (
    ImportOptions,
    ImportResult,
    TraceSink,
    finish_per_token,
    import_counts,
    natural_key,
    rank_of,
    trace_metadata,
)
from moediag.importers.megatron_records import (
    Sidecar,
    int_field,
    jsonl_records,
    router_state,
    step_groups,
    top_indices,
    tpe_rows,
)

_TRACE = "router_trace_rank"


def _discover(sources: list[Path]) -> tuple[str, list[Path]]:
    trace: list[Path] = []
    tpe: list[Path] = []
    for p in sources:
        if p.is_dir():
            trace += [c for c in p.iterdir() if c.name.startswith(_TRACE) and c.suffix == ".jsonl"]
            sub = p / "tokens_per_expert"
            tpe_dir = sub if sub.is_dir() else p
            tpe += [c for c in tpe_dir.iterdir() if c.name.startswith("rank") and c.suffix == ".jsonl"]
        elif p.name.startswith(_TRACE):
            trace.append(p)
        else:
            first = next(jsonl_records(p), None)
            if first is not None and "top_indices" in first[1]:
                trace.append(p)
            else:
                tpe.append(p)
    if trace:
        return "trace", sorted(set(trace), key=natural_key)
    if tpe:
        return "tpe", sorted(set(tpe), key=natural_key)
    raise InvalidInputError(
        "no Megatron routing files (router_trace_rank*.jsonl or tokens_per_expert/rank*.jsonl)", sources[0]
    )


def _import_trace(files: list[Path], out: Path, options: ImportOptions) -> ImportResult:
    state = router_state(files)
    # First pass over the first step of the first file: the layout every later step must match.
    first_step = next(step_groups(files[0]), None)
    if first_step is None:
        raise InvalidInputError("no records", files[0])
    decoder = [(n, r) for n, r in first_step[1] if r.get("block", "decoder") == "decoder"]
    if not decoder:
        raise InvalidInputError("no decoder-layer records in the first step", files[0])
    layers = sorted({int_field(r, "layer", files[0], n) for n, r in decoder})
    topk: dict[int, int | None] = {layer: None for layer in layers}
    for n, r in decoder:
        topk[r["layer"]] = int_field(r, "topk", files[0], n)
    has_logits = all("logit_offset" in r for _, r in decoder)
    if any(v is None for v in topk.values()):  # pragma: no cover - every layer came from a record
        raise InvalidInputError("a layer has no topk", files[0])
    has_hs = all("hs_offset" in r for _, r in decoder)
    ks = set(topk.values())
    if len(ks) != 1:
        raise InvalidInputError(f"layers disagree on topk: {topk}", files[0])
    top_k = ks.pop()
    assert top_k is not None
    if options.top_k is not None and options.top_k != top_k:
        raise InvalidInputError(f"--top-k {options.top_k} contradicts topk={top_k} in the records", files[0])
    found_e: int | None = None
    if has_logits:
        found_e = int(decoder[0][1]["logit_shape"][1])
    elif state:
        w = next(iter(state.values())).get("weight")
        if isinstance(w, torch.Tensor) and w.dim() == 2:
            found_e = int(w.shape[0])
    num_experts = options.num_experts or found_e
    if options.num_experts is not None and found_e is not None and options.num_experts != found_e:
        raise InvalidInputError(
            f"--num-experts {options.num_experts} contradicts the router, which has {found_e} experts",
            files[0],
        )
    if num_experts is None:
        raise MissingMetadataError(
            "number of experts unknown: the router trace has no logits sidecar and no router_state; "
            "pass --num-experts",
            files[0],
        )
    score = options.score_function
    if score is None:
        fn = next((v.get("score_function") for v in state.values() if v.get("score_function")), None)
        if fn in ("softmax", "sigmoid"):
            score = fn
    if has_logits and score is None:
        raise MissingMetadataError(
            "score function unknown (no router_state_rank*.pt); pass --score-function "
            "softmax|sigmoid|topk_softmax",
            files[0],
        )
    notes: list[str] = ["layer = index in decoder.layers as Megatron's tracer records it"]
    if has_logits:
        notes.append("router_logits from the bfloat16 logits sidecar")
    if has_hs:
        notes.append("router_input from the bfloat16 hidden-states sidecar")
    meta = trace_metadata(
        "megatron",
        num_experts=num_experts,
        top_k=top_k,
        score_function=score,
        files=files,
        notes=notes,
    )
    mtp = 0
    ranks: list[int] = []
    with TraceSink(out, shard_tokens=options.shard_tokens) as sink:
        sink.begin(meta)
        for layer in layers:
            bias = state.get(layer, {}).get("expert_bias")
            if isinstance(bias, torch.Tensor) and bias.shape == (num_experts,):
                sink.set_constant(f"layers.{layer}.selection_bias", bias.float())
        for path in files:
            file_rank: int | None = None
            logits_bin: Sidecar | None = None
            hs_bin: Sidecar | None = None
            try:
                for step, group in step_groups(path):
                    by_layer: dict[int, list[tuple[int, dict[str, Any]]]] = {}
                    for lineno, rec in group:
                        if rec.get("block", "decoder") != "decoder":
                            mtp += 1
                            continue
                        layer = int_field(rec, "layer", path, lineno)
                        rec_rank = int_field(rec, "rank", path, lineno)
                        if file_rank is None:
                            file_rank = rec_rank
                            logits_bin = Sidecar(path.parent / f"logits_rank{rec_rank}.bin")
                            hs_bin = Sidecar(path.parent / f"hidden_states_rank{rec_rank}.bin")
                        elif rec_rank != file_rank:
                            raise InvalidInputError(
                                f"line {lineno}: rank {rec_rank} in a file of rank {file_rank}", path
                            )
                        by_layer.setdefault(layer, []).append((lineno, rec))
                    if not by_layer:
                        continue
                    if sorted(by_layer) != layers:
                        raise InvalidInputError(
                            f"step {step} has layers {sorted(by_layer)} but {files[0].name} has {layers} "
                            "(ranks or steps are inconsistent)",
                            path,
                        )
                    occ = {len(v) for v in by_layer.values()}
                    if len(occ) != 1:
                        raise InvalidInputError(
                            f"step {step}: layers fired different numbers of times "
                            f"{ {k: len(v) for k, v in by_layer.items()} }",
                            path,
                        )
                    assert logits_bin is not None and hs_bin is not None
                    for i in range(occ.pop()):
                        batch: dict[str, torch.Tensor] = {}
                        n_ref: int | None = None
                        for layer in layers:
                            lineno, rec = by_layer[layer][i]
                            where = f"line {lineno}"
                            n = int_field(rec, "num_tokens", path, lineno)
                            k = int_field(rec, "topk", path, lineno)
                            if k != top_k:
                                raise InvalidInputError(
                                    f"{where}: topk={k} but {files[0].name} has {top_k} (ranks are "
                                    "inconsistent)",
                                    path,
                                )
                            if n_ref is None:
                                n_ref = n
                            elif n != n_ref:
                                raise InvalidInputError(
                                    f"{where}: layer {layer} has {n} tokens but layer {layers[0]} has "
                                    f"{n_ref} in "
                                    f"step {step}",
                                    path,
                                )
                            ids = top_indices(rec, path, lineno, num_experts)
                            batch[f"layers.{layer}.topk_ids"] = ids.to(torch.int32)
                            if has_logits:
                                if "logit_offset" not in rec:
                                    raise InvalidInputError(
                                        f"{where}: no logit_offset, unlike earlier records", path
                                    )
                                lg = logits_bin.read(
                                    int_field(rec, "logit_offset", path, lineno),
                                    int_field(rec, "logit_bytes", path, lineno),
                                    rec.get("logit_shape") or [],
                                    f"{path.name} {where}",
                                )
                                if tuple(lg.shape) != (n, num_experts):
                                    raise InvalidInputError(
                                        f"{where}: logit_shape {list(lg.shape)}, expected [{n}, "
                                        f"{num_experts}]",
                                        path,
                                    )
                                batch[f"layers.{layer}.router_logits"] = lg
                            if has_hs:
                                if "hs_offset" not in rec:
                                    raise InvalidInputError(
                                        f"{where}: no hs_offset, unlike earlier records", path
                                    )
                                hs = hs_bin.read(
                                    int_field(rec, "hs_offset", path, lineno),
                                    int_field(rec, "hs_bytes", path, lineno),
                                    rec.get("hs_shape") or [],
                                    f"{path.name} {where}",
                                )
                                if hs.shape[0] != n:
                                    raise InvalidInputError(
                                        f"{where}: hs_shape {list(hs.shape)} has not {n} rows", path
                                    )
                                batch[f"layers.{layer}.router_input"] = hs
                        assert n_ref is not None
                        if n_ref == 0:
                            continue
                        batch["tokens.step"] = torch.full((n_ref,), step, dtype=torch.int64)
                        sink.add(batch)
            finally:
                for sc in (logits_bin, hs_bin):
                    if sc is not None:
                        sc.close()
            known = file_rank if file_rank is not None else rank_of(path)
            ranks.append(known if known is not None else len(ranks))
        if len(set(ranks)) != len(ranks):
            raise InvalidInputError(f"two files hold the same rank ({sorted(ranks)})", files[0])
        if sink.tokens == 0:
            raise InvalidInputError("no tokens in any record", files[0])
        if mtp:
            notes.append(f"{mtp} MTP records left out")
        return finish_per_token(
            sink,
            "megatron",
            out,
            layers=layers,
            num_experts=num_experts,
            top_k=top_k,
            files=files,
            notes=notes,
            ranks=ranks,
        )


def _import_tpe(files: list[Path], out: Path, options: ImportOptions) -> ImportResult:
    total: dict[tuple[int, int], torch.Tensor] = {}
    ref_keys: set[tuple[int, int]] | None = None
    width: int | None = None
    mtp = 0
    for path in files:
        keys: set[tuple[int, int]] = set()
        for lineno, rec in jsonl_records(path):
            if rec.get("block", "decoder") != "decoder":
                mtp += 1
                continue
            it = int_field(rec, "iter", path, lineno)
            layer = int_field(rec, "layer", path, lineno)
            rows = tpe_rows(rec, path, lineno)
            if width is None:
                width = rows.shape[1]
            elif rows.shape[1] != width:
                raise InvalidInputError(
                    f"line {lineno}: tpe rows have {rows.shape[1]} experts, earlier {width}", path
                )
            key = (it, layer)
            if key in keys:
                raise InvalidInputError(f"line {lineno}: iter {it} layer {layer} appears twice", path)
            keys.add(key)
            if key in total:
                if total[key].shape != rows.shape:
                    raise InvalidInputError(
                        f"line {lineno}: iter {it} layer {layer} has {rows.shape[0]} rows, other ranks "
                        f"{total[key].shape[0]}",
                        path,
                    )
                total[key] = total[key] + rows
            else:
                total[key] = rows
        if ref_keys is None:
            ref_keys = keys
        elif keys != ref_keys:
            raise InvalidInputError(
                f"holds different (iter, layer) records from {files[0].name}: ranks are inconsistent", path
            )
    if not total or width is None:
        raise InvalidInputError("no tokens-per-expert records", files[0])
    num_experts = options.num_experts or width
    if num_experts != width:
        raise InvalidInputError(f"--num-experts {num_experts} but tpe rows have {width} experts", files[0])
    layers = sorted({layer for _, layer in total})
    iters = sorted({i for i, _ in total})
    counts: dict[int, torch.Tensor] = {}
    for layer in layers:
        parts = [total[(i, layer)] for i in iters if (i, layer) in total]
        counts[layer] = torch.cat(parts)
    notes = [
        "each tpe row is one step of counts over all experts",
        f"{len(files)} rank files summed" if len(files) > 1 else "one rank file",
    ]
    if mtp:
        notes.append(f"{mtp} MTP records left out")
    return import_counts(
        "megatron",
        out,
        counts,
        num_experts=num_experts,
        top_k=options.top_k,
        score_function=options.score_function,
        files=files,
        notes=notes,
        ranks=[rank_of(p, i) or 0 for i, p in enumerate(files)],
    )


def import_megatron(sources: list[Path], out: Path, options: ImportOptions) -> ImportResult:
    kind, files = _discover(sources)
    if kind == "trace":
        return _import_trace(files, out, options)
    return _import_tpe(files, out, options)
