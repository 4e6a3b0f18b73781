"""Reading SGLang's expert-distribution dumps record by record (modes, physical-to-logical folding, per-pass
and per-token records, the legacy CSV): shared by moediag import (moediag.importers.sglang) and the
watcher (moediag.watch.decoders), so both read a dump the same way.
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
)
from moediag.render.words import layers_have

DUMP_FILES = r"(expert_distribution.*\.(pt|csv))|(.*\.csv)"


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


def tensor_of(obj: Any, name: str, path: Path, dims: int) -> torch.Tensor:
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


def moe_layers(counts: torch.Tensor) -> list[int]:
    """Layers with any count ([..., layers, experts]); the rest are dense (all zeros)."""
    per_layer = counts.reshape(-1, counts.shape[-2], counts.shape[-1]).sum(dim=(0, 2))
    return [i for i in range(counts.shape[-2]) if int(per_layer[i]) > 0]


def dense_note(total: int, kept: list[int]) -> list[str]:
    dense = [i for i in range(total) if i not in kept]
    if not dense:
        return []
    return [f"{layers_have(dense)} no routed tokens (dense layers; left out, not dead experts)"]


def physical_map(obj: dict[str, Any], path: Path) -> torch.Tensor:
    m = tensor_of(obj["last_physical_to_logical_map"], "last_physical_to_logical_map", path, 2).to(
        torch.int64
    )
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


def stat_counts(obj: dict[str, Any], path: Path) -> tuple[torch.Tensor, int]:
    """One stat dump: its recorded steps ``[steps, layers, experts]`` int64 (empty circular-buffer slots
    dropped) and how many empty slots there were. Used by the importer and by ``moediag watch``."""
    lc = tensor_of(obj["logical_count"], "logical_count", path, 3).to(torch.int64)
    if lc.numel() and int(lc.min()) < 0:
        raise InvalidInputError("logical_count has negative counts", path)
    used = lc.sum(dim=(1, 2)) > 0
    return lc[used], int((~used).sum())


def pass_records(
    obj: dict[str, Any], p2l: torch.Tensor, path: Path, default_rank: int = 0
) -> list[tuple[int, int, torch.Tensor]]:
    """A per_pass (or per_token) dump's records as ``(forward_pass_id, rank, physical counts [layers,
    physical] int64)``, validated against the file's physical-to-logical map ``p2l``."""
    out: list[tuple[int, int, torch.Tensor]] = []
    for j, rec in enumerate(obj["records"]):
        if not isinstance(rec, dict) or "global_physical_count" not in rec:
            raise InvalidInputError(f"record {j} has no global_physical_count", path)
        gpc = tensor_of(rec["global_physical_count"], f"record {j} global_physical_count", path, 2)
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


def fingerprint(rec: dict[str, Any]) -> str:
    h = hashlib.sha1()
    h.update(repr(list(rec.get("input_ids") or [])).encode())
    h.update(rec["topk_ids_of_layer"].contiguous().numpy().tobytes())
    return h.hexdigest()


def record_topk(rec: dict[str, Any], p2l: torch.Tensor, path: Path, where: str) -> torch.Tensor:
    """A per_token record's ``topk_ids_of_layer`` int64 ``[layers, tokens, slots]`` of physical expert ids
    (-1 = empty slot), checked against the physical-to-logical map ``p2l`` [layers, physical]."""
    topk = tensor_of(rec.get("topk_ids_of_layer"), f"{where} topk_ids_of_layer", path, 3).to(torch.int64)
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
