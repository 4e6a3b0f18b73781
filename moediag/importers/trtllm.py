"""TensorRT-LLM expert statistics (``EXPERT_STATISTIC_ITER_RANGE=a-b EXPERT_STATISTIC_PATH=dir``).

The folder holds ``meta_info.json`` (``num_experts``, ``num_experts_per_token``; written by rank 0) and one
``rank{r}.safetensors`` per rank whose tensors are named ``"{iter}_{layer}"``, each an integer bincount
``[num_experts]`` of the experts that rank's tokens chose in that iteration and layer. Ranks are summed
(as TensorRT-LLM's own ``load_expert_statistic`` does); every rank must hold the same iterations and
layers. Produces counts only: ``layers.L.expert_counts`` ``[iterations, num_experts]``, L being
TensorRT-LLM's layer index. Other files in the folder (``cooccurrence_rank*``,
``token_selected_experts_rank*``, ``rank*_numtokens.json``) are not read.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from moediag.errors import InvalidInputError, MissingMetadataError
from moediag.importers.base import (
    ImportOptions,
    ImportResult,
    import_counts,
    natural_key,
    rank_of,
)
from moediag.io import strict_json
from moediag.io.paths import SIDECAR_MAX_BYTES
from moediag.io.safetensors_file import SafetensorsFile
from moediag.trace.schema import MAX_EXPERTS

_RANK_FILE = re.compile(r"rank(\d+)\.safetensors")
_KEY = re.compile(r"(\d+)_(\d+)")


def _rank_files(sources: list[Path]) -> tuple[list[Path], Path | None]:
    files: list[Path] = []
    meta: Path | None = None
    for p in sources:
        if p.is_dir():
            files.extend(c for c in p.iterdir() if c.is_file() and _RANK_FILE.fullmatch(c.name))
            if (p / "meta_info.json").is_file():
                meta = p / "meta_info.json"
        elif p.name == "meta_info.json":
            meta = p
        else:
            files.append(p)
    if meta is None and files and (files[0].parent / "meta_info.json").is_file():
        meta = files[0].parent / "meta_info.json"
    return sorted(set(files), key=natural_key), meta


def _read_meta(path: Path) -> dict[str, int]:
    obj = strict_json.load_file(path, limit=SIDECAR_MAX_BYTES, what="meta_info.json")
    if not isinstance(obj, dict):
        raise InvalidInputError("expected a JSON object with num_experts and num_experts_per_token", path)
    out: dict[str, int] = {}
    for key in ("num_experts", "num_experts_per_token"):
        if key in obj and obj[key] is not None:
            if (
                not isinstance(obj[key], int)
                or isinstance(obj[key], bool)
                or not 1 <= obj[key] <= MAX_EXPERTS
            ):
                raise InvalidInputError(f"{key}={obj[key]!r} is not a positive integer", path)
            out[key] = obj[key]
    return out


def import_trtllm(sources: list[Path], out: Path, options: ImportOptions) -> ImportResult:
    files, meta_path = _rank_files(sources)
    if not files:
        raise InvalidInputError("no rank*.safetensors files", sources[0])
    meta = _read_meta(meta_path) if meta_path is not None else {}
    num_experts = options.num_experts
    if "num_experts" in meta:
        if num_experts is not None and num_experts != meta["num_experts"]:
            raise InvalidInputError(
                f"--num-experts {num_experts} contradicts num_experts={meta['num_experts']}", meta_path
            )
        num_experts = meta["num_experts"]
    if num_experts is None:
        raise MissingMetadataError(
            "number of experts unknown: no meta_info.json beside the rank files; pass --num-experts", files[0]
        )
    top_k = meta.get("num_experts_per_token", options.top_k)
    if options.top_k is not None and top_k != options.top_k:
        raise InvalidInputError(
            f"--top-k {options.top_k} contradicts num_experts_per_token={top_k}", meta_path or files[0]
        )
    total: dict[tuple[int, int], torch.Tensor] = {}
    keys_ref: set[tuple[int, int]] | None = None
    ranks: list[int] = []
    for path in files:
        st = SafetensorsFile(path)
        keys: set[tuple[int, int]] = set()
        for name, info in st.tensors.items():
            m = _KEY.fullmatch(name)
            if not m:
                raise InvalidInputError(f"tensor {name!r} is not named '{{iter}}_{{layer}}'", path)
            if info.dtype not in ("I64", "I32", "I16", "U8", "I8"):
                raise InvalidInputError(
                    f"tensor {name!r} has dtype {info.dtype}; expected integer counts", path
                )
            if info.shape != (num_experts,):
                raise InvalidInputError(
                    f"tensor {name!r} has shape {list(info.shape)}; expected [{num_experts}] (num_experts)",
                    path,
                )
            key = (int(m.group(1)), int(m.group(2)))
            keys.add(key)
            counts = st.read(name).to(torch.int64)
            if int(counts.min()) < 0:
                raise InvalidInputError(f"tensor {name!r} has negative counts", path)
            total[key] = total[key] + counts if key in total else counts
        if keys_ref is None:
            keys_ref = keys
        elif keys != keys_ref:
            diff = sorted(keys ^ keys_ref)[:3]
            raise InvalidInputError(
                f"holds different iterations/layers from {files[0].name} (e.g. "
                f"{', '.join(f'{i}_{layer}' for i, layer in diff)}): ranks are inconsistent",
                path,
            )
        r = rank_of(path)
        ranks.append(r if r is not None else len(ranks))
    if len(set(ranks)) != len(ranks):
        raise InvalidInputError(f"two files hold the same rank ({sorted(ranks)})", files[0])
    if not total:
        raise InvalidInputError("no '{iter}_{layer}' tensors in the rank files", files[0])
    iters = sorted({i for i, _ in total})
    layers = sorted({layer for _, layer in total})
    missing = 0
    counts_by_layer: dict[int, torch.Tensor] = {}
    for layer in layers:
        rows = []
        for it in iters:
            if (it, layer) in total:
                rows.append(total[(it, layer)])
            else:
                rows.append(torch.zeros(num_experts, dtype=torch.int64))
                missing += 1
        counts_by_layer[layer] = torch.stack(rows)
    notes = [f"{len(files)} rank files summed" if len(files) > 1 else "one rank file"]
    notes.append(f"one step per iteration {iters[0]}..{iters[-1]}")
    if missing:
        notes.append(f"{missing} (iteration, layer) pairs absent from every rank: stored as zero counts")
    if meta_path is None:
        notes.append("no meta_info.json: num_experts from --num-experts")
    tokens = 0
    if top_k:
        tokens = int(counts_by_layer[layers[0]].sum()) // top_k
    return import_counts(
        "trtllm",
        out,
        counts_by_layer,
        num_experts=num_experts,
        top_k=top_k,
        score_function=options.score_function,
        files=files,
        notes=notes,
        ranks=ranks,
        num_tokens=tokens,
        extra={"iterations": [iters[0], iters[-1]], "ranks": sorted(ranks)},
    )
