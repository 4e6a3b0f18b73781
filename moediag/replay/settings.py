"""What a replay is given: the compute dtype, a selection-bias file, the figures it repeats from ``inspect``,
the placement policies, and the JSON format version.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from moediag.errors import InvalidInputError, UsageError
from moediag.replay.placement_file import PlacementFile

#: JSON schema version of ``moediag replay --json`` (``meta.format``). History: 1 = first release.
JSON_FORMAT = 1
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
#: a disagreement whose replayed top-k margin (probability units, moediag.routing) is at most this: a tie
TIE_EPS = 1e-6
#: lower edges of the margin buckets of the noise what-if (probability units, moediag.routing; last open)
MARGIN_EDGES = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
#: figures of ``inspect``'s layer rows repeated under each replayed layer's ``stats``
STAT_KEYS = (
    "load",
    "load_share",
    "max_vio",
    "max_mean",
    "min_mean",
    "cv",
    "gini",
    "entropy_norm",
    "effective_experts",
    "dead_experts",
    "cold_experts",
    "aux_loss",
    "aux_loss_unbiased",
    "z_loss",
    "router_entropy_norm",
    "confidence",
    "margin_mean",
    "margin_median",
    "margin_p10",
    "drop_rate",
)
SUMMARY_STAT_KEYS = (
    "max_vio",
    "max_mean",
    "min_mean",
    "cv",
    "gini",
    "entropy_norm",
    "aux_loss",
    "aux_loss_unbiased",
    "z_loss",
)

BiasArg = str | torch.Tensor | Mapping[int, torch.Tensor] | None
PlacementArg = str | os.PathLike[str] | PlacementFile
#: placements computed here (anything else names a placement file)
PLACEMENT_POLICIES = ("contiguous", "balanced", "hierarchical")
ProgressFn = Callable[[int], None]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """The dtype of the router GEMM (scores are always formed in float32). None = float32."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise UsageError(f"dtype {dtype} is not one of fp32, bf16, fp16")
        return dtype
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: expected fp32, bf16 or fp16")
    return DTYPES[dtype]


def load_bias_file(path: str | os.PathLike[str]) -> dict[int, torch.Tensor]:
    """Selection biases for ``--bias FILE``: a .safetensors holding ``layers.L.selection_bias`` [E] (a trace
    or a file written for the purpose), or JSON ``{"L": [E numbers], ...}`` (key ``"*"`` = every layer,
    stored under -1)."""
    p = Path(path)
    where = os.fspath(path)
    if not p.is_file():
        raise InvalidInputError("bias file not found", where)
    out: dict[int, torch.Tensor] = {}
    if p.suffix == ".json":
        import json

        try:
            doc = json.loads(p.read_text())
        except ValueError as exc:
            raise InvalidInputError(f"bias file is not valid JSON: {exc}", where) from None
        if not isinstance(doc, dict):
            raise InvalidInputError('bias file must be an object {"layer": [E numbers]}', where)
        for key, value in doc.items():
            try:
                layer = -1 if key == "*" else int(key)
                out[layer] = torch.tensor(value, dtype=torch.float32).reshape(-1)
            except (ValueError, TypeError):
                raise InvalidInputError(
                    f"bias file: entry {key!r} is not a layer with a list of numbers", where
                ) from None
        return out
    from moediag.io.safetensors_file import SafetensorsFile

    try:
        f = SafetensorsFile(p)
    except InvalidInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise InvalidInputError(f"bias file is neither JSON nor safetensors: {exc}", where) from None
    for name in f.tensors:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "layers" and parts[2] == "selection_bias" and parts[1].isdigit():
            out[int(parts[1])] = f.read(name).float().reshape(-1)
    if not out:
        raise InvalidInputError("bias file holds no layers.L.selection_bias tensor", where)
    return out


# -- per-layer accumulators ------------------------------------------------------------------------
