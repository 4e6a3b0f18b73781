"""Importers: other systems' routing dumps -> moediag traces (v1).

>>> from moediag.importers import import_routing                     # doctest: +SKIP
>>> result = import_routing("sglang", "dumps/", "trace/", num_experts=64)
>>> result.per_token, result.layers, result.num_tokens

One module per format (:mod:`~moediag.importers.hf`, ``sglang``, ``megatron``, ``trtllm``, ``vllm``);
docs/importers.md says what each reads, produces and assumes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moediag.errors import UsageError
from moediag.importers.formats import ImportFormat
from moediag.io.outputs import check_output

if TYPE_CHECKING:
    from moediag.importers.base import ImportOptions, ImportResult


def __getattr__(name: str) -> Any:
    """The importers themselves load torch: import them on first use, so `moediag --help` stays fast."""
    if name == "IMPORTERS":
        from moediag.importers.registry import IMPORTERS

        return IMPORTERS
    if name in ("ImportOptions", "ImportResult"):
        from moediag.importers import base

        return getattr(base, name)
    raise AttributeError(name)


def parse_format(name: str | ImportFormat) -> ImportFormat:
    """``"sglang"`` -> :attr:`ImportFormat.SGLANG`; an unknown name is a :class:`UsageError`."""
    if isinstance(name, ImportFormat):
        return name
    try:
        return ImportFormat(str(name).strip().lower())
    except ValueError:
        known = ", ".join(f.value for f in ImportFormat)
        raise UsageError(f"unknown import format {name!r}; choose one of: {known}") from None


def import_routing(
    format: str | ImportFormat,
    src: str | os.PathLike[str] | list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    num_experts: int | None = None,
    top_k: int | None = None,
    score_function: str | None = None,
    layer_ids: list[int] | None = None,
    shard_tokens: int = 65_536,
    force: bool = False,
) -> ImportResult:
    """Convert ``src`` (a file, a folder, a glob, or a list of them) of ``format`` into a trace at ``out``.

    ``out`` ending in ``.safetensors`` is written as one file; anything else as a folder of shards (streamed).
    Nothing is left at ``out`` when the import fails. Raises :class:`~moediag.errors.MoediagError` subclasses.
    """
    from moediag.importers.base import ImportOptions, expand_source
    from moediag.importers.registry import IMPORTERS

    fmt = parse_format(format)
    options = ImportOptions(
        num_experts=num_experts,
        top_k=top_k,
        score_function=score_function,
        layer_ids=layer_ids,
        shard_tokens=shard_tokens,
    )
    srcs = src if isinstance(src, list) else [src]
    sources = [p for s in srcs for p in expand_source(s)]
    target = Path(os.fspath(out))
    # never onto a source nor anything in a source folder (the importer reads it), never a folder holding
    # one, never over a folder moediag did not write
    inputs: list[str | os.PathLike[str]] = [*sources, *(os.fspath(s) for s in srcs)]
    check_output(target, inputs, force=force, folder=target.suffix != ".safetensors")
    return IMPORTERS[fmt](sources, target, options)


__all__ = ["IMPORTERS", "ImportFormat", "ImportOptions", "ImportResult", "import_routing", "parse_format"]
