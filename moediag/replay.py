"""Router replay: recompute routing from recorded ``layers.L.router_input`` with a checkpoint's routers.

>>> from moediag.replay import replay                                   # doctest: +SKIP
>>> r = replay("tiny-mixtral/", "trace/", top_k=3, capacity_factor=1.25)
>>> r.to_dict()["layers"][0]["topk_agreement"]                          # doctest: +SKIP
1.0

For every MoE layer of the trace that holds router inputs, the checkpoint's router (weight, logit bias,
selection bias, score function, groups, renormalisation; found with the layout detection of ``inspect``)
routes the recorded hidden states again, in chunks, on the chosen device and in the chosen dtype:

* **agreement**: the replay with the checkpoint's own settings against what the trace recorded (its
  ``topk_ids``, else its ``router_logits`` routed with the trace's settings). 100% in fp32 says the trace
  and the checkpoint belong together.
* **what-ifs**: another top-k, no or another selection bias, routing noise, a capacity limit with a drop
  policy, and an expert-parallel placement. Loads, imbalance and drops of the routing in effect are the
  statistics of ``inspect`` (:class:`moediag.stats.ModelStats`).

Policies are those of :mod:`moediag.routing`. Llama 4 (top-k on the logits, then a sigmoid of each) is the
``sigmoid`` policy without renormalisation: the sigmoid is monotonic, so the choice is the same.

The library imports no CLI code; ``moediag replay`` renders :meth:`ReplayResult.to_dict`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import operator
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from moediag import envelope, routing
from moediag.checkpoint import (
    RouterSpec,
    load_router_bias,
    load_router_weight,
    load_selection_bias,
    open_inventory,
    router_specs,
)
from moediag.device import resolve_device
from moediag.errors import InvalidInputError, UsageError
from moediag.placement import (
    PlacementFile,
    ReplicaPlan,
    balanced,
    balancedness,
    contiguous,
    hierarchical,
    load_placement,
    node_loads,
    plan_replicas,
    rank_loads,
)
from moediag.stats import ModelStats, StatsOptions
from moediag.stats.capacity import DEFAULT_GROUP_TOKENS, POLICIES, resolve_policy
from moediag.trace import Chunk, Trace, open_trace

__all__ = [
    "DTYPES",
    "MARGIN_EDGES",
    "TIE_EPS",
    "LayerReplay",
    "ReplayResult",
    "load_bias_file",
    "replay",
    "resolve_device",
    "resolve_dtype",
]

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


@dataclass
class _Router:
    """One layer's router, ready on the device."""

    layer: int
    spec: RouterSpec
    weight: torch.Tensor  # [E, H] in the compute dtype, on the device
    logit_bias: torch.Tensor | None  # [E] float32
    selection_bias: torch.Tensor | None  # [E] float32, the checkpoint's
    whatif_bias: torch.Tensor | None  # [E] float32, the what-if's (= selection_bias unless changed)
    top_k: int  # the routing the model did (trace top_k, else the checkpoint's)
    whatif_top_k: int
    recorded_bias: torch.Tensor | None  # trace's layers.L.selection_bias, to route recorded logits

    @property
    def num_experts(self) -> int:
        return int(self.weight.shape[0])


_SETTING = {"reduce": None}  # a field that is the same on both sides of a merge


@dataclass
class LayerReplay:
    """Sufficient statistics of one replayed layer (sums and counts; ``merge`` combines every field by
    its declared reduction -- sum unless the field's metadata says otherwise -- so none can be left out)."""

    layer: int = field(metadata=_SETTING)
    num_experts: int = field(metadata=_SETTING)
    top_k: int = field(metadata=_SETTING)
    whatif_top_k: int = field(metadata=_SETTING)
    tokens: int = 0
    compared: int = 0
    top1_hits: int = 0
    topk_hits: int = 0
    overlap_sum: int = 0
    mismatched_near_ties: int = 0
    logits_compared: int = 0
    logits_max_abs_diff: float = field(default=0.0, metadata={"reduce": max})
    excluded_nonfinite: int = 0
    whatif_changed: int = 0
    whatif_overlap_sum: int = 0
    load_before: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    load_after: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    noise_tokens: torch.Tensor = field(
        default_factory=lambda: torch.zeros(len(MARGIN_EDGES), dtype=torch.int64)
    )
    noise_flips: torch.Tensor = field(
        default_factory=lambda: torch.zeros(len(MARGIN_EDGES), dtype=torch.int64)
    )
    hidden_size: int = field(default=0, metadata=_SETTING)
    #: with --ep-size: sum over tokens of the distinct EP ranks (contiguous placement) their experts are on
    rank_hits: int = 0

    def __post_init__(self) -> None:
        if self.load_before.numel() == 0:
            self.load_before = torch.zeros(self.num_experts, dtype=torch.int64)
        if self.load_after.numel() == 0:
            self.load_after = torch.zeros(self.num_experts, dtype=torch.int64)

    def merge(self, other: LayerReplay) -> None:
        for f in dataclasses.fields(self):
            reduce = f.metadata.get("reduce", operator.add)
            if reduce is not None:
                setattr(self, f.name, reduce(getattr(self, f.name), getattr(other, f.name)))


def _ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def _membership(ids: torch.Tensor, e: int) -> torch.Tensor:
    """Boolean [n, E]: expert in the token's top-k (-1 slots ignored)."""
    m = torch.zeros(ids.shape[0], e, dtype=torch.bool, device=ids.device)
    m.scatter_(1, ids.clamp_min(0), ids >= 0)
    return m


def _bincount(ids: torch.Tensor, e: int) -> torch.Tensor:
    flat = ids.reshape(-1)
    flat = flat[flat >= 0]
    return torch.bincount(flat, minlength=e).to("cpu", torch.int64)


# -- the run -----------------------------------------------------------------------------------------


def _pick_spec(specs: list[RouterSpec], layer: int) -> RouterSpec | None:
    """The checkpoint router of trace layer L: the feed-forward, non-MTP block of that index."""
    cands = [s for s in specs if s.layer == layer and s.kind == "ffn" and not s.mtp]
    cands = cands or [s for s in specs if s.layer == layer]
    return cands[0] if cands else None


def _whatif_bias(bias: BiasArg, layer: int, e: int, ckpt_bias: torch.Tensor | None) -> torch.Tensor | None:
    if isinstance(bias, str):
        if bias != "checkpoint":
            raise UsageError(f"bias={bias!r}: expected 'checkpoint', None, a tensor or a mapping")
        return ckpt_bias
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor):
        t = bias
    else:
        got = bias.get(layer, bias.get(-1))
        if got is None:
            return ckpt_bias
        t = got
    t = t.float().reshape(-1)
    if t.numel() != e:
        raise UsageError(f"bias for layer {layer} has {t.numel()} values but the layer has {e} experts")
    return t


def _to(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def _check_groups(spec: RouterSpec, k: int, e: int, what: str) -> None:
    if spec.n_group and spec.topk_group and spec.n_group > 1:
        allowed = spec.topk_group * (e // spec.n_group)
        if k > allowed:
            raise UsageError(
                f"{what} {k}: layer {spec.layer} routes within {spec.topk_group} of {spec.n_group} groups, "
                f"{allowed} experts at most"
            )


class _Replayer:
    def __init__(
        self,
        trace: Trace,
        checkpoint: str | os.PathLike[str],
        *,
        device: torch.device,
        dtype: torch.dtype,
        top_k: int | None,
        bias: BiasArg,
        noise: float | None,
        samples: int,
        seed: int,
        options: StatsOptions,
    ) -> None:
        self.trace = trace
        self.device = device
        self.dtype = dtype
        self.noise = noise
        self.samples = samples
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.stats = ModelStats(options)
        self.routers: dict[int, _Router] = {}
        self.layers: dict[int, LayerReplay] = {}
        self.skipped: list[dict[str, Any]] = []
        inv = open_inventory(checkpoint)
        specs = router_specs(inv)
        self.whatif = top_k is not None or not (isinstance(bias, str) and bias == "checkpoint")
        #: expert -> EP rank under the contiguous placement, per layer (set by :meth:`count_ranks`)
        self.rank_of: dict[int, torch.Tensor] = {}
        self.ep_size = 1
        for layer, info in sorted(trace.layers.items()):
            if "router_input" not in info.kinds:
                self.skipped.append({"layer": layer, "reason": NO_ROUTER_INPUT})
                continue
            spec = _pick_spec(specs, layer)
            if spec is None:
                self.skipped.append({"layer": layer, "reason": "no router for this layer in the checkpoint"})
                continue
            w = load_router_weight(inv, spec)
            width = trace.shards[0].tensors[f"layers.{layer}.router_input"].shape[-1]
            if width != w.shape[1]:
                raise InvalidInputError(
                    f"layers.{layer}.router_input has width {width} but the checkpoint's router of layer "
                    f"{layer} ({spec.weight}) takes hidden size {w.shape[1]}: the trace was not recorded "
                    "from this model",
                    trace.shards[0].path,
                )
            e = int(w.shape[0])
            if info.num_experts != e:
                raise InvalidInputError(
                    f"layer {layer}: the trace has {info.num_experts} experts but the checkpoint's router "
                    f"has {e}",
                    trace.shards[0].path,
                )
            k = info.spec.top_k or spec.top_k
            if k is None:
                raise UsageError(f"layer {layer}: top-k unknown in both trace and checkpoint; pass --top-k")
            k_new = k if top_k is None else top_k
            if not 1 <= k_new <= e:
                raise UsageError(f"--top-k {k_new}: must be between 1 and the {e} experts of layer {layer}")
            _check_groups(spec, k_new, e, "--top-k")
            sel = load_selection_bias(inv, spec)
            lb = load_router_bias(inv, spec)
            self.routers[layer] = _Router(
                layer=layer,
                spec=spec,
                weight=w.to(device=device, dtype=dtype),
                logit_bias=None if lb is None else lb.to(device),
                selection_bias=None if sel is None else sel.to(device),
                whatif_bias=_to(_whatif_bias(bias, layer, e, sel), device),
                top_k=k,
                whatif_top_k=k_new,
                recorded_bias=trace.selection_bias(layer),
            )
            self.layers[layer] = LayerReplay(layer, e, k, k_new, hidden_size=int(w.shape[1]))
            self.stats.layer(layer, e, k_new)
        if not self.routers:
            reasons = "; ".join(skip_lines(self.skipped)) or "no layers"
            hint = (
                "; record with --router-inputs"
                if any(x["reason"] == NO_ROUTER_INPUT for x in self.skipped)
                else ""
            )
            raise InvalidInputError(f"nothing to replay ({reasons}){hint}", trace.path)
        self.notes: list[str] = []
        if bias is None and all(r.selection_bias is None for r in self.routers.values()):
            self.notes.append(
                "the checkpoint has no selection bias, so resetting it to 0 changes nothing: "
                "the what-if is the model's own routing (kept 100%)"
            )

    def count_ranks(self, ep_size: int) -> None:
        """Count, per token, the distinct EP ranks (contiguous placement) of the experts it is sent to."""
        self.ep_size = ep_size
        for layer, r in self.routers.items():
            rank_of = torch.empty(r.num_experts, dtype=torch.int64)
            for rank, experts in enumerate(contiguous(r.num_experts, ep_size)):
                rank_of[list(experts)] = rank
            self.rank_of[layer] = rank_of.to(self.device)

    # routing on the device: every choice, weight and margin comes from moediag.routing.route ----------
    def run_chunk(self, chunk: Chunk) -> None:
        mask = chunk.token("mask")
        valid = None if mask is None else mask.to(torch.bool)
        for r in self.routers.values():
            self._layer_chunk(chunk, r, valid)

    def _layer_chunk(self, chunk: Chunk, r: _Router, valid: torch.Tensor | None) -> None:
        acc = self.layers[r.layer]
        x = chunk.layer_tensor(r.layer, "router_input")
        assert x is not None
        xd = x.to(self.device, non_blocking=True).to(self.dtype)
        logits = (xd @ r.weight.T).float()
        if r.logit_bias is not None:
            logits = logits + r.logit_bias
        # a non-finite input gives a non-finite logit row: checking [n, E] is cheaper than [n, H]
        keep = torch.isfinite(logits).all(dim=-1).cpu()
        if valid is not None:
            acc.excluded_nonfinite += int((valid & ~keep).sum())
            keep &= valid
        else:
            acc.excluded_nonfinite += int((~keep).sum())
        subset = not bool(keep.all())
        if subset:
            logits = logits[keep.to(logits.device)]
        n = logits.shape[0]
        if n == 0:
            return
        e = r.num_experts
        # the routing in effect (what-ifs applied) ...
        routed = routing.route(logits, spec=r.spec, bias=r.whatif_bias, top_k=r.whatif_top_k)
        # ... and the routing the checkpoint does, compared with the recorded one
        if self.whatif:
            base_ids = routing.choose(logits, spec=r.spec, bias=r.selection_bias, top_k=r.top_k)
            a, b = _membership(base_ids, e), _membership(routed.ids, e)
            acc.whatif_overlap_sum += int((a & b).sum())
            acc.whatif_changed += int((a != b).any(dim=1).sum())
        else:
            base_ids = routed.ids
        acc.tokens += n
        self._agreement(chunk, r, acc, keep if subset else None, logits, base_ids, routed)
        acc.load_before += _bincount(base_ids, e)
        acc.load_after += _bincount(routed.ids, e)
        rank_of = self.rank_of.get(r.layer)
        if rank_of is not None:
            ranks = rank_of[routed.ids.clamp_min(0)].masked_fill(routed.ids < 0, -1)
            acc.rank_hits += int(_membership(ranks, self.ep_size).sum())
        if self.noise:
            self._noise(r, acc, logits, routed)
        self._stats(chunk, r, keep if subset else None, routed)

    def _base_margin(self, r: _Router, logits: torch.Tensor, routed: routing.Routed) -> torch.Tensor:
        """Margin of the checkpoint's own routing (= the routing in effect without what-ifs)."""
        if not self.whatif:
            assert routed.margin is not None
            return routed.margin
        base = routing.route(logits, spec=r.spec, bias=r.selection_bias, top_k=r.top_k)
        assert base.margin is not None
        return base.margin

    def _agreement(
        self,
        chunk: Chunk,
        r: _Router,
        acc: LayerReplay,
        keep: torch.Tensor | None,
        logits: torch.Tensor,
        ids: torch.Tensor,
        routed: routing.Routed,
    ) -> None:
        rec_logits = chunk.layer_tensor(r.layer, "router_logits")
        rec_ids = chunk.layer_tensor(r.layer, "topk_ids")
        if keep is not None:
            rec_logits = None if rec_logits is None else rec_logits[keep]
            rec_ids = None if rec_ids is None else rec_ids[keep]
        if rec_logits is not None:
            diff = (rec_logits.to(self.device).float() - logits).abs()
            finite = torch.isfinite(diff)
            if bool(finite.any()):
                acc.logits_max_abs_diff = max(acc.logits_max_abs_diff, float(diff[finite].max()))
            acc.logits_compared += int(logits.shape[0])
        if rec_ids is None and rec_logits is not None:
            tspec = self.trace.layers[r.layer].spec
            rule = dataclasses.replace(tspec, score_function=tspec.score_function or r.spec.score_function)
            rec_ids = routing.choose(
                rec_logits.to(self.device).float(), spec=rule, bias=r.recorded_bias, top_k=r.top_k
            )
        if rec_ids is None:
            return
        rec = rec_ids.to(self.device, torch.int64)
        if rec.shape[1] != ids.shape[1]:
            return
        e = r.num_experts
        a, b = _membership(rec, e), _membership(ids, e)
        same = ~(a != b).any(dim=1)
        acc.compared += int(ids.shape[0])
        acc.topk_hits += int(same.sum())
        acc.top1_hits += int((rec[:, 0] == ids[:, 0]).sum())
        acc.overlap_sum += int((a & b).sum())
        if not bool(same.all()):
            m = self._base_margin(r, logits, routed)[~same]
            acc.mismatched_near_ties += int((m.abs() <= TIE_EPS).sum())

    def _noise(self, r: _Router, acc: LayerReplay, logits: torch.Tensor, routed: routing.Routed) -> None:
        assert self.noise is not None and routed.margin is not None
        ids, m = routed.ids, routed.margin
        edges = torch.tensor(MARGIN_EDGES[1:], device=m.device, dtype=m.dtype)
        bucket = torch.bucketize(m.nan_to_num(float("inf")).clamp_min(0), edges, right=True)
        base = _membership(ids, r.num_experts)
        flips = torch.zeros(ids.shape[0], dtype=torch.int64, device=ids.device)
        for _ in range(self.samples):
            z = logits + self.noise * torch.randn(
                logits.shape, generator=self.generator, device=logits.device, dtype=logits.dtype
            )
            noisy = routing.choose(z, spec=r.spec, bias=r.whatif_bias, top_k=ids.shape[1])
            flips += (_membership(noisy, r.num_experts) != base).any(dim=1)
        nb = len(MARGIN_EDGES)
        acc.noise_tokens += torch.bincount(bucket, minlength=nb).cpu() * self.samples
        acc.noise_flips += torch.bincount(bucket, weights=flips.double(), minlength=nb).cpu().to(torch.int64)

    def _stats(self, chunk: Chunk, r: _Router, keep: torch.Tensor | None, routed: routing.Routed) -> None:
        index = chunk.index if keep is None else chunk.index[keep]
        batch = routed.to("cpu").batch(num_experts=r.num_experts, top_k=int(routed.ids.shape[1]), index=index)
        for name in ("sequence_ids", "positions", "step"):
            t = chunk.token(name)
            if t is not None:
                t = t.to(torch.int64)
                setattr(batch, name, t if keep is None else t[keep])
        self.stats.layers[r.layer].update(batch)


# -- the result -------------------------------------------------------------------------------------


NO_ROUTER_INPUT = "no router_input in the trace"


def skip_lines(skipped: list[dict[str, Any]]) -> list[str]:
    """``layers 0-3: no router_input in the trace``: the skipped layers grouped by reason, as ranges."""
    by_reason: dict[str, list[int]] = {}
    for x in skipped:
        by_reason.setdefault(str(x["reason"]), []).append(int(x["layer"]))
    out = []
    for reason, layers in by_reason.items():
        layers.sort()
        spans: list[str] = []
        start = prev = layers[0]
        for nxt in [*layers[1:], None]:
            if nxt is not None and nxt == prev + 1:
                prev = nxt
                continue
            spans.append(str(start) if start == prev else f"{start}-{prev}")
            if nxt is not None:
                start = prev = nxt
        word = "layer" if len(layers) == 1 else "layers"
        out.append(f"{word} {', '.join(spans)}: {reason}")
    return out


@dataclass
class ReplayResult:
    """What a replay found; :meth:`to_dict` is the ``--json`` document (docs/replay.md)."""

    checkpoint: str
    trace: str
    device: str
    dtype: str
    layers: dict[int, LayerReplay]
    stats: dict[str, Any]
    skipped: list[dict[str, Any]]
    settings: dict[str, Any]
    ep: dict[int, dict[str, Any]] = field(default_factory=dict)
    placement: dict[int, list[list[int]]] = field(default_factory=dict)
    plan: ReplicaPlan | None = None
    seconds: float = 0.0
    created: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    )
    #: things the reader should know about the result (a what-if that changes nothing, ...)
    notes: list[str] = field(default_factory=list)

    def layer_dict(self, layer: int) -> dict[str, Any]:
        acc = self.layers[layer]
        s = self.settings
        stats_row = next(x for x in self.stats["layers"] if x["layer"] == layer)
        row: dict[str, Any] = {
            "layer": layer,
            "num_experts": acc.num_experts,
            "top_k": acc.top_k,
            "whatif_top_k": acc.whatif_top_k,
            "tokens": acc.tokens,
            "excluded_nonfinite": acc.excluded_nonfinite,
            "compared": acc.compared,
            "top1_agreement": _ratio(acc.top1_hits, acc.compared),
            "topk_agreement": _ratio(acc.topk_hits, acc.compared),
            "topk_overlap": _ratio(acc.overlap_sum, acc.compared * acc.top_k),
            "mismatched_tokens": acc.compared - acc.topk_hits,
            "mismatched_near_ties": acc.mismatched_near_ties,
            "logits_max_abs_diff": acc.logits_max_abs_diff if acc.logits_compared else None,
            "load_before": acc.load_before.tolist(),
            "max_vio_before": _max_vio(acc.load_before),
        }
        if s["whatif"]:
            row["whatif_changed_share"] = _ratio(acc.whatif_changed, acc.tokens)
            # share of the model's own choices the what-if keeps (k -> 1 keeps at most 1/k of them)
            row["whatif_topk_overlap"] = _ratio(acc.whatif_overlap_sum, acc.tokens * acc.top_k)
        row["stats"] = {key: stats_row.get(key) for key in STAT_KEYS}
        cf = s["capacity_factor"]
        if cf is not None:
            rate = stats_row["drop_rate"]
            by_pos = stats_row["drop_rate_by_position"]
            # the total is the same under every policy; where the drops fall (by position) is not
            row["capacity"] = {
                "capacity_factor": cf,
                "min_capacity": s["min_capacity"],
                "drop_policy": s["drop_policy"],
                "drop_rate": stats_row["drop_rate_total"][str(cf)],
                "drop_rate_other_policy": {p: rate[p][str(cf)] for p in POLICIES if p != s["drop_policy"]},
                "drop_rate_by_position": {
                    "buckets": by_pos["buckets"],
                    "assignments": by_pos["assignments"],
                    "rate": by_pos["rate"][s["drop_policy"]][str(cf)],
                    "rate_by_policy": {p: by_pos["rate"][p][str(cf)] for p in POLICIES},
                },
            }
        if s["noise"] is not None:
            tok, fl = acc.noise_tokens, acc.noise_flips
            row["noise"] = {
                "sigma": s["noise"],
                "samples": s["samples"],
                "flip_share": _ratio(float(fl.sum()), float(tok.sum())),
                "by_margin": {
                    "edges": list(MARGIN_EDGES),
                    "token_samples": tok.tolist(),
                    "flip_share": [_ratio(float(f), float(t)) for f, t in zip(fl, tok, strict=True)],
                },
            }
        if layer in self.ep:
            row["ep"] = self.ep[layer]
        return row

    def to_dict(self) -> dict[str, Any]:
        layers = [self.layer_dict(layer) for layer in sorted(self.layers)]
        compared = sum(a.compared for a in self.layers.values())
        summary: dict[str, Any] = {
            "layers": len(layers),
            "skipped": len(self.skipped),
            "tokens": max((a.tokens for a in self.layers.values()), default=0),
            "compared": compared,
            "top1_agreement": _ratio(sum(a.top1_hits for a in self.layers.values()), compared),
            "topk_agreement": _ratio(sum(a.topk_hits for a in self.layers.values()), compared),
            "topk_agreement_min": min(
                (x["topk_agreement"] for x in layers if x["topk_agreement"] is not None), default=None
            ),
            "mismatched_tokens": sum(x["mismatched_tokens"] for x in layers),
            "mismatched_near_ties": sum(x["mismatched_near_ties"] for x in layers),
            "match": None if compared == 0 else all(x["mismatched_tokens"] == 0 for x in layers),
            "stats": {key: self.stats["summary"].get(key) for key in SUMMARY_STAT_KEYS},
        }
        if self.settings["capacity_factor"] is not None:
            rates = [x["capacity"]["drop_rate"] for x in layers if x["capacity"]["drop_rate"] is not None]
            summary["drop_rate_mean"] = sum(rates) / len(rates) if rates else None
            summary["drop_rate_max"] = max(rates, default=None)
        if self.settings["noise"] is not None:
            shares = [x["noise"]["flip_share"] for x in layers if x["noise"]["flip_share"] is not None]
            summary["noise_flip_share_mean"] = sum(shares) / len(shares) if shares else None
        if self.ep:
            before = [
                v["balancedness_before"] for v in self.ep.values() if v["balancedness_before"] is not None
            ]
            after = [v["balancedness_after"] for v in self.ep.values() if v["balancedness_after"] is not None]
            summary["balancedness_before_mean"] = sum(before) / len(before) if before else None
            summary["balancedness_after_mean"] = sum(after) / len(after) if after else None
            summary["balancedness_before_min"] = min(before, default=None)
            summary["balancedness_after_min"] = min(after, default=None)
            for key in ("busiest_rank_inflation_before", "busiest_rank_inflation_after"):
                vals = [v[key] for v in self.ep.values() if v[key] is not None]
                summary[f"{key}_max"] = max(vals, default=None)
            volume = [
                v["a2a_bytes_per_token"] for v in self.ep.values() if v["a2a_bytes_per_token"] is not None
            ]
            # a token passes every MoE layer: the volumes add up over layers
            summary["a2a_bytes_per_token"] = sum(volume) if volume else None
        if self.plan is not None:
            summary["replica_plan"] = {
                "target_balancedness": self.plan.target,
                "replicas": self.plan.replicas,
                "reached": self.plan.reached,
                "balancedness_min": self.plan.min_balancedness,
            }
        return {
            "meta": envelope.meta(
                "replay",
                JSON_FORMAT,
                created=self.created,
                checkpoint=self.checkpoint,
                trace=self.trace,
                device=self.device,
                dtype=self.dtype,
                seconds=round(self.seconds, 3),
                settings={k: v for k, v in self.settings.items() if k != "whatif"},
            ),
            "summary": summary,
            "layers": layers,
            "skipped": self.skipped,
            "notes": list(self.notes),
        }

    def placement_document(self) -> dict[str, Any] | None:
        """The proposed placement as a placement file (None without ``ep_size``)."""
        if not self.placement:
            return None
        from moediag.placement import placement_document

        return placement_document(self.settings["ep_size"], self.placement, self.settings["replicas"])


def _max_vio(load: torch.Tensor) -> float | None:
    from moediag.stats.imbalance import max_vio

    return max_vio(load)


#: bytes of one hidden-state element sent by the all-to-all (bf16 activations)
A2A_BYTES_PER_ELEMENT = 2


def _inflation(rank_load: torch.Tensor) -> float | None:
    """The step time of the busiest rank over that of a perfectly balanced step: max / mean rank load
    (expert compute proportional to tokens, every rank waiting for the slowest)."""
    mean = float(rank_load.double().mean()) if rank_load.numel() else 0.0
    return float(rank_load.max()) / mean if mean > 0 else None


def a2a_bytes(ranks_per_token: float, ep_size: int, hidden_size: int) -> float:
    """All-to-all bytes a token: its hidden state to each distinct rank holding one of its experts
    (dispatch) and back (combine), except the share ``1/ep_size`` of destinations that is the token's own
    rank (tokens spread evenly over ranks): ``2 * ranks * (ep - 1) / ep * H * A2A_BYTES_PER_ELEMENT``."""
    return 2 * ranks_per_token * (ep_size - 1) / ep_size * hidden_size * A2A_BYTES_PER_ELEMENT


def _ep(
    layers: dict[int, LayerReplay],
    ep_size: int,
    placement: PlacementArg,
    replicas: int,
    nodes: int | None = None,
    groups: dict[int, int | None] | None = None,
    target_balancedness: float | None = None,
) -> tuple[dict[int, dict[str, Any]], dict[int, list[list[int]]], ReplicaPlan | None]:
    file: PlacementFile | None = None
    if isinstance(placement, PlacementFile):
        file = placement
    elif str(placement) not in PLACEMENT_POLICIES:
        if not Path(placement).exists() and Path(placement).suffix.lower() != ".json":
            raise UsageError(
                f"--placement {placement}: expected {', '.join(PLACEMENT_POLICIES)} or a placement JSON file"
            )
        file = load_placement(placement)
    if file is not None and file.ep_size != ep_size:
        raise UsageError(f"--ep-size {ep_size} but the placement file has ep_size {file.ep_size}")
    name = "file" if file is not None else str(placement)
    out: dict[int, dict[str, Any]] = {}
    proposed: dict[int, list[list[int]]] = {}

    def place(layer: int, loads: torch.Tensor, r: int) -> list[list[int]]:
        if name == "balanced":
            return balanced(loads, ep_size, r)
        n_groups = (groups or {}).get(layer)
        if not n_groups:
            raise UsageError(
                f"layer {layer}: --placement hierarchical needs --expert-groups "
                "(the checkpoint's router has no group limit to take it from)"
            )
        return hierarchical(loads, ep_size, r, num_groups=n_groups, num_nodes=nodes or 1)

    plan: ReplicaPlan | None = None
    if target_balancedness is not None:
        loads_by_layer = {layer: acc.load_after for layer, acc in layers.items()}
        plan = plan_replicas(loads_by_layer, ep_size, target_balancedness, place)
    for layer, acc in sorted(layers.items()):
        loads = acc.load_after
        before = contiguous(acc.num_experts, ep_size)
        if file is not None:
            after = file.for_layer(layer, acc.num_experts)
        elif plan is not None:
            after = plan.layers[layer]
        elif name in ("balanced", "hierarchical"):
            after = place(layer, loads, replicas)
        else:
            after = before
        rb, ra = rank_loads(loads, before), rank_loads(loads, after)
        ranks_per_token = _ratio(acc.rank_hits, acc.tokens)
        out[layer] = {
            "ep_size": ep_size,
            "placement": name,
            "replicas": sum(len(s) for s in after) - acc.num_experts,
            "rank_load_before": rb.tolist(),
            "rank_load_after": ra.tolist(),
            "balancedness_before": balancedness(rb),
            "balancedness_after": balancedness(ra),
            "busiest_rank_inflation_before": _inflation(rb),
            "busiest_rank_inflation_after": _inflation(ra),
            "a2a_ranks_per_token": ranks_per_token,
            "a2a_bytes_per_token": None
            if ranks_per_token is None
            else a2a_bytes(ranks_per_token, ep_size, acc.hidden_size),
        }
        if nodes is not None:  # ranks numbered node by node: load and balancedness per node as well
            nb, na = node_loads(rb, nodes), node_loads(ra, nodes)
            out[layer].update(
                {
                    "nodes": nodes,
                    "node_load_before": nb.tolist(),
                    "node_load_after": na.tolist(),
                    "node_balancedness_before": balancedness(nb),
                    "node_balancedness_after": balancedness(na),
                }
            )
        proposed[layer] = after
    return out, proposed, plan


def replay(
    checkpoint: str | os.PathLike[str],
    trace: str | os.PathLike[str] | Trace,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    top_k: int | None = None,
    capacity_factor: float | None = None,
    drop_policy: str = "token-order",
    bias: BiasArg = "checkpoint",
    noise: float | None = None,
    samples: int = 8,
    ep_size: int | None = None,
    placement: PlacementArg = "contiguous",
    replicas: int = 0,
    target_balancedness: float | None = None,
    nodes: int | None = None,
    expert_groups: int | None = None,
    chunk_tokens: int | None = None,
    capacity_group: int = DEFAULT_GROUP_TOKENS,
    min_capacity: int = 0,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ReplayResult:
    """Replay the routing of ``trace`` with the routers of ``checkpoint``; see the module docstring.

    ``bias``: ``"checkpoint"`` (the checkpoint's selection bias), None (no selection bias), a tensor [E]
    for every layer, or a mapping layer -> tensor (key -1 = every other layer; :func:`load_bias_file`).
    ``placement``: ``"contiguous"``, ``"balanced"``, ``"hierarchical"`` or a placement file path (needs
    ``ep_size``). ``nodes``: EP nodes (ranks numbered node by node; adds per-node loads); hierarchical needs
    it, and ``expert_groups`` (default: the router's ``n_group``). ``target_balancedness``: instead of
    ``replicas``, the fewest replicas whose ``balanced``/``hierarchical`` placement reaches it in every layer
    (:func:`moediag.placement.plan_replicas`).
    """
    import time

    t0 = time.perf_counter()
    try:
        drop_policy = resolve_policy(drop_policy)
    except ValueError as exc:
        raise UsageError(f"--drop-policy: {exc}") from None
    if min_capacity < 0:
        raise UsageError("--min-capacity must be 0 or more")
    if capacity_factor is not None and capacity_factor <= 0:
        raise UsageError("--capacity-factor must be positive")
    if noise is not None and noise < 0:
        raise UsageError("--noise must be 0 or more")
    if samples < 1:
        raise UsageError("--samples must be at least 1")
    if replicas < 0:
        raise UsageError("--replicas must be 0 or more")
    if ep_size is None and not (isinstance(placement, str) and placement == "contiguous"):
        raise UsageError("--placement needs --ep-size")
    if ep_size is not None and ep_size < 1:
        raise UsageError("--ep-size must be positive")
    if replicas and str(placement) not in ("balanced", "hierarchical"):
        raise UsageError("--replicas needs --placement balanced or hierarchical")
    if target_balancedness is not None:
        if str(placement) not in ("balanced", "hierarchical"):
            raise UsageError("--target-balancedness needs --placement balanced or hierarchical")
        if replicas:
            raise UsageError("--target-balancedness chooses the replicas: leave out --replicas")
        if not 0 < target_balancedness <= 1:
            raise UsageError(f"--target-balancedness {target_balancedness}: expected a value in (0, 1]")
    if str(placement) == "hierarchical" and nodes is None:
        raise UsageError("--placement hierarchical needs --nodes")
    if nodes is not None and ep_size is None:
        raise UsageError("--nodes needs --ep-size (the ranks it groups into nodes)")
    if nodes is not None and ep_size is not None and (nodes < 1 or ep_size % nodes):
        raise UsageError(f"--nodes {nodes} must be positive and divide --ep-size {ep_size}")
    if expert_groups is not None and str(placement) != "hierarchical":
        raise UsageError("--expert-groups applies to --placement hierarchical only")
    if expert_groups is not None and expert_groups < 1:
        raise UsageError("--expert-groups must be positive")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise UsageError("--chunk-tokens must be positive")
    if capacity_group < 1:
        raise UsageError("--capacity-group must be positive")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype)
    tr = trace if isinstance(trace, Trace) else open_trace(trace)
    factors = (capacity_factor,) if capacity_factor is not None else StatsOptions().capacity_factors
    options = StatsOptions(
        capacity_factors=factors, capacity_group_tokens=capacity_group, min_capacity=min_capacity
    )
    rp = _Replayer(
        tr,
        checkpoint,
        device=dev,
        dtype=dt,
        top_k=top_k,
        bias=bias,
        noise=noise or None,
        samples=samples,
        seed=seed,
        options=options,
    )
    if ep_size is not None:
        rp.count_ranks(ep_size)
    if chunk_tokens is None:
        width = max(int(r.weight.shape[1]) for r in rp.routers.values())
        chunk_tokens = int(min(tr.default_chunk_tokens(), max(1024, (1 << 24) // max(1, width))))
    with torch.inference_mode():
        for chunk in tr.iter_chunks(chunk_tokens):
            rp.run_chunk(chunk)
            if progress is not None:
                progress(len(chunk))
    stats = rp.stats.compute()
    ep: dict[int, dict[str, Any]] = {}
    proposed: dict[int, list[list[int]]] = {}
    plan: ReplicaPlan | None = None
    if ep_size is not None:
        groups = {
            layer: expert_groups or (r.spec.n_group if r.spec.n_group and r.spec.n_group > 1 else None)
            for layer, r in rp.routers.items()
        }
        ep, proposed, plan = _ep(rp.layers, ep_size, placement, replicas, nodes, groups, target_balancedness)
        if plan is not None:
            replicas = plan.replicas
    settings = {
        "top_k": top_k,
        "capacity_factor": capacity_factor,
        "drop_policy": drop_policy,
        "capacity_group_tokens": capacity_group,
        "min_capacity": min_capacity,
        "bias": bias if isinstance(bias, str) or bias is None else "given",
        "noise": noise or None,
        "samples": samples if noise else None,
        "seed": seed,
        "ep_size": ep_size,
        "placement": None
        if ep_size is None
        else (str(placement) if not isinstance(placement, PlacementFile) else placement.path),
        "replicas": replicas,
        "target_balancedness": target_balancedness,
        "nodes": nodes,
        "expert_groups": expert_groups,
        "chunk_tokens": chunk_tokens,
        "whatif": rp.whatif,
    }
    return ReplayResult(
        checkpoint=os.fspath(checkpoint),
        trace=str(tr.path),
        device=str(dev),
        dtype=str(dt).replace("torch.", ""),
        layers=rp.layers,
        stats=stats,
        skipped=rp.skipped,
        settings=settings,
        ep=ep,
        placement=proposed,
        plan=plan,
        seconds=time.perf_counter() - t0,
        notes=rp.notes,
    )
