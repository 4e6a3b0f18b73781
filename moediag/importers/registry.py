"""The formats ``moediag import`` understands, and the importer behind each (an exhaustive mapping)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from moediag.importers.base import ImportOptions, ImportResult
from moediag.importers.formats import DESCRIPTIONS, ImportFormat
from moediag.importers.hf import import_hf
from moediag.importers.megatron import import_megatron
from moediag.importers.sglang import import_sglang
from moediag.importers.trtllm import import_trtllm
from moediag.importers.vllm import import_vllm

Importer = Callable[[list[Path], Path, ImportOptions], ImportResult]


IMPORTERS: dict[ImportFormat, Importer] = {
    ImportFormat.HF: import_hf,
    ImportFormat.SGLANG: import_sglang,
    ImportFormat.MEGATRON: import_megatron,
    ImportFormat.TRTLLM: import_trtllm,
    ImportFormat.VLLM: import_vllm,
}


if set(IMPORTERS) != set(ImportFormat) or set(DESCRIPTIONS) != set(ImportFormat):  # pragma: no cover
    raise RuntimeError("every ImportFormat needs an importer and a description")
