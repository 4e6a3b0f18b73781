"""What every importer shares: options, the result, safe loading, source discovery, the output sink.

An importer reads another system's routing dump and writes a v1 trace. It produces either per-token data
(``layers.L.topk_ids`` and friends, token fields) or a counts-only summary (``layers.L.expert_counts``
[steps, experts]); :class:`ImportResult` says which. Output goes through :class:`TraceSink`, which writes
nothing under the target name until the import succeeded, so a failed import leaves no partial trace.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from moediag.errors import InvalidInputError, MissingMetadataError, UsageError
from moediag.io.paths import require_regular
from moediag.trace.schema import SCORE_FUNCTIONS, build_metadata
from moediag.trace.writer import TraceWriter, write_trace


@dataclass
class ImportOptions:
    """Facts a source may lack, supplied by the caller (the CLI maps flags onto these)."""

    num_experts: int | None = None
    top_k: int | None = None
    score_function: str | None = None
    #: the model's layer index of each MoE layer, in the order the source lists them (sources that
    #: number MoE layers 0, 1, 2, ... without dense layers: hf, vllm)
    layer_ids: list[int] | None = None
    #: tokens per shard when the output is a folder
    shard_tokens: int = 65_536

    def __post_init__(self) -> None:
        if self.num_experts is not None and self.num_experts < 1:
            raise UsageError(f"--num-experts must be positive, got {self.num_experts}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be positive, got {self.top_k}")
        if self.score_function is not None and self.score_function not in SCORE_FUNCTIONS:
            raise UsageError(
                f"--score-function must be one of {', '.join(SCORE_FUNCTIONS)}, got {self.score_function!r}"
            )
        ids = self.layer_ids
        if ids is not None and (len(set(ids)) != len(ids) or any(i < 0 for i in ids)):
            raise UsageError(f"--layers must be distinct non-negative integers, got {self.layer_ids}")


@dataclass
class ImportResult:
    """What an import produced."""

    format: str
    output: Path
    #: True: per-token routing (topk_ids, maybe logits); False: counts only (expert_counts)
    per_token: bool
    layers: list[int]
    num_experts: int
    top_k: int | None
    #: tokens written (per-token imports) or tokens counted (counts-only: sum of counts / top_k when known)
    num_tokens: int
    #: steps of expert_counts (counts-only imports)
    num_steps: int = 0
    files: list[Path] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    #: what the importer assumed or dropped, in words (dense layers left out, duplicate ranks, ...)
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "per-token" if self.per_token else "counts-only"


# -- loading -------------------------------------------------------------------------------------


def torch_load(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` only; any failure becomes one line naming the file."""
    if path.exists() and not path.is_dir():
        require_regular(path, "torch.save file")  # a FIFO would block torch.load forever
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(
            "refused to load: the pickle holds objects that torch.load(weights_only=True) does not allow "
            f"({first[:160]}); moediag never unpickles arbitrary code",
            path,
        ) from None
    except FileNotFoundError:
        raise InvalidInputError("no such file", path) from None
    except IsADirectoryError:
        raise InvalidInputError("is a directory, expected a torch.save file", path) from None
    except Exception as exc:  # torch.load raises KeyError, RuntimeError, ... on files it can't parse
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInputError(
            f"not a readable torch.save file ({type(exc).__name__}: {msg[:160]})", path
        ) from None


def int_tensor(obj: Any, path: Path, what: str) -> torch.Tensor:
    """An int64 tensor from nested lists of integers; floats, booleans and strings are refused (one line
    naming ``path``), never truncated into expert ids."""
    try:
        t = torch.tensor(obj)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise InvalidInputError(f"{what} is not a list of integers", path) from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InvalidInputError(
            f"{what} holds {'booleans' if t.dtype == torch.bool else 'fractional numbers'}, "
            "expected integers",
            path,
        )
    return t.to(torch.int64)


_GLOB_CHARS = re.compile(r"[*?\[]")


def expand_source(src: str | os.PathLike[str]) -> list[Path]:
    """A file, a folder (returned as itself), or a glob pattern (sorted matches)."""
    s = os.fspath(src)
    p = Path(s)
    if p.exists():
        if not p.is_dir():
            require_regular(p)  # FIFOs and devices are refused before anything opens them
        return [p]
    if _GLOB_CHARS.search(s):
        matches = sorted(Path(m) for m in glob.glob(s))
        if not matches:
            raise InvalidInputError("no files match this pattern", s)
        return matches
    raise InvalidInputError("no such file or folder", s)


def files_in(
    paths: Iterable[Path], pattern: str, *, required: bool = True, where: Path | None = None
) -> list[Path]:
    """Expand folders to the files in them whose names match ``pattern`` (a regex, full match)."""
    rx = re.compile(pattern)
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(c for c in p.iterdir() if c.is_file() and rx.fullmatch(c.name)))
        else:
            out.append(p)
    if required and not out:
        raise InvalidInputError(
            f"no input files (expected names matching {pattern})", where or next(iter(paths))
        )
    return out


_RANK_RE = re.compile(r"rank[_-]?(\d+)")


def rank_of(path: Path, default: int | None = None) -> int | None:
    """The rank number in a file name (``rank3``, ``_rank3.``), or ``default``."""
    m = _RANK_RE.search(path.name)
    return int(m.group(1)) if m else default


def natural_key(path: Path) -> list[Any]:
    """Sort ``rank2`` before ``rank10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def resolve_layer_ids(n: int, options: ImportOptions, where: Path) -> list[int]:
    """Model layer index of each of ``n`` MoE layers listed in order (``--layers`` or 0..n-1)."""
    if options.layer_ids is None:
        return list(range(n))
    if len(options.layer_ids) != n:
        raise UsageError(f"--layers names {len(options.layer_ids)} layers but the source has {n} MoE layers")
    return list(options.layer_ids)


def require_num_experts(found: int | None, options: ImportOptions, where: Path, what: str) -> int:
    """The expert count: the flag wins when given, else what the source says; neither is an error."""
    if options.num_experts is not None:
        if found is not None and found != options.num_experts:
            raise InvalidInputError(
                f"--num-experts {options.num_experts} contradicts the source, which has {found} "
                f"experts ({what})",
                where,
            )
        return options.num_experts
    if found is None:
        raise MissingMetadataError(f"number of experts unknown: {what}; pass --num-experts", where)
    return found


def check_ids(ids: torch.Tensor, num_experts: int, where: Path, context: str) -> None:
    """Expert ids must be -1 (empty slot) or in ``[0, num_experts)``."""
    if ids.numel() == 0:
        return
    hi = int(ids.max())
    lo = int(ids.min())
    if hi >= num_experts:
        raise InvalidInputError(
            f"{context}: expert id {hi} is out of range for {num_experts} experts "
            "(pass --num-experts if the count is wrong)",
            where,
        )
    if lo < -1:
        raise InvalidInputError(f"{context}: negative expert id {lo} (only -1 marks an empty slot)", where)


# -- output --------------------------------------------------------------------------------------


def trace_metadata(
    fmt: str,
    *,
    num_experts: int,
    top_k: int | None,
    score_function: str | None,
    files: list[Path],
    notes: list[str],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    info: dict[str, Any] = {
        "source_format": fmt,
        "source_files": [p.name for p in files][:64],
        "import_notes": notes,
    }
    info.update(extra or {})
    return build_metadata(num_experts=num_experts, top_k=top_k, score_function=score_function, extra=info)


class TraceSink:
    """Where an importer writes: one ``.safetensors`` file (held in memory, written at close) or a folder of
    shards (streamed through :class:`~moediag.trace.writer.TraceWriter`). Use as a context manager: on an
    exception nothing is left under the target name.

    Metadata is given at :meth:`open` time (per-token, folder) or :meth:`close` time, because importers often
    learn facts (top-k, dropped layers) while reading.
    """

    def __init__(self, path: str | os.PathLike[str], *, shard_tokens: int = 65_536) -> None:
        self.path = Path(path)
        self.single_file = self.path.suffix == ".safetensors"
        self.shard_tokens = shard_tokens
        self._writer: TraceWriter | None = None
        self._batches: dict[str, list[torch.Tensor]] = {}
        self._constants: dict[str, torch.Tensor] = {}
        self._metadata: dict[str, str] | None = None
        self.tokens = 0
        self._done = False
        if self.path.is_dir() and self.single_file:
            raise UsageError(f"output {self.path} is a folder; pass a path that does not end in .safetensors")
        if self.path.exists() and not self.path.is_dir() and not self.single_file:
            raise UsageError(
                f"output {self.path} is an existing file; a folder trace needs a folder path "
                "(or name the output *.safetensors for a single file)"
            )

    def begin(self, metadata: Mapping[str, str]) -> None:
        """Fix the metadata before streaming tokens (needed for folder output)."""
        self._metadata = dict(metadata)
        if not self.single_file and self._writer is None:
            self._writer = TraceWriter(
                self.path, self._metadata, shard_tokens=self.shard_tokens, validate=True
            )

    def add(self, tensors: Mapping[str, torch.Tensor]) -> None:
        n = next(iter(tensors.values())).shape[0]
        if self._writer is not None:
            self._writer.add(tensors)
        else:
            if self._metadata is None and not self.single_file:
                raise RuntimeError("TraceSink.begin() must be called before add() for folder output")
            for k, v in tensors.items():
                self._batches.setdefault(k, []).append(v.detach().cpu())
        self.tokens += n

    def set_constant(self, name: str, tensor: torch.Tensor) -> None:
        self._constants[name] = tensor.detach().cpu().contiguous()
        if self._writer is not None:
            self._writer.set_constant(name, tensor)

    def close(self, metadata: Mapping[str, str] | None = None) -> Path:
        if metadata is not None:
            if self._writer is not None:
                raise RuntimeError("metadata of a streamed folder trace is fixed at begin()")
            self._metadata = dict(metadata)
        if self._metadata is None:
            raise RuntimeError("no metadata for the trace")
        if self.single_file:
            tensors = {k: torch.cat(v) for k, v in self._batches.items()}
            tensors.update(self._constants)
            write_trace(self.path, tensors, self._metadata, validate=True)
        else:
            if self._writer is None:
                self._writer = TraceWriter(
                    self.path, self._metadata, shard_tokens=self.shard_tokens, validate=True
                )
                for k, v in self._constants.items():
                    self._writer.set_constant(k, v)
                if self._batches:
                    self._writer.add({k: torch.cat(v) for k, v in self._batches.items()})
            self._writer.close()
        self._done = True
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        self._batches.clear()
        self._done = True

    def __enter__(self) -> TraceSink:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None or not self._done:
            self.abort()


def write_counts(
    out: str | os.PathLike[str], counts: Mapping[int, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    """A counts-only trace: ``layers.L.expert_counts`` int64 [steps, experts] for each layer."""
    with TraceSink(out) as sink:
        for layer, c in sorted(counts.items()):
            sink.set_constant(f"layers.{layer}.expert_counts", c.to(torch.int64))
        return sink.close(metadata)


def finish_per_token(
    sink: TraceSink,
    fmt: str,
    out: Path,
    *,
    layers: list[int],
    num_experts: int,
    top_k: int | None,
    files: list[Path],
    notes: list[str],
    ranks: Iterable[int] = (),
) -> ImportResult:
    """Close a per-token import's sink and describe what it wrote (``num_tokens`` = tokens added)."""
    sink.close()
    return ImportResult(
        format=fmt,
        output=out,
        per_token=True,
        layers=layers,
        num_experts=num_experts,
        top_k=top_k,
        num_tokens=sink.tokens,
        files=files,
        ranks=sorted(ranks),
        notes=notes,
    )


def import_counts(
    fmt: str,
    out: Path,
    counts: Mapping[int, torch.Tensor],
    *,
    num_experts: int,
    top_k: int | None,
    score_function: str | None,
    files: list[Path],
    notes: list[str],
    ranks: Iterable[int],
    num_tokens: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> ImportResult:
    """Write a counts-only trace (:func:`write_counts`, one [steps, experts] tensor per layer, every layer
    the same number of steps) with the import's metadata, and describe it."""
    meta = trace_metadata(
        fmt,
        num_experts=num_experts,
        top_k=top_k,
        score_function=score_function,
        files=files,
        notes=notes,
        extra=extra,
    )
    write_counts(out, counts, meta)
    layers = sorted(counts)
    return ImportResult(
        format=fmt,
        output=out,
        per_token=False,
        layers=layers,
        num_experts=num_experts,
        top_k=top_k,
        num_tokens=num_tokens,
        num_steps=counts[layers[0]].shape[0],
        files=files,
        ranks=sorted(ranks),
        notes=notes,
    )
