"""Reading v1 traces: validation at open (headers only), then token chunks with bounded memory.

A trace is one ``.safetensors`` file or a folder of them (shards, concatenated along tokens in name order).
Opening reads and validates every shard's header; no tensor data is read until chunks are asked for.
Each chunk reads only the rows it covers, one tensor at a time, by byte range (no memory map).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from moediag.errors import InvalidInputError, MissingMetadataError
from moediag.io.safetensors_file import FLOAT_DTYPES, INT_DTYPES, SafetensorsFile
from moediag.trace.schema import (
    LAYER_RE,
    LAYER_TENSORS,
    MAX_EXPERTS,
    PER_TOKEN_LAYER_TENSORS,
    TOKEN_RE,
    TOKEN_TENSORS,
    RoutingSpec,
    TraceMeta,
    parse_metadata,
)

_DTYPE_FAMILIES = {"float": FLOAT_DTYPES, "int": INT_DTYPES, "bool": {"BOOL", "U8"}}


@dataclass
class LayerInfo:
    """What a trace holds for one MoE layer, and how that layer routes."""

    layer: int
    spec: RoutingSpec
    kinds: frozenset[str]

    @property
    def count_only(self) -> bool:
        return "expert_counts" in self.kinds

    @property
    def has_logits(self) -> bool:
        return "router_logits" in self.kinds

    @property
    def has_topk(self) -> bool:
        return "topk_ids" in self.kinds

    @property
    def num_experts(self) -> int:
        assert self.spec.num_experts is not None
        return self.spec.num_experts


@dataclass
class Chunk:
    """Consecutive tokens ``[start, stop)`` of a trace, all within one shard. Tensors are read lazily."""

    trace: Trace
    shard_index: int
    rows: tuple[int, int]
    start: int
    _cache: dict[str, torch.Tensor | None] = field(default_factory=dict)

    @property
    def stop(self) -> int:
        return self.start + self.rows[1] - self.rows[0]

    def __len__(self) -> int:
        return self.rows[1] - self.rows[0]

    def _read(self, name: str) -> torch.Tensor | None:
        shard = self.trace.shards[self.shard_index]
        if name not in shard.tensors:
            return None
        return shard.read(name, self.rows)

    def token(self, name: str) -> torch.Tensor | None:
        """A ``tokens.*`` field for this chunk (cached: these are one value per token)."""
        key = f"tokens.{name}"
        if key not in self._cache:
            self._cache[key] = self._read(key)
        return self._cache[key]

    def layer_tensor(self, layer: int, kind: str) -> torch.Tensor | None:
        """``layers.L.kind`` rows for this chunk, read on demand and not cached (memory stays bounded)."""
        return self._read(f"layers.{layer}.{kind}")

    @property
    def index(self) -> torch.Tensor:
        """Global token index of each row."""
        return torch.arange(self.start, self.stop, dtype=torch.int64)


def _shard_paths(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".safetensors" and p.is_file())
        if not files:
            raise InvalidInputError("empty trace: folder has no .safetensors shards", path)
        return files
    if not path.exists():
        raise InvalidInputError("no such file or folder", path)
    return [path]


class Trace:
    """An opened, validated v1 trace.

    ``overrides`` supplies routing facts the file lacks (or corrects its metadata): the CLI maps
    ``--num-experts``, ``--top-k`` and ``--score-function`` onto it. Tensors stay the authority.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        overrides: RoutingSpec | None = None,
        files: list[str | os.PathLike[str]] | None = None,
    ) -> None:
        self.path = Path(path)
        # ``files``: open only these shards of the trace at ``path`` (a worker's part, moediag.analysis.units)
        paths = _shard_paths(self.path) if files is None else [Path(f) for f in files]
        self.shards = [SafetensorsFile(p) for p in paths]
        self.overrides = overrides
        self.meta = self._read_meta(overrides)
        self.token_fields: frozenset[str] = frozenset()
        self.shard_tokens: list[int] = []
        self.layers: dict[int, LayerInfo] = {}
        self._validate()

    # -- validation ----------------------------------------------------------------------------
    def _read_meta(self, overrides: RoutingSpec | None) -> TraceMeta:
        first = self.shards[0]
        try:
            meta = parse_metadata(first.metadata)
        except ValueError as exc:
            raise InvalidInputError(str(exc), first.path) from None
        for shard in self.shards[1:]:
            try:
                other = parse_metadata(shard.metadata)
            except ValueError as exc:
                raise InvalidInputError(str(exc), shard.path) from None
            if other.routing != meta.routing or other.layer_overrides != meta.layer_overrides:
                raise InvalidInputError(
                    f"routing metadata differs from the first shard {first.path.name}", shard.path
                )
        if overrides is not None:
            given = {k: v for k, v in vars(overrides).items() if v is not None}
            meta.routing = replace(meta.routing, **given)
            for layer_over in meta.layer_overrides.values():
                for k in given:
                    layer_over.pop(k, None)
        return meta

    def _validate(self) -> None:
        names0 = set(self.shards[0].tensors)
        layer_kinds: dict[int, set[str]] = {}
        tokens_fields: set[str] = set()
        for name in sorted(names0):
            m = LAYER_RE.match(name)
            t = TOKEN_RE.match(name)
            if m and m.group(2) in LAYER_TENSORS:
                layer_kinds.setdefault(int(m.group(1)), set()).add(m.group(2))
            elif t and t.group(1) in TOKEN_TENSORS:
                tokens_fields.add(t.group(1))
            else:
                raise InvalidInputError(
                    f"unknown tensor {name!r} (trace v1 has layers.L.<{'|'.join(LAYER_TENSORS)}> and "
                    f"tokens.<{'|'.join(TOKEN_TENSORS)}>)",
                    self.shards[0].path,
                )
        if not layer_kinds:
            raise InvalidInputError("empty trace: no layers.L.* tensors", self.shards[0].path)
        for shard in self.shards[1:]:
            if set(shard.tensors) != names0:
                diff = sorted(set(shard.tensors) ^ names0)[:3]
                raise InvalidInputError(
                    f"shard holds different tensors from {self.shards[0].path.name} (e.g. {', '.join(diff)})",
                    shard.path,
                )
        self.token_fields = frozenset(tokens_fields)
        for shard in self.shards:
            self.shard_tokens.append(self._validate_shard(shard, layer_kinds))
        for layer, kinds in sorted(layer_kinds.items()):
            self.layers[layer] = LayerInfo(layer, self._resolve_spec(layer, kinds), frozenset(kinds))
        if self.has_per_token_layers and self.num_tokens == 0:
            raise InvalidInputError("empty trace: 0 tokens", self.path)

    def _validate_shard(self, shard: SafetensorsFile, layer_kinds: dict[int, set[str]]) -> int:
        """Dtype and shape checks of one shard; returns its token count."""
        n_tokens: int | None = None
        token_owner = ""
        for name, info in shard.tensors.items():
            m = LAYER_RE.match(name)
            kind = m.group(2) if m else TOKEN_RE.match(name).group(1)  # type: ignore[union-attr]
            family, rank = LAYER_TENSORS[kind] if m else (TOKEN_TENSORS[kind], 1)
            if info.dtype not in _DTYPE_FAMILIES[family]:
                raise InvalidInputError(
                    f"tensor {name!r} has dtype {info.dtype}; expected a {family} dtype", shard.path
                )
            if len(info.shape) != rank:
                raise InvalidInputError(
                    f"tensor {name!r} has shape {list(info.shape)}; expected {rank} dimensions", shard.path
                )
            if (m and kind in PER_TOKEN_LAYER_TENSORS) or not m:
                if n_tokens is None:
                    n_tokens, token_owner = info.shape[0], name
                elif info.shape[0] != n_tokens:
                    raise InvalidInputError(
                        f"token counts differ: {name!r} has {info.shape[0]} rows but {token_owner!r} has "
                        f"{n_tokens}",
                        shard.path,
                    )
        for layer, kinds in layer_kinds.items():
            if "expert_counts" in kinds and kinds & set(PER_TOKEN_LAYER_TENSORS):
                raise InvalidInputError(
                    f"layer {layer} has both expert_counts and per-token tensors; "
                    "a layer is one or the other",
                    shard.path,
                )
            if not kinds & {"router_logits", "topk_ids", "expert_counts"}:
                raise InvalidInputError(
                    f"layer {layer} has no router_logits, topk_ids or expert_counts", shard.path
                )
            if "topk_weights" in kinds:
                ids = shard.tensors[f"layers.{layer}.topk_ids"].shape if "topk_ids" in kinds else None
                w = shard.tensors[f"layers.{layer}.topk_weights"].shape
                if ids != w:
                    raise InvalidInputError(
                        f"layers.{layer}.topk_weights has shape {list(w)} but topk_ids has "
                        f"{None if ids is None else list(ids)}",
                        shard.path,
                    )
        return n_tokens or 0

    def _resolve_spec(self, layer: int, kinds: set[str]) -> RoutingSpec:
        spec = self.meta.for_layer(layer)
        shard = self.shards[0]
        where = shard.path

        def width(kind: str) -> int | None:
            info = shard.tensors.get(f"layers.{layer}.{kind}")
            return None if info is None else info.shape[-1]

        widths = {k: width(k) for k in ("router_logits", "expert_counts", "selection_bias") if k in kinds}
        experts = set(widths.values())
        if len(experts) > 1:
            raise InvalidInputError(
                f"layer {layer}: tensors disagree on the number of experts {widths}", where
            )
        if experts:
            e = experts.pop()
            if spec.num_experts is not None and spec.num_experts != e:
                raise InvalidInputError(
                    f"layer {layer}: tensors have {e} experts but metadata says "
                    f"num_experts={spec.num_experts}",
                    where,
                )
            spec.num_experts = e
        if spec.num_experts is None:
            raise MissingMetadataError(
                f"layer {layer}: number of experts unknown (no router_logits and no num_experts metadata); "
                "pass --num-experts",
                where,
            )
        if spec.num_experts < 1:
            raise InvalidInputError(f"layer {layer}: num_experts must be positive", where)
        if spec.num_experts > MAX_EXPERTS:
            raise InvalidInputError(
                f"layer {layer}: {spec.num_experts} experts exceeds the limit of {MAX_EXPERTS}", where
            )
        k = width("topk_ids")
        if k is not None:
            if spec.top_k is not None and spec.top_k != k:
                raise InvalidInputError(
                    f"layer {layer}: topk_ids has {k} columns but top_k={spec.top_k}", where
                )
            spec.top_k = k
        if "expert_counts" not in kinds:
            if spec.top_k is None:
                raise MissingMetadataError(
                    f"layer {layer}: top-k unknown (no topk_ids and no top_k metadata); pass --top-k", where
                )
            if not 1 <= spec.top_k <= spec.num_experts:
                raise InvalidInputError(
                    f"layer {layer}: top_k={spec.top_k} must be between 1 and num_experts={spec.num_experts}",
                    where,
                )
            if "router_logits" in kinds and spec.score_function is None:
                raise MissingMetadataError(
                    f"layer {layer}: score function unknown (no score_function metadata); pass "
                    "--score-function softmax|sigmoid|topk_softmax",
                    where,
                )
        if (spec.n_group is None) != (spec.topk_group is None):
            raise InvalidInputError(f"layer {layer}: n_group and topk_group must be given together", where)
        if spec.n_group is not None and spec.topk_group is not None:
            if spec.n_group < 1 or spec.num_experts % spec.n_group:
                raise InvalidInputError(
                    f"layer {layer}: n_group={spec.n_group} does not divide num_experts={spec.num_experts}",
                    where,
                )
            if not 1 <= spec.topk_group <= spec.n_group:
                raise InvalidInputError(f"layer {layer}: topk_group must be in 1..n_group", where)
        return spec

    # -- access --------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return sum(self.shard_tokens)

    @property
    def has_per_token_layers(self) -> bool:
        return any(not info.count_only for info in self.layers.values())

    @property
    def num_experts_max(self) -> int:
        return max(info.num_experts for info in self.layers.values())

    def default_chunk_tokens(self) -> int:
        """About 8 MB per [tokens, experts] float32 tensor: small enough to stay in cache between the
        passes the statistics make (measured fastest on the benchmark: docs/benchmarks.md)."""
        return int(min(262_144, max(4_096, (1 << 21) // max(1, self.num_experts_max))))

    def iter_chunks(self, chunk_tokens: int | None = None) -> Iterator[Chunk]:
        """Token chunks in trace order; a chunk never spans two shards."""
        size = chunk_tokens or self.default_chunk_tokens()
        if size < 1:
            raise ValueError("chunk_tokens must be positive")
        start = 0
        for i, n in enumerate(self.shard_tokens):
            for a in range(0, n, size):
                b = min(n, a + size)
                yield Chunk(self, i, (a, b), start + a)
            start += n

    def selection_bias(self, layer: int, shard_index: int = 0) -> torch.Tensor | None:
        """``layers.L.selection_bias`` of one shard (float32 [E]).

        Shards may hold different biases (DeepSeek-V3's bias moves during training): tokens are routed
        with the bias of the shard they are in.
        """
        name = f"layers.{layer}.selection_bias"
        shard = self.shards[shard_index]
        if name not in shard.tensors:
            return None
        bias = shard.read(name).float()
        if not bool(torch.isfinite(bias).all()):
            raise InvalidInputError(f"{name} holds NaN or Inf", shard.path)
        return bias

    def expert_counts(self, layer: int) -> torch.Tensor:
        """``layers.L.expert_counts`` of all shards, stacked along steps: int64 [S, E]."""
        name = f"layers.{layer}.expert_counts"
        parts = [shard.read(name).to(torch.int64) for shard in self.shards]
        counts = (
            torch.cat(parts) if parts else torch.zeros(0, self.layers[layer].num_experts, dtype=torch.int64)
        )
        if (counts < 0).any():
            raise InvalidInputError(f"{name} has negative counts", self.path)
        return counts

    def file_for(self, chunk: Chunk) -> Path:
        return self.shards[chunk.shard_index].path


def check_topk_ids(
    ids: torch.Tensor, num_experts: int, keep: torch.Tensor, layer: int, start: int, where: Path
) -> None:
    """The value rules of ``layers.L.topk_ids`` (int64 [n, k]): ids in 0..E-1 or -1 for an empty slot,
    and no expert twice in one kept token's row. InvalidInputError naming the first offending token."""
    e = num_experts
    bad = (ids < -1) | (ids >= e)
    if bool(bad.any()):
        row = int(torch.nonzero(bad.any(dim=1))[0])
        value = int(ids[row][bad[row]][0])
        raise InvalidInputError(
            f"layers.{layer}.topk_ids: expert id {value} at token {start + row} is outside "
            f"0..{e - 1} (num_experts={e})",
            where,
        )
    if ids.numel() and bool(keep.any()) and int(ids.max()) >= 0:
        dup = ids.sort(dim=1).values
        repeated = (dup[:, 1:] == dup[:, :-1]) & (dup[:, 1:] >= 0)
        if bool((repeated.any(dim=1) & keep).any()):
            row = int(torch.nonzero(repeated.any(dim=1) & keep)[0])
            raise InvalidInputError(
                f"layers.{layer}.topk_ids: token {start + row} lists the same expert twice", where
            )


def validate_trace(path: str | os.PathLike[str]) -> Trace:
    """Everything the reader and the analysis check, without analysing: headers and metadata (opening),
    then every chunk's ``topk_ids`` values and ``expert_counts`` signs. Importers run it on what they are
    about to publish, so they never write a trace that ``inspect`` would refuse."""
    trace = Trace(path)
    for chunk in trace.iter_chunks():
        keep = chunk.token("mask")
        for layer, info in trace.layers.items():
            if not info.has_topk:
                continue
            ids = chunk.layer_tensor(layer, "topk_ids")
            assert ids is not None
            mask = torch.ones(len(chunk), dtype=torch.bool) if keep is None else keep.bool()
            check_topk_ids(
                ids.to(torch.int64), info.num_experts, mask, layer, chunk.start, trace.file_for(chunk)
            )
    for layer, info in trace.layers.items():
        if info.count_only:
            trace.expert_counts(layer)
    return trace


def open_trace(path: str | os.PathLike[str], *, overrides: RoutingSpec | None = None) -> Trace:
    """Open and validate a trace (file or folder of shards)."""
    return Trace(path, overrides=overrides)
