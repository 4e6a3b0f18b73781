"""Shared pieces of the watch tests: run a watcher over what is there, and the importer's answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from moediag.analysis import analyze_trace
from moediag.importers import import_routing
from moediag.watch import DecodeOptions, Watcher, WatchOptions
from tests.importers.fixtures import sglang_p2l, sglang_per_token_record, write_sglang_detail


def watch_once(src: Path | list[Path], fmt: str, state: Path | None = None, **decode: Any) -> Watcher:
    srcs = src if isinstance(src, list) else [src]
    opts = WatchOptions(
        fmt, decode=DecodeOptions(**decode), settle=0, check=None, window_seconds=None, state_path=state
    )
    w = Watcher(srcs, opts, log=lambda m: None)
    w.poll()
    return w


def cumulative_loads(w: Watcher) -> dict[int, list[int]]:
    rep, _ = w.report()
    return {layer: row["load"] for layer, row in rep.cumulative.items()}


def import_loads(fmt: str, src: Path, tmp: Path, **kw: Any) -> dict[int, list[int]]:
    out = tmp / f"imported-{fmt}.safetensors"
    import_routing(fmt, src, out, **kw)
    return {row["layer"]: row["load"] for row in analyze_trace(out).to_dict()["layers"]}


def sglang_per_token_dump(
    folder: Path, t: float, passes: int, seed: int, *, rank: int = 0, layers: int = 4, experts: int = 8
) -> tuple[Path, dict[int, torch.Tensor]]:
    """An SGLang per_token dump of ``passes`` forward passes on MoE layers 1..layers-1 (layer 0 dense);
    returns the file and the logical loads it holds per layer."""
    p2l = sglang_p2l(layers, experts, experts + 2, seed=0)
    g = torch.Generator().manual_seed(seed)
    recs = []
    loads = {layer: torch.zeros(experts, dtype=torch.int64) for layer in range(1, layers)}
    for fp in range(passes):
        n = 6
        logical = {
            layer: torch.stack([torch.randperm(experts, generator=g)[:2] for _ in range(n)])
            for layer in range(1, layers)
        }
        for layer, ids in logical.items():
            loads[layer] += torch.bincount(ids.flatten(), minlength=experts)
        recs.append(
            sglang_per_token_record(
                forward_pass_id=int(t * 1000) + fp,
                rank=rank,
                logical_topk=logical,
                p2l=p2l,
                input_ids=list(range(n)),
                positions=list(range(n)),
                extend_seq_lens=[n],
                seed=seed * 100 + fp,
            )
        )
    return write_sglang_detail(folder, rank, recs, p2l, t), loads
