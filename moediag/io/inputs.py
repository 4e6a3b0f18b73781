"""Tell a trace from a checkpoint by looking at headers only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from moediag.errors import InvalidInputError
from moediag.io.safetensors_file import SafetensorsFile
from moediag.trace.schema import FORMAT_NAME, LAYER_RE

Kind = Literal["trace", "checkpoint"]


def _is_trace_file(path: Path) -> bool:
    header = SafetensorsFile(path)
    if header.metadata.get("format") == FORMAT_NAME:
        return True
    names = list(header.tensors)
    return (
        bool(names)
        and all(n.startswith(("layers.", "tokens.")) for n in names)
        and any(
            (m := LAYER_RE.match(n)) is not None
            and m.group(2) in ("router_logits", "topk_ids", "expert_counts")
            for n in names
        )
    )


def detect_kind(path: str | os.PathLike[str]) -> Kind:
    """``trace`` or ``checkpoint``; raises InvalidInputError for anything else."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError("no such file or folder", p)
    if p.is_dir():
        if (p / "config.json").exists() or any(p.glob("*.safetensors.index.json")):
            return "checkpoint"
        shards = sorted(x for x in p.iterdir() if x.suffix == ".safetensors")
        if not shards:
            raise InvalidInputError("folder has no .safetensors files (neither a trace nor a checkpoint)", p)
        return "trace" if _is_trace_file(shards[0]) else "checkpoint"
    if p.name.endswith(".index.json"):
        return "checkpoint"
    return "trace" if _is_trace_file(p) else "checkpoint"
