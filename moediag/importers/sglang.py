"""SGLang's expert distribution recorder (``--expert-distribution-recorder-mode``), and its legacy CSV.

Files (all written with ``torch.save``; read with ``weights_only=True``):

* ``stat`` / ``stat_approx``: ``expert_distribution_recorder_{time}.pt`` from rank 0, a dict with ``rank``,
  ``logical_count`` int ``[buffer_steps, num_layers, num_logical_experts]`` (already summed over ranks; a
  circular buffer whose unused slots are zeros) and ``average_utilization_rate_over_window``.
  -> counts only, one step per non-empty buffer slot.
* ``per_pass``: ``expert_distribution_recorder_{time}_{rank}.pt`` per rank, a dict with ``records`` (one dict
  per forward pass: ``forward_pass_id``, ``rank``, ``global_physical_count`` int ``[num_layers,
  num_physical_experts]``) and ``last_physical_to_logical_map`` ``[num_layers, num_physical_experts]``.
  -> counts only, one step per forward pass, physical experts folded onto logical ones (scatter_add).
* ``per_token``: as ``per_pass`` plus, per record, ``input_ids``, ``positions``, ``extend_seq_lens`` and
  ``topk_ids_of_layer`` int ``[num_layers, tokens, 8]`` of physical expert ids (-1 = empty slot).
  -> per-token ``topk_ids`` of logical experts, token ids, positions, sequence ids and ``tokens.step`` =
  forward pass id. Files are read one at a time.
* legacy CSV ``expert_distribution_rank{r}_timestamp{t}.csv`` with ``layer_id,expert_id,count``.
  -> counts only, one step.

``num_layers`` counts every hidden layer: dense layers appear as rows of zeros (or all -1 top-k slots).
They are not dead experts, so they are left out of the trace. Under tensor parallelism every rank sees
the same batch and records the same thing: a forward pass whose data is identical on every rank is
counted once; otherwise (data-parallel attention, expert-parallel dispatch counts) ranks are summed.
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
    check_ids,
    files_in,
    finish_per_token,
    import_counts,
    natural_key,
    rank_of,
    require_num_experts,
    torch_load,
    trace_metadata,
)
from moediag.importers.sglang_records import (
    DUMP_FILES,
    dense_note,
    dump_mode,
    fingerprint,
    logical_ids,
    moe_layers,
    num_logical,
    pass_records,
    physical_map,
    physical_to_logical_counts,
    read_csv,
    record_topk,
    stat_counts,
    tensor_of,
)

# -- stat ----------------------------------------------------------------------------------------


def _import_stat(files: list[Path], first: Any, out: Path, options: ImportOptions) -> ImportResult:
    parts: list[torch.Tensor] = []
    empty_slots = 0
    for i, path in enumerate(files):
        obj = first if i == 0 else torch_load(path)
        if dump_mode(obj, path) != "stat":
            raise InvalidInputError(
                f"is a {dump_mode(obj, path)} dump but {files[0].name} is a stat dump", path
            )
        lc, empty = stat_counts(obj, path)
        if parts and lc.shape[1:] != parts[0].shape[1:]:
            raise InvalidInputError(
                f"logical_count has shape {list(lc.shape)}; {files[0].name} has [*, {parts[0].shape[1]}, "
                f"{parts[0].shape[2]}]",
                path,
            )
        empty_slots += empty
        parts.append(lc)
    counts = torch.cat(parts)
    num_experts = require_num_experts(counts.shape[2], options, files[0], "logical_count")
    if counts.shape[0] == 0:
        raise InvalidInputError("no expert counts recorded (every buffer slot is zero)", files[0])
    layers = moe_layers(counts)
    notes = dense_note(counts.shape[1], layers)
    if empty_slots:
        notes.append(f"{empty_slots} empty circular-buffer slots dropped (zeros; not recorded steps)")
    notes.append(
        "stat mode: logical_count is already summed over ranks; step order in a wrapped buffer is not "
        "chronological"
    )
    total = int(counts[:, layers, :].sum())
    return import_counts(
        "sglang",
        out,
        {layer: counts[:, layer, :] for layer in layers},
        num_experts=num_experts,
        top_k=options.top_k,
        score_function=options.score_function,
        files=files,
        notes=notes,
        ranks=[int(first.get("rank", 0))],
        num_tokens=total // len(layers) // (options.top_k or 1) if options.top_k else 0,
        extra={"sglang_mode": "stat"},
    )


# -- per_pass ------------------------------------------------------------------------------------


def _import_per_pass(files: list[Path], first: Any, out: Path, options: ImportOptions) -> ImportResult:
    by_pass: dict[int, dict[int, torch.Tensor]] = {}
    p2l_ref: torch.Tensor | None = None
    ranks: list[int] = []
    for i, path in enumerate(files):
        obj = first if i == 0 else torch_load(path)
        mode = dump_mode(obj, path)
        if mode not in ("per_pass", "per_token"):
            raise InvalidInputError(f"is a {mode} dump but {files[0].name} is a per_pass dump", path)
        p2l = physical_map(obj, path)
        if p2l_ref is None:
            p2l_ref = p2l
        elif not torch.equal(p2l, p2l_ref):
            raise InvalidInputError(
                f"last_physical_to_logical_map differs from {files[0].name}'s: ranks are not from the "
                "same run",
                path,
            )
        file_rank: int | None = None
        for fp, rank, gpc in pass_records(obj, p2l, path, rank_of(path, i) or 0):
            file_rank = rank if file_rank is None else file_rank
            slot = by_pass.setdefault(fp, {})
            if rank in slot:
                slot[rank] = slot[rank] + gpc
            else:
                slot[rank] = gpc
        ranks.append(file_rank if file_rank is not None else (rank_of(path, i) or 0))
    if len(set(ranks)) != len(ranks):
        raise InvalidInputError(
            f"two files hold the same rank ({sorted(ranks)}): pass each rank's file once", files[0]
        )
    assert p2l_ref is not None
    num_experts = num_logical(p2l_ref, options, files[0])
    if not by_pass:
        raise InvalidInputError("no records", files[0])
    steps: list[torch.Tensor] = []
    deduped = 0
    for fp in sorted(by_pass):
        per_rank = list(by_pass[fp].values())
        if len(per_rank) > 1 and all(torch.equal(per_rank[0], t) for t in per_rank[1:]):
            phys = per_rank[0]  # tensor parallel: every rank recorded the same batch
            deduped += 1
        else:
            phys = torch.stack(per_rank).sum(0)
        steps.append(physical_to_logical_counts(phys, p2l_ref, num_experts))
    counts = torch.stack(steps)  # [S, L, E]
    layers = moe_layers(counts)
    if not layers:
        raise InvalidInputError("no expert counts recorded (every record is zero)", files[0])
    notes = dense_note(counts.shape[1], layers)
    notes.append("physical experts folded onto logical experts with last_physical_to_logical_map")
    if deduped:
        notes.append(f"{deduped} forward passes identical on every rank (tensor parallel) counted once")
    return import_counts(
        "sglang",
        out,
        {layer: counts[:, layer, :] for layer in layers},
        num_experts=num_experts,
        top_k=options.top_k,
        score_function=options.score_function,
        files=files,
        notes=notes,
        ranks=ranks,
        extra={"sglang_mode": "per_pass", "ranks": sorted(ranks)},
    )


# -- per_token -----------------------------------------------------------------------------------


def _import_per_token(files: list[Path], first: Any, out: Path, options: ImportOptions) -> ImportResult:
    p2l_ref = physical_map(first, files[0])
    num_layers = p2l_ref.shape[0]
    num_experts = num_logical(p2l_ref, options, files[0])
    # Which layers are MoE, and top-k: from the first record with tokens (dense layers are all -1).
    layers: list[int] | None = None
    top_k = options.top_k
    for rec in first["records"]:
        t = tensor_of(rec.get("topk_ids_of_layer"), "topk_ids_of_layer", files[0], 3)
        if t.shape[1] == 0:
            continue
        filled = t != -1
        layers = [i for i in range(t.shape[0]) if bool(filled[i].any())]
        if top_k is None and layers:
            top_k = int(filled[layers].sum(-1).max())
        break
    if not layers:
        raise InvalidInputError(
            "no routed tokens in the first rank's records (every topk_ids slot is -1)", files[0]
        )
    assert top_k is not None
    notes = dense_note(num_layers, layers)
    notes.append("expert ids mapped physical -> logical with last_physical_to_logical_map")
    notes.append(
        "sequence ids number the sequences of each forward pass (SGLang does not record request ids)"
    )
    meta = trace_metadata(
        "sglang",
        num_experts=num_experts,
        top_k=top_k,
        score_function=options.score_function,
        files=files,
        notes=notes,
        extra={"sglang_mode": "per_token"},
    )
    seen: dict[int, str] = {}
    duplicates = 0
    seq_offset = 0
    ranks: list[int] = []
    with TraceSink(out, shard_tokens=options.shard_tokens) as sink:
        sink.begin(meta)
        for fi, path in enumerate(files):
            obj = first if fi == 0 else torch_load(path)
            if dump_mode(obj, path) != "per_token":
                raise InvalidInputError(
                    f"is a {dump_mode(obj, path)} dump but {files[0].name} is a per_token dump", path
                )
            p2l = physical_map(obj, path)
            if not torch.equal(p2l, p2l_ref):
                raise InvalidInputError(
                    f"last_physical_to_logical_map differs from {files[0].name}'s: ranks are not from "
                    "the same run",
                    path,
                )
            file_rank = rank_of(path, fi) or 0
            for j, rec in enumerate(obj["records"]):
                where = f"record {j}"
                file_rank = int(rec.get("rank", file_rank))
                topk = record_topk(rec, p2l, path, where)
                n = topk.shape[1]
                input_ids = rec.get("input_ids")
                positions = rec.get("positions")
                if input_ids is None or len(input_ids) != n or positions is None or len(positions) != n:
                    raise InvalidInputError(
                        f"{where}: input_ids/positions do not match the {n} tokens of topk_ids_of_layer", path
                    )
                if n == 0:
                    continue
                fp = int(rec.get("forward_pass_id", j))
                key = fingerprint(rec)
                if fp in seen and seen[fp] == key:
                    duplicates += 1  # tensor parallel: another rank recorded the same batch
                    continue
                seen.setdefault(fp, key)
                extra_cols = topk[:, :, top_k:]
                if extra_cols.numel() and bool((extra_cols != -1).any()):
                    raise InvalidInputError(
                        f"{where}: tokens choose more than top_k={top_k} experts (pass --top-k)", path
                    )
                dense_hit = [i for i in range(num_layers) if i not in layers and bool((topk[i] != -1).any())]
                if dense_hit:
                    raise InvalidInputError(
                        f"{where}: layer {dense_hit[0]} has routed tokens here but none in "
                        f"{files[0].name}'s first "
                        "record (inconsistent ranks or records)",
                        path,
                    )
                phys = topk[:, :, :top_k]
                batch: dict[str, torch.Tensor] = {}
                for layer in layers:
                    logical = logical_ids(phys[layer], p2l[layer])
                    check_ids(logical, num_experts, path, f"{where} layer {layer}")
                    batch[f"layers.{layer}.topk_ids"] = logical.to(torch.int32)
                lens = rec.get("extend_seq_lens")
                if lens is not None and sum(int(x) for x in lens) == n:
                    seq = torch.repeat_interleave(
                        torch.arange(len(lens), dtype=torch.int64), torch.tensor([int(x) for x in lens])
                    )
                    nseq = len(lens)
                else:  # decode: one token per request
                    seq = torch.arange(n, dtype=torch.int64)
                    nseq = n
                batch["tokens.sequence_ids"] = seq + seq_offset
                seq_offset += nseq
                batch["tokens.input_ids"] = torch.tensor([int(x) for x in input_ids], dtype=torch.int64)
                batch["tokens.positions"] = torch.tensor([int(x) for x in positions], dtype=torch.int64)
                batch["tokens.step"] = torch.full((n,), fp, dtype=torch.int64)
                sink.add(batch)
            ranks.append(file_rank)
        if sink.tokens == 0:
            raise InvalidInputError("no tokens in any record", files[0])
        if duplicates:
            notes.append(f"{duplicates} records identical to another rank's (tensor parallel) kept once")
        return finish_per_token(
            sink,
            "sglang",
            out,
            layers=layers,
            num_experts=num_experts,
            top_k=top_k,
            files=files,
            notes=notes,
            ranks=ranks,
        )


# -- legacy CSV ----------------------------------------------------------------------------------


def _import_csv(files: list[Path], out: Path, options: ImportOptions) -> ImportResult:
    tables = [read_csv(p) for p in files]
    if all(t == tables[0] for t in tables[1:]) and len(tables) > 1:
        merged = tables[0]
        notes = [f"{len(tables)} rank files are identical (tensor parallel): counted once"]
    else:
        merged = {}
        for t in tables:
            for k, v in t.items():
                merged[k] = merged.get(k, 0) + v
        notes = [f"{len(tables)} rank files summed"] if len(tables) > 1 else []
    if not merged:
        raise InvalidInputError("no rows", files[0])
    max_id = max(e for _, e in merged)
    num_experts = options.num_experts
    if num_experts is None:
        raise MissingMetadataError(
            "number of experts unknown: the CSV only lists experts that received tokens (largest id "
            f"{max_id}); "
            "pass --num-experts",
            files[0],
        )
    if max_id >= num_experts:
        raise InvalidInputError(
            f"expert id {max_id} is out of range for --num-experts {num_experts}", files[0]
        )
    layers = sorted({layer for layer, _ in merged})
    counts = {layer: torch.zeros(1, num_experts, dtype=torch.int64) for layer in layers}
    for (layer, e), c in merged.items():
        counts[layer][0, e] += c
    notes.append("legacy CSV: expert ids are logical; one step covering the whole recording")
    return import_counts(
        "sglang",
        out,
        counts,
        num_experts=num_experts,
        top_k=options.top_k,
        score_function=options.score_function,
        files=files,
        notes=notes,
        ranks=[rank_of(p, i) or 0 for i, p in enumerate(files)],
        extra={"sglang_mode": "csv"},
    )


def import_sglang(sources: list[Path], out: Path, options: ImportOptions) -> ImportResult:
    files = sorted(files_in(sources, DUMP_FILES, where=sources[0]), key=natural_key)
    csvs = [p for p in files if p.suffix == ".csv"]
    if csvs:
        if len(csvs) != len(files):
            raise InvalidInputError(
                "mixes legacy CSV files and .pt dumps; import one kind at a time", files[0]
            )
        return _import_csv(files, out, options)
    first = torch_load(files[0])
    mode = dump_mode(first, files[0])
    if mode == "stat":
        return _import_stat(files, first, out, options)
    if mode == "per_pass":
        return _import_per_pass(files, first, out, options)
    return _import_per_token(files, first, out, options)
