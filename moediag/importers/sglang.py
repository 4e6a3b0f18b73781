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

import csv
import hashlib
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
from moediag.render.words import layers_have

_FILES = r"(expert_distribution.*\.(pt|csv))|(.*\.csv)"


def dump_mode(obj: Any, path: Path) -> str:
    if isinstance(obj, dict) and "logical_count" in obj:
        return "stat"
    if isinstance(obj, dict) and "records" in obj:
        recs = obj["records"]
        if not isinstance(recs, list):
            raise InvalidInputError("'records' is not a list", path)
        if "last_physical_to_logical_map" not in obj:
            raise InvalidInputError("per-pass dump without 'last_physical_to_logical_map'", path)
        return (
            "per_token" if any(isinstance(r, dict) and "topk_ids_of_layer" in r for r in recs) else "per_pass"
        )
    keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
    raise InvalidInputError(
        "not an SGLang expert distribution dump (expected a dict with 'logical_count' or 'records'; "
        f"found {keys})",
        path,
    )


def _tensor(obj: Any, name: str, path: Path, dims: int) -> torch.Tensor:
    if not isinstance(obj, torch.Tensor):
        raise InvalidInputError(f"{name} is {type(obj).__name__}, expected a tensor", path)
    if obj.dim() != dims:
        raise InvalidInputError(f"{name} has shape {list(obj.shape)}, expected {dims} dimensions", path)
    if obj.is_floating_point():
        raise InvalidInputError(f"{name} has dtype {obj.dtype}, expected integers", path)
    return obj


def physical_to_logical_counts(physical: torch.Tensor, p2l: torch.Tensor, num_logical: int) -> torch.Tensor:
    """``[..., layers, physical]`` counts -> ``[..., layers, logical]`` (sums replicas), as SGLang does."""
    lead = physical.shape[:-2]
    index = p2l.to(torch.int64).expand(*lead, *p2l.shape)
    out = torch.zeros(*physical.shape[:-1], num_logical, dtype=torch.int64)
    out.scatter_add_(-1, index, physical.to(torch.int64))
    return out


def _moe_layers(counts: torch.Tensor) -> list[int]:
    """Layers with any count ([..., layers, experts]); the rest are dense (all zeros)."""
    per_layer = counts.reshape(-1, counts.shape[-2], counts.shape[-1]).sum(dim=(0, 2))
    return [i for i in range(counts.shape[-2]) if int(per_layer[i]) > 0]


def _dense_note(total: int, kept: list[int]) -> list[str]:
    dense = [i for i in range(total) if i not in kept]
    if not dense:
        return []
    return [f"{layers_have(dense)} no routed tokens (dense layers; left out, not dead experts)"]


def physical_map(obj: dict[str, Any], path: Path) -> torch.Tensor:
    m = _tensor(obj["last_physical_to_logical_map"], "last_physical_to_logical_map", path, 2).to(torch.int64)
    if m.numel() and int(m.min()) < 0:
        raise InvalidInputError("last_physical_to_logical_map has negative entries", path)
    return m


def num_logical(p2l: torch.Tensor, options: ImportOptions, path: Path) -> int:
    found = int(p2l.max()) + 1 if p2l.numel() else None
    if options.num_experts is not None and found is not None and options.num_experts < found:
        raise InvalidInputError(
            f"--num-experts {options.num_experts} is below the largest logical expert id in "
            f"last_physical_to_logical_map ({found - 1})",
            path,
        )
    n = options.num_experts or found
    if n is None:
        raise MissingMetadataError("empty physical-to-logical map; pass --num-experts", path)
    return n


# -- stat ----------------------------------------------------------------------------------------


def stat_counts(obj: dict[str, Any], path: Path) -> tuple[torch.Tensor, int]:
    """One stat dump: its recorded steps ``[steps, layers, experts]`` int64 (empty circular-buffer slots
    dropped) and how many empty slots there were. Used by the importer and by ``moediag watch``."""
    lc = _tensor(obj["logical_count"], "logical_count", path, 3).to(torch.int64)
    if lc.numel() and int(lc.min()) < 0:
        raise InvalidInputError("logical_count has negative counts", path)
    used = lc.sum(dim=(1, 2)) > 0
    return lc[used], int((~used).sum())


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
    layers = _moe_layers(counts)
    notes = _dense_note(counts.shape[1], layers)
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


def pass_records(
    obj: dict[str, Any], p2l: torch.Tensor, path: Path, default_rank: int = 0
) -> list[tuple[int, int, torch.Tensor]]:
    """A per_pass (or per_token) dump's records as ``(forward_pass_id, rank, physical counts [layers,
    physical] int64)``, validated against the file's physical-to-logical map ``p2l``."""
    out: list[tuple[int, int, torch.Tensor]] = []
    for j, rec in enumerate(obj["records"]):
        if not isinstance(rec, dict) or "global_physical_count" not in rec:
            raise InvalidInputError(f"record {j} has no global_physical_count", path)
        gpc = _tensor(rec["global_physical_count"], f"record {j} global_physical_count", path, 2)
        if tuple(gpc.shape) != tuple(p2l.shape):
            raise InvalidInputError(
                f"record {j} global_physical_count has shape {list(gpc.shape)} but the "
                "physical-to-logical "
                f"map has {list(p2l.shape)}",
                path,
            )
        rank = int(rec.get("rank", default_rank))
        out.append((int(rec.get("forward_pass_id", j)), rank, gpc.to(torch.int64)))
    return out


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
    layers = _moe_layers(counts)
    if not layers:
        raise InvalidInputError("no expert counts recorded (every record is zero)", files[0])
    notes = _dense_note(counts.shape[1], layers)
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


def _fingerprint(rec: dict[str, Any]) -> str:
    h = hashlib.sha1()
    h.update(repr(list(rec.get("input_ids") or [])).encode())
    h.update(rec["topk_ids_of_layer"].contiguous().numpy().tobytes())
    return h.hexdigest()


def record_topk(rec: dict[str, Any], p2l: torch.Tensor, path: Path, where: str) -> torch.Tensor:
    """A per_token record's ``topk_ids_of_layer`` int64 ``[layers, tokens, slots]`` of physical expert ids
    (-1 = empty slot), checked against the physical-to-logical map ``p2l`` [layers, physical]."""
    topk = _tensor(rec.get("topk_ids_of_layer"), f"{where} topk_ids_of_layer", path, 3).to(torch.int64)
    if topk.shape[0] != p2l.shape[0]:
        raise InvalidInputError(
            f"{where}: topk_ids_of_layer has {topk.shape[0]} layers, the map has {p2l.shape[0]}", path
        )
    if topk.numel() and int(topk.max()) >= p2l.shape[1]:
        raise InvalidInputError(
            f"{where}: physical expert id {int(topk.max())} >= {p2l.shape[1]} physical experts", path
        )
    return topk


def logical_ids(physical: torch.Tensor, p2l_row: torch.Tensor) -> torch.Tensor:
    """Physical expert ids of one layer (any shape, -1 = empty) -> logical ids (-1 kept)."""
    return torch.where(physical >= 0, p2l_row[physical.clamp_min(0)], torch.full_like(physical, -1))


def _import_per_token(files: list[Path], first: Any, out: Path, options: ImportOptions) -> ImportResult:
    p2l_ref = physical_map(first, files[0])
    num_layers = p2l_ref.shape[0]
    num_experts = num_logical(p2l_ref, options, files[0])
    # Which layers are MoE, and top-k: from the first record with tokens (dense layers are all -1).
    layers: list[int] | None = None
    top_k = options.top_k
    for rec in first["records"]:
        t = _tensor(rec.get("topk_ids_of_layer"), "topk_ids_of_layer", files[0], 3)
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
    notes = _dense_note(num_layers, layers)
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
                key = _fingerprint(rec)
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


def read_csv(path: Path) -> dict[tuple[int, int], int]:
    out: dict[tuple[int, int], int] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or [f.strip() for f in reader.fieldnames] != [
                "layer_id",
                "expert_id",
                "count",
            ]:
                raise InvalidInputError(
                    f"expected the header layer_id,expert_id,count, found {reader.fieldnames}", path
                )
            for line, row in enumerate(reader, start=2):
                try:
                    key = (int(row["layer_id"]), int(row["expert_id"]))
                    count = int(row["count"])
                except (TypeError, ValueError):
                    raise InvalidInputError(
                        f"line {line}: expected integers, found {list(row.values())} (a layer_id of UNKNOWN "
                        "means the recorder never learned the layer)",
                        path,
                    ) from None
                if count < 0 or key[1] < 0 or key[0] < 0:
                    raise InvalidInputError(f"line {line}: negative value", path)
                out[key] = out.get(key, 0) + count
    except UnicodeDecodeError:
        raise InvalidInputError("not a text CSV file", path) from None
    return out


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
    files = sorted(files_in(sources, _FILES, where=sources[0]), key=natural_key)
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
