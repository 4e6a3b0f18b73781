"""Writers that produce each foreign format the way the source system writes it (see docs/importers.md).

Every function here mirrors the writing code of the system named: the same container (``torch.save``,
JSON lines, raw bfloat16 sidecars, ``safetensors.torch.save_file``), the same key names and dtypes.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

# -- SGLang (python/sglang/srt/eplb/expert_distribution.py) -------------------------------------------


def sglang_p2l(num_layers: int, num_logical: int, num_physical: int, seed: int = 0) -> torch.Tensor:
    """A physical->logical map: every logical expert once, then redundant replicas of random experts."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(num_layers):
        extra = torch.randint(0, num_logical, (num_physical - num_logical,), generator=g)
        row = torch.cat([torch.arange(num_logical), extra])
        rows.append(row[torch.randperm(num_physical, generator=g)])
    return torch.stack(rows).to(torch.int64)


def sglang_global_physical_count(topk_ids_of_layer: torch.Tensor, num_physical: int) -> torch.Tensor:
    """SGLang's _convert_per_token_to_global_physical_count."""
    num_layers = topk_ids_of_layer.shape[0]
    flat = topk_ids_of_layer.reshape(num_layers, -1)
    mask = flat != -1
    out = torch.zeros((num_layers, num_physical), dtype=topk_ids_of_layer.dtype)
    out.scatter_add_(1, flat.masked_fill(~mask, 0).long(), mask.to(out.dtype))
    return out


def sglang_per_token_record(
    *,
    forward_pass_id: int,
    rank: int,
    logical_topk: dict[int, torch.Tensor],  # moe layer -> [T, k] logical ids
    p2l: torch.Tensor,
    input_ids: list[int],
    positions: list[int],
    extend_seq_lens: list[int] | None,
    seed: int,
) -> dict[str, Any]:
    """One record of _DetailSinglePassGatherer.collect() + _DetailAccumulator.append(). Logical choices are
    turned into physical ids by picking one replica at random (as EPLB dispatch does)."""
    num_layers, num_physical = p2l.shape
    n = len(input_ids)
    g = torch.Generator().manual_seed(seed)
    topk = torch.full((num_layers, n, 8), -1, dtype=torch.int32)  # _TOP_K_NUM = 8, reset to -1
    for layer, ids in logical_topk.items():
        for t in range(n):
            for j in range(ids.shape[1]):
                e = int(ids[t, j])
                if e < 0:
                    continue
                replicas = (p2l[layer] == e).nonzero().flatten()
                topk[layer, t, j] = int(replicas[torch.randint(len(replicas), (1,), generator=g)])
    return dict(
        forward_pass_id=forward_pass_id,
        rank=rank,
        gatherer_key="primary",
        input_ids=input_ids,
        positions=positions,
        extend_seq_lens=extend_seq_lens,
        forward_mode=1 if extend_seq_lens is not None else 2,
        topk_ids_of_layer=topk,
        misc_objects=[],
        global_physical_count=sglang_global_physical_count(topk, num_physical),
    )


def write_sglang_detail(
    folder: Path, rank: int, records: list[dict[str, Any]], p2l: torch.Tensor, t: float
) -> Path:
    """_DetailAccumulator.dump: expert_distribution_recorder_{time}_{rank}.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"expert_distribution_recorder_{t}_{rank}.pt"
    torch.save(dict(records=records, last_physical_to_logical_map=p2l), str(path))
    return path


def write_sglang_stat(folder: Path, logical_count: torch.Tensor, t: float) -> Path:
    """_StatAccumulator.dump on rank 0: expert_distribution_recorder_{time}.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"expert_distribution_recorder_{t}.pt"
    torch.save(
        dict(rank=0, logical_count=logical_count.to(torch.int32), average_utilization_rate_over_window=None),
        str(path),
    )
    return path


def write_sglang_csv(folder: Path, rank: int, counts: dict[int, dict[int, int]]) -> Path:
    """The legacy recorder: expert_distribution_rank{r}_timestamp{t}.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"expert_distribution_rank{rank}_timestamp1700000000.5.csv"
    with open(path, "w") as fd:
        fd.write("layer_id,expert_id,count\n")
        for layer, per in counts.items():
            for e, c in per.items():
                fd.write(f"{layer},{e},{c}\n")
    return path


# -- TensorRT-LLM (tensorrt_llm/tools/layer_wise_benchmarks / expert_statistic.py) -----------------------


def write_trtllm(
    folder: Path, rank: int, records: dict[tuple[int, int], torch.Tensor], meta: dict[str, int] | None
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0 and meta is not None:
        with open(folder / "meta_info.json", "w") as f:
            json.dump(meta, f)
    path = folder / f"rank{rank}.safetensors"
    save_file({f"{i}_{layer}": c for (i, layer), c in records.items()}, str(path))
    return path


def trtllm_counts(selected: torch.Tensor, num_experts: int) -> torch.Tensor:
    return selected.flatten().bincount(minlength=num_experts)


# -- Megatron-Core (megatron/core/transformer/moe/router_tracer.py) ------------------------------------


class MegatronTracerWriter:
    """Writes router_trace_rank{r}.jsonl and the bf16 sidecars exactly as RouterTracer does."""

    def __init__(self, folder: Path, rank: int, *, logits: bool, hidden: bool) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.jsonl = folder / f"router_trace_rank{rank}.jsonl"
        self.jsonl.write_text("")
        self.logits_path = folder / f"logits_rank{rank}.bin"
        self.hs_path = folder / f"hidden_states_rank{rank}.bin"
        self.capture_logits = logits
        self.capture_hidden = hidden
        self._lo = 0
        self._ho = 0
        self.records: list[dict[str, Any]] = []

    def record(
        self,
        step: int,
        layer: int,
        top: torch.Tensor,
        lg: torch.Tensor | None,
        hs: torch.Tensor | None,
        block: str = "decoder",
        mtp_idx: int | None = None,
    ) -> None:
        rec: dict[str, Any] = {
            "step": step,
            "stage": "pre_dispatch",
            "block": block,
            "layer": layer,
            "rank": self.rank,
            "num_tokens": int(top.shape[0]),
            "topk": int(top.shape[1]),
        }
        if mtp_idx is not None:
            rec["mtp_idx"] = mtp_idx
        if self.capture_hidden and hs is not None:
            b = hs.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
            with open(self.hs_path, "ab") as f:
                f.write(b)
            rec.update(hs_offset=self._ho, hs_bytes=len(b), hs_shape=list(hs.shape))
            self._ho += len(b)
        if self.capture_logits and lg is not None:
            b = lg.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes()
            with open(self.logits_path, "ab") as f:
                f.write(b)
            rec.update(logit_offset=self._lo, logit_bytes=len(b), logit_shape=list(lg.shape))
            self._lo += len(b)
        rec["top_indices"] = top.to(torch.int32).tolist()
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(rec) + "\n")


def write_megatron_router_state(folder: Path, rank: int, state: dict[int, dict[str, Any]]) -> Path:
    path = folder / f"router_state_rank{rank}.pt"
    torch.save(state, path)
    return path


def write_megatron_tpe(folder: Path, rank: int, records: list[dict[str, Any]]) -> Path:
    sub = folder / "tokens_per_expert"
    sub.mkdir(parents=True, exist_ok=True)
    path = sub / f"rank{rank}.jsonl"
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return path


# -- vLLM ------------------------------------------------------------------------------------------------


def vllm_b64_npy(arr: np.ndarray) -> str:
    """The OpenAI server's encoding of routed_experts: base64 of an .npy payload."""
    buf = io.BytesIO()
    np.save(buf, arr)
    return base64.b64encode(buf.getvalue()).decode()


# -- a pickle that weights_only refuses ------------------------------------------------------------------


class NotATensor:
    """Any user class: torch.load(weights_only=True) refuses to unpickle it."""

    def __init__(self) -> None:
        self.payload = [1, 2, 3]
