"""Decoders: one serving system's dump (a file, or one appended line) -> observations for the live stats.

Each decoder reuses its importer's parsing and validation (:mod:`moediag.importers`), one file or one
record at a time, so ``moediag watch`` accepts exactly what ``moediag import`` accepts and says the same
thing about what it rejects. An :class:`Observation` is what one record adds: per-token chosen experts
(``batches``, one :class:`~moediag.stats.LayerBatch` per layer) or expert counts (``counts``
``[steps, experts]`` per layer), and how many steps it covers.

========  ===============================================================  ===================================
format    files                                                            one step is
========  ===============================================================  ===================================
sglang    ``expert_distribution*.pt`` (stat, per_pass, per_token), CSV     a buffer slot / a forward pass
vllm      ``.npy .npz .pt .json`` whole; ``.jsonl`` followed line by line  a request
trtllm    ``rank{r}.safetensors`` (+ ``meta_info.json`` for the counts)   an iteration
megatron  ``router_trace_rank*.jsonl``, ``tokens_per_expert/rank*.jsonl``  a record (step x layer), a tpe row
trace     moediag v1 traces (``.safetensors``), e.g. flight-recorder dumps  a file
========  ===============================================================  ===================================
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moediag.errors import InvalidInputError, MissingMetadataError, UsageError
from moediag.stats import LayerBatch


class WatchFormat(str, enum.Enum):
    """What ``moediag watch --format`` follows."""

    SGLANG = "sglang"
    VLLM = "vllm"
    TRTLLM = "trtllm"
    MEGATRON = "megatron"
    TRACE = "trace"


@dataclass
class DecodeOptions:
    """Facts a dump may lack (the ``--num-experts``, ``--top-k``, ``--layers`` flags)."""

    num_experts: int | None = None
    top_k: int | None = None
    layer_ids: list[int] | None = None


@dataclass
class Observation:
    """What one record of a dump adds."""

    steps: int = 1
    step: int | None = None  # the dump's own step id (forward pass, iteration), when it has one
    batches: dict[int, LayerBatch] = field(default_factory=dict)
    counts: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [S, E] int64
    num_experts: int = 0
    top_k: int | None = None

    @property
    def tokens(self) -> int:
        """Tokens routed (per-token data), or assignments / top_k for counts when top_k is known."""
        if self.batches:
            return max(len(b) for b in self.batches.values())
        if self.counts and self.top_k:
            return max(int(c.sum()) for c in self.counts.values()) // self.top_k
        return 0


def ids_batch(ids: torch.Tensor, num_experts: int, index: torch.Tensor | None = None) -> LayerBatch:
    """A :class:`LayerBatch` of chosen expert ids ``[n, slots]`` (-1 = empty slot; trailing empty columns
    are dropped). ``index``: the tokens' indices (``arange(n)`` unless given; layers of one record share
    it)."""
    ids = ids.to(torch.int64)
    filled = ids >= 0
    if ids.shape[1] and bool(filled.any()):
        cols = torch.nonzero(filled.any(dim=0)).flatten()
        ids = ids[:, : int(cols.max()) + 1]
    n = ids.shape[0]
    if index is None:
        index = torch.arange(n, dtype=torch.int64)
    batch = LayerBatch(num_experts, max(ids.shape[1], 1), ids, ids[:, 0], index)
    batch.filled = bool((ids >= 0).all())
    return batch


class _Recent:
    """A bounded set of recently seen records, by digest (tensor-parallel duplicates arrive close together):
    at most ``capacity`` 20-byte digests, whatever the size of the records."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[tuple[Any, ...], None] = OrderedDict()

    def seen(self, kind: str, step: int, data: torch.Tensor) -> bool:
        key = (kind, step, hashlib.sha1(data.contiguous().numpy().tobytes()).digest())
        if key in self._keys:
            return True
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return False


class Decoder:
    """A format's decoder. ``wants``/``appendable`` classify file names; ``decode_file`` reads a complete
    file; ``decode_line`` one appended line. Both raise :class:`~moediag.errors.InvalidInputError` naming
    the file for malformed data and :class:`~moediag.errors.MissingMetadataError` when a flag is needed."""

    pattern: re.Pattern[str] = re.compile(r".*")
    lines: re.Pattern[str] | None = None
    #: decode_file yields observations as it reads (True) rather than after checking the whole file
    streams: bool = False

    def __init__(self, options: DecodeOptions) -> None:
        self.options = options

    def wants(self, path: Path) -> bool:
        return bool(self.pattern.fullmatch(path.name)) or self.appendable(path)

    def appendable(self, path: Path) -> bool:
        return self.lines is not None and bool(self.lines.fullmatch(path.name))

    def decode_file(self, path: Path) -> Iterator[Observation]:
        raise InvalidInputError(f"not a {type(self).__name__} file", path)

    def decode_line(self, path: Path, lineno: int, line: bytes) -> Iterator[Observation]:
        raise InvalidInputError(f"line {lineno}: not a {type(self).__name__} line", path)

    def _experts(self, found: int | None, path: Path, what: str) -> int:
        from moediag.importers.base import ImportOptions, require_num_experts

        return require_num_experts(found, ImportOptions(num_experts=self.options.num_experts), path, what)


class SglangDecoder(Decoder):
    """SGLang's expert distribution recorder: each dump file once complete."""

    pattern = re.compile(r"(expert_distribution.*\.(pt|csv))|(.*\.csv)")

    def __init__(self, options: DecodeOptions) -> None:
        super().__init__(options)
        self.recent = _Recent()

    def decode_file(self, path: Path) -> Iterator[Observation]:
        from moediag.importers import sglang_records
        from moediag.importers.base import ImportOptions, torch_load

        if path.suffix == ".csv":
            yield self._csv(path)
            return
        obj = torch_load(path)
        mode = sglang_records.dump_mode(obj, path)
        if mode == "stat":
            lc, _ = sglang_records.stat_counts(obj, path)
            e = self._experts(lc.shape[2], path, "logical_count")
            if lc.shape[0] == 0:
                return
            per_layer = lc.sum(dim=(0, 2))
            counts = {i: lc[:, i, :] for i in range(lc.shape[1]) if int(per_layer[i]) > 0}
            yield Observation(steps=lc.shape[0], counts=counts, num_experts=e, top_k=self.options.top_k)
            return
        p2l = sglang_records.physical_map(obj, path)
        e = sglang_records.num_logical(p2l, ImportOptions(num_experts=self.options.num_experts), path)
        if mode == "per_pass":
            for fp, _rank, gpc in sglang_records.pass_records(obj, p2l, path):
                if self.recent.seen("pass", fp, gpc):
                    continue  # tensor parallel: another rank's identical record
                logical = sglang_records.physical_to_logical_counts(gpc, p2l, e)
                per_layer = logical.sum(dim=1)
                counts = {i: logical[i][None] for i in range(logical.shape[0]) if int(per_layer[i]) > 0}
                if counts:
                    yield Observation(step=fp, counts=counts, num_experts=e, top_k=self.options.top_k)
            return
        for j, rec in enumerate(obj["records"]):
            topk = sglang_records.record_topk(rec, p2l, path, f"record {j}")
            if topk.shape[1] == 0:
                continue
            fp = int(rec.get("forward_pass_id", j))
            if self.recent.seen("token", fp, topk):
                continue
            batches: dict[int, LayerBatch] = {}
            index = torch.arange(topk.shape[1], dtype=torch.int64)
            routed = (topk >= 0).flatten(1).any(dim=1).tolist()
            for layer in range(topk.shape[0]):
                if not routed[layer]:
                    continue  # a dense layer: every slot empty
                logical = sglang_records.logical_ids(topk[layer], p2l[layer])
                batches[layer] = ids_batch(logical, e, index)
            if batches:
                k = max(b.top_k for b in batches.values())
                yield Observation(step=fp, batches=batches, num_experts=e, top_k=k)

    def _csv(self, path: Path) -> Observation:
        from moediag.importers import sglang_records

        table = sglang_records.read_csv(path)
        e = self.options.num_experts
        if e is None:
            raise MissingMetadataError(
                "number of experts unknown: the CSV only lists experts that received tokens; pass "
                "--num-experts",
                path,
            )
        counts: dict[int, torch.Tensor] = {}
        for (layer, expert), c in table.items():
            if expert >= e:
                raise InvalidInputError(f"expert id {expert} is out of range for --num-experts {e}", path)
            counts.setdefault(layer, torch.zeros(1, e, dtype=torch.int64))[0, expert] += c
        return Observation(counts=counts, num_experts=e, top_k=self.options.top_k)


class VllmDecoder(Decoder):
    """vLLM routed experts: whole files, and server responses appended to ``.jsonl`` files."""

    pattern = re.compile(r".*\.(npy|npz|pt|pth|json)")
    lines = re.compile(r".*\.jsonl")

    def __init__(self, options: DecodeOptions) -> None:
        super().__init__(options)
        if options.num_experts is None:
            raise UsageError("--format vllm needs --num-experts: vLLM's routed experts do not record it")

    def _observe(self, routed: torch.Tensor, path: Path, where: str) -> Observation | None:
        from moediag.importers.base import check_ids
        from moediag.importers.vllm import is_placeholder

        if routed.shape[0] == 0:
            return None
        e = self.options.num_experts
        assert e is not None
        ids = self.options.layer_ids
        n_layers = routed.shape[1]
        if ids is not None and len(ids) != n_layers:
            raise InvalidInputError(
                f"{where}: routed_experts has {n_layers} layers but --layers names {len(ids)}", path
            )
        batches: dict[int, LayerBatch] = {}
        for i in range(n_layers):
            slab = routed[:, i, :]
            if is_placeholder(slab):
                continue
            check_ids(slab, e, path, where)
            batches[ids[i] if ids is not None else i] = ids_batch(slab, e)
        return Observation(batches=batches, num_experts=e, top_k=routed.shape[2]) if batches else None

    def decode_file(self, path: Path) -> Iterator[Observation]:
        from moediag.importers.vllm import requests

        for req in requests(path):
            obs = self._observe(req.routed, path, req.where)
            if obs is not None:
                yield obs

    def decode_line(self, path: Path, lineno: int, line: bytes) -> Iterator[Observation]:
        from moediag.importers.megatron_records import parse_line
        from moediag.importers.vllm import requests_from_json

        obj = parse_line(line, path, lineno)
        if obj is None:
            return
        for req in requests_from_json(obj, path, f"line {lineno}"):
            o = self._observe(req.routed, path, req.where)
            if o is not None:
                yield o


class TrtllmDecoder(Decoder):
    """TensorRT-LLM expert statistics: each ``rank{r}.safetensors`` once complete."""

    pattern = re.compile(r"rank(\d+)\.safetensors")

    def decode_file(self, path: Path) -> Iterator[Observation]:
        from moediag.importers.trtllm import rank_counts, read_meta

        meta_path = path.parent / "meta_info.json"
        meta = read_meta(meta_path) if meta_path.is_file() else {}
        e = self._experts(meta.get("num_experts"), path, "no meta_info.json beside the rank file")
        top_k = meta.get("num_experts_per_token", self.options.top_k)
        by_iter: dict[int, dict[int, torch.Tensor]] = {}
        for (it, layer), counts in rank_counts(path, e).items():
            by_iter.setdefault(it, {})[layer] = counts[None]
        for it in sorted(by_iter):
            yield Observation(step=it, counts=by_iter[it], num_experts=e, top_k=top_k)


class MegatronDecoder(Decoder):
    """Megatron-Core's router traces and tokens-per-expert logs, followed line by line."""

    pattern = re.compile(r"$^")
    lines = re.compile(r"(router_trace_rank\d+.*\.jsonl)|(rank\d+.*\.jsonl)")

    def decode_line(self, path: Path, lineno: int, line: bytes) -> Iterator[Observation]:
        from moediag.importers.megatron_records import int_field, parse_line, top_indices, tpe_rows

        rec = parse_line(line, path, lineno)
        if rec is None or rec.get("block", "decoder") != "decoder":
            return  # blank, or an MTP record (left out, as the importer does)
        layer = int_field(rec, "layer", path, lineno)
        if "top_indices" in rec:
            shape = rec.get("logit_shape")
            found = int(shape[1]) if isinstance(shape, list) and len(shape) == 2 else None
            e = self._experts(found, path, "the router trace has no logit_shape")
            ids = top_indices(rec, path, lineno, e)
            step = int_field(rec, "step", path, lineno)
            if ids.shape[0] == 0:
                return
            yield Observation(
                step=step, batches={layer: ids_batch(ids, e)}, num_experts=e, top_k=ids.shape[1]
            )
        elif "tpe" in rec:
            rows = tpe_rows(rec, path, lineno)
            e = self._experts(rows.shape[1], path, "tpe rows")
            if rows.shape[1] != e:
                raise InvalidInputError(
                    f"line {lineno}: tpe rows have {rows.shape[1]} experts, not {e}", path
                )
            step = int_field(rec, "iter", path, lineno)
            yield Observation(
                steps=rows.shape[0], step=step, counts={layer: rows}, num_experts=e, top_k=self.options.top_k
            )
        else:
            raise InvalidInputError(
                f"line {lineno}: neither a router-trace nor a tokens-per-expert record", path
            )


class TraceDecoder(Decoder):
    """moediag's own v1 traces: each ``.safetensors`` file once complete (one step per file), read chunk
    by chunk (one observation per chunk, so memory is bounded by a chunk)."""

    pattern = re.compile(r".*\.safetensors")
    streams = True

    def decode_file(self, path: Path) -> Iterator[Observation]:
        from moediag.analysis import chunk_mask, layer_batch
        from moediag.trace import open_trace

        trace = open_trace(path)
        steps = 1
        counts: dict[int, torch.Tensor] = {}
        for layer, info in sorted(trace.layers.items()):
            if info.count_only:
                counts[layer] = trace.expert_counts(layer).sum(0, keepdim=True)
        first = next(iter(trace.layers.values()), None)
        if first is None:
            return
        if counts:
            yield Observation(
                steps=steps, counts=counts, num_experts=first.num_experts, top_k=first.spec.top_k
            )
            steps = 0
        per_token = [layer for layer, info in sorted(trace.layers.items()) if not info.count_only]
        if not per_token:
            return
        for chunk in trace.iter_chunks():
            valid = chunk_mask(chunk)
            batches: dict[int, LayerBatch] = {}
            for layer in per_token:
                info = trace.layers[layer]
                bias = trace.selection_bias(layer, chunk.shard_index)
                batches[layer], _ = layer_batch(chunk, info, bias, valid)
            yield Observation(
                steps=steps, batches=batches, num_experts=first.num_experts, top_k=first.spec.top_k
            )
            steps = 0


DECODERS: dict[WatchFormat, type[Decoder]] = {
    WatchFormat.SGLANG: SglangDecoder,
    WatchFormat.VLLM: VllmDecoder,
    WatchFormat.TRTLLM: TrtllmDecoder,
    WatchFormat.MEGATRON: MegatronDecoder,
    WatchFormat.TRACE: TraceDecoder,
}

if set(DECODERS) != set(WatchFormat):  # pragma: no cover
    raise RuntimeError("every WatchFormat needs a decoder")


def parse_watch_format(name: str | WatchFormat) -> WatchFormat:
    if isinstance(name, WatchFormat):
        return name
    try:
        return WatchFormat(str(name).strip().lower())
    except ValueError:
        known = ", ".join(f.value for f in WatchFormat)
        raise UsageError(f"unknown watch format {name!r}; choose one of: {known}") from None


def make_decoder(fmt: str | WatchFormat, options: DecodeOptions | None = None) -> Decoder:
    return DECODERS[parse_watch_format(fmt)](options or DecodeOptions())
