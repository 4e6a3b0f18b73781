"""transformers: router logits saved with ``torch.save(outputs.router_logits, "x.pt")``.

Accepted per file (``torch.load(weights_only=True)``): a tuple or list with one entry per MoE layer, or a
dict holding such a tuple under ``router_logits``. An entry is

* a float tensor ``[batch*seq, E]`` (Mixtral, Qwen-MoE, OLMoE, ...) or ``[batch, seq, E]``;
* a pair ``(router_logits [batch, seq, E], expert_index [batch, seq])`` (Switch Transformers);
* a placeholder for a dense layer (a tensor with fewer than two dimensions, as Switch returns for its dense
  layers): skipped, but it keeps its position, so positions are then the model's real layer indices.

Rows that already sum to one are probabilities (some transformers v5 routers return those): they are
stored as log-probabilities, which softmax maps back to the same probabilities exactly, and the metadata
says so (``router_logits_are_log_probs``). Several files are concatenated along tokens, in name order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moediag.errors import InvalidInputError, MissingMetadataError, UsageError
from moediag.importers.base import (
    ImportOptions,
    ImportResult,
    TraceSink,
    files_in,
    finish_per_token,
    natural_key,
    resolve_layer_ids,
    torch_load,
    trace_metadata,
)

#: smallest probability stored as a log-probability (log(0) would be -inf)
PROB_FLOOR = 1e-30


@dataclass
class _Entry:
    position: int
    logits: torch.Tensor  # [N, E]
    ids: torch.Tensor | None  # [N, 1] (Switch)
    batch: int | None  # batch size when the source was [batch, seq, E]


def _entries(obj: Any, path: Path) -> list[_Entry]:
    if isinstance(obj, dict):
        if "router_logits" not in obj:
            raise InvalidInputError(
                "expected a tuple or list of per-layer router logits; this dict has keys "
                f"{sorted(map(str, obj))[:6]}",
                path,
            )
        obj = obj["router_logits"]
    if isinstance(obj, torch.Tensor) and obj.dim() == 3 and obj.is_floating_point():
        obj = list(obj)  # a stacked [layers, tokens, E] tensor
    if not isinstance(obj, (tuple, list)):
        raise InvalidInputError(
            f"expected a tuple or list of per-layer router logits, found {type(obj).__name__}", path
        )
    out: list[_Entry] = []
    for pos, item in enumerate(obj):
        ids = None
        if isinstance(item, (tuple, list)):
            if not item or not isinstance(item[0], torch.Tensor):
                raise InvalidInputError(f"entry {pos}: expected tensors, found {type(item).__name__}", path)
            if item[0].dim() < 2:
                continue  # dense-layer placeholder
            if len(item) != 2 or not isinstance(item[1], torch.Tensor):
                raise InvalidInputError(
                    f"entry {pos}: expected (router_logits, expert_index) as Switch Transformers returns",
                    path,
                )
            item, ids = item
        if not isinstance(item, torch.Tensor):
            raise InvalidInputError(f"entry {pos}: expected a tensor, found {type(item).__name__}", path)
        if item.dim() < 2:
            continue  # dense-layer placeholder
        if not item.is_floating_point():
            raise InvalidInputError(
                f"entry {pos}: router logits must be floating point, found {item.dtype}", path
            )
        if item.dim() > 3:
            raise InvalidInputError(
                f"entry {pos}: router logits have shape {list(item.shape)}; expected 2 or 3 dims", path
            )
        batch = item.shape[0] if item.dim() == 3 else None
        logits = item.reshape(-1, item.shape[-1])
        if ids is not None:
            if ids.is_floating_point() or ids.numel() != logits.shape[0]:
                raise InvalidInputError(
                    f"entry {pos}: expert_index has shape {list(ids.shape)}, expected one integer per token "
                    f"({logits.shape[0]})",
                    path,
                )
            ids = ids.reshape(-1, 1).to(torch.int64)
        out.append(_Entry(pos, logits, ids, batch))
    if not out:
        raise InvalidInputError(
            "no MoE router logits in this file (empty, or only dense-layer placeholders)", path
        )
    return out


def _is_prob(logits: torch.Tensor) -> bool:
    if logits.numel() == 0:
        return False
    x = logits.float()
    tol = 1e-3 if logits.dtype in (torch.float32, torch.float64) else 2e-2
    return bool((x >= 0).all()) and bool(((x.sum(-1) - 1).abs() <= tol).all())


def import_hf(sources: list[Path], out: Path, options: ImportOptions) -> ImportResult:
    files = sorted(files_in(sources, r".*\.(pt|pth|bin)", where=sources[0]), key=natural_key)
    first = _entries(torch_load(files[0]), files[0])
    positions = [e.position for e in first]
    has_placeholders = positions != list(range(len(first)))
    # positions are real layer indices when placeholders keep dense layers' places, else MoE ordinals
    layers = positions if options.layer_ids is None else resolve_layer_ids(len(first), options, files[0])
    widths = {e.logits.shape[1] for e in first}
    if len(widths) != 1:
        raise InvalidInputError(f"MoE layers disagree on the number of experts: {sorted(widths)}", files[0])
    num_experts = widths.pop()
    if options.num_experts is not None and options.num_experts != num_experts:
        raise InvalidInputError(
            f"--num-experts {options.num_experts} contradicts the router logits, which have "
            f"{num_experts} columns",
            files[0],
        )
    switch = [e.ids is not None for e in first]
    if any(switch) and not all(switch):
        raise InvalidInputError("some layers carry expert indices and some do not", files[0])
    probs = [_is_prob(e.logits) for e in first]
    notes: list[str] = []
    score: str | None
    if any(probs):
        score = "softmax"
        if options.score_function not in (None, "softmax"):
            raise UsageError(
                f"router outputs of layers {[layers[i] for i, p in enumerate(probs) if p]} are probabilities "
                f"(rows sum to 1), which --score-function {options.score_function} contradicts"
            )
        notes.append(
            "router outputs of layers "
            + ",".join(str(layers[i]) for i, p in enumerate(probs) if p)
            + " were probabilities (rows sum to 1); stored as log-probabilities"
        )
    else:
        score = options.score_function or ("softmax" if all(switch) else None)
    if score is None:
        raise MissingMetadataError(
            "score function unknown: transformers router logits do not record it; pass "
            "--score-function softmax|sigmoid|topk_softmax",
            files[0],
        )
    top_k = 1 if all(switch) else options.top_k
    if all(switch) and options.top_k not in (None, 1):
        raise InvalidInputError(
            f"Switch expert indices are top-1, but --top-k {options.top_k} was given", files[0]
        )
    if top_k is None:
        raise MissingMetadataError(
            "top-k unknown: transformers router logits do not record it; pass --top-k", files[0]
        )
    if top_k > num_experts:
        raise UsageError(f"--top-k {top_k} exceeds the number of experts {num_experts}")
    if not has_placeholders and options.layer_ids is None:
        notes.append(
            "layer indices are MoE-layer ordinals (dense layers not counted); pass --layers to renumber"
        )
    three_d = first[0].batch is not None
    dropped = 0
    seq_offset = 0
    meta = trace_metadata(
        "hf",
        num_experts=num_experts,
        top_k=top_k,
        score_function=score,
        files=files,
        notes=notes,
        extra={"router_logits_are_log_probs": [layers[i] for i, p in enumerate(probs) if p]},
    )
    with TraceSink(out, shard_tokens=options.shard_tokens) as sink:
        sink.begin(meta)
        for fi, path in enumerate(files):
            entries = first if fi == 0 else _entries(torch_load(path), path)
            if [e.position for e in entries] != positions:
                raise InvalidInputError(
                    f"has {len(entries)} MoE layers at positions {[e.position for e in entries]}, but "
                    f"{files[0].name} has {positions}",
                    path,
                )
            n = entries[0].logits.shape[0]
            batch: dict[str, torch.Tensor] = {}
            for layer, e, is_prob in zip(layers, entries, probs, strict=True):
                if e.logits.shape != (n, num_experts):
                    raise InvalidInputError(
                        f"layer {layer}: router logits have shape {list(e.logits.shape)}, expected "
                        f"[{n}, {num_experts}]",
                        path,
                    )
                if _is_prob(e.logits) != is_prob and n:
                    here, there = ("probabilities", "logits") if not is_prob else ("logits", "probabilities")
                    raise InvalidInputError(
                        f"layer {layer}: router outputs are {here} here but {there} in {files[0].name}", path
                    )
                if is_prob:
                    batch[f"layers.{layer}.router_logits"] = torch.log(e.logits.float().clamp_min(PROB_FLOOR))
                else:
                    batch[f"layers.{layer}.router_logits"] = e.logits
                if e.ids is not None:
                    ids = e.ids.clone()
                    if n and (int(ids.max()) >= num_experts or int(ids.min()) < 0):
                        raise InvalidInputError(
                            f"layer {layer}: expert_index outside 0..{num_experts - 1}", path
                        )
                    # Switch drops tokens over capacity: their one-hot mask row is zero, so argmax gives 0.
                    # A 0 where the router's own argmax is another expert is such a dropped token.
                    gone = (ids[:, 0] == 0) & (e.logits.argmax(-1) != 0)
                    dropped += int(gone.sum())
                    ids[gone, 0] = -1
                    batch[f"layers.{layer}.topk_ids"] = ids
            if (entries[0].batch is not None) != three_d:
                raise InvalidInputError("mixes [batch, seq, E] and [tokens, E] router logits", path)
            if three_d:
                b = entries[0].batch
                assert b is not None
                s = n // b if b else 0
                batch["tokens.sequence_ids"] = (torch.arange(b).repeat_interleave(s) + seq_offset).to(
                    torch.int64
                )
                batch["tokens.positions"] = torch.arange(s).repeat(b).to(torch.int64)
                seq_offset += b
            if n:
                sink.add(batch)
        if sink.tokens == 0:
            raise InvalidInputError("no tokens: every file has empty router logits", files[0])
        if dropped:
            notes.append(f"{dropped} Switch token-layer choices were capacity drops (stored as -1)")
            # metadata is fixed at begin() for folders; the count goes to the result only
        return finish_per_token(
            sink,
            "hf",
            out,
            layers=sorted(layers),
            num_experts=num_experts,
            top_k=top_k,
            files=files,
            notes=notes,
        )
