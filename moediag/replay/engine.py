"""The replayer: route each chunk of recorded router inputs again with the checkpoint's routers (through
:func:`moediag.routing.route`, the one routing path), compare with what the trace recorded, and feed
the what-ifs to ``inspect``'s accumulators.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from moediag import routing
from moediag.checkpoint import (
    RouterSpec,
    load_router_bias,
    load_router_weight,
    load_selection_bias,
    open_inventory,
    router_specs,
)
from moediag.errors import InvalidInputError, UsageError
from moediag.replay.layer import LayerReplay, LayerRouter, expert_counts, membership
from moediag.replay.ranks import contiguous
from moediag.replay.result import NO_ROUTER_INPUT, skip_lines
from moediag.replay.settings import MARGIN_EDGES, TIE_EPS, BiasArg
from moediag.stats import ModelStats, StatsOptions
from moediag.trace import Chunk, Trace


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


class Replayer:
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
        self.routers: dict[int, LayerRouter] = {}
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
            self.routers[layer] = LayerRouter(
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

    def _layer_chunk(self, chunk: Chunk, r: LayerRouter, valid: torch.Tensor | None) -> None:
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
            a, b = membership(base_ids, e), membership(routed.ids, e)
            acc.whatif_overlap_sum += int((a & b).sum())
            acc.whatif_changed += int((a != b).any(dim=1).sum())
        else:
            base_ids = routed.ids
        acc.tokens += n
        self._agreement(chunk, r, acc, keep if subset else None, logits, base_ids, routed)
        acc.load_before += expert_counts(base_ids, e)
        acc.load_after += expert_counts(routed.ids, e)
        rank_of = self.rank_of.get(r.layer)
        if rank_of is not None:
            ranks = rank_of[routed.ids.clamp_min(0)].masked_fill(routed.ids < 0, -1)
            acc.rank_hits += int(membership(ranks, self.ep_size).sum())
        if self.noise:
            self._noise(r, acc, logits, routed)
        self._stats(chunk, r, keep if subset else None, routed)

    def _base_margin(self, r: LayerRouter, logits: torch.Tensor, routed: routing.Routed) -> torch.Tensor:
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
        r: LayerRouter,
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
        a, b = membership(rec, e), membership(ids, e)
        same = ~(a != b).any(dim=1)
        acc.compared += int(ids.shape[0])
        acc.topk_hits += int(same.sum())
        acc.top1_hits += int((rec[:, 0] == ids[:, 0]).sum())
        acc.overlap_sum += int((a & b).sum())
        if not bool(same.all()):
            m = self._base_margin(r, logits, routed)[~same]
            acc.mismatched_near_ties += int((m.abs() <= TIE_EPS).sum())

    def _noise(self, r: LayerRouter, acc: LayerReplay, logits: torch.Tensor, routed: routing.Routed) -> None:
        assert self.noise is not None and routed.margin is not None
        ids, m = routed.ids, routed.margin
        edges = torch.tensor(MARGIN_EDGES[1:], device=m.device, dtype=m.dtype)
        bucket = torch.bucketize(m.nan_to_num(float("inf")).clamp_min(0), edges, right=True)
        base = membership(ids, r.num_experts)
        flips = torch.zeros(ids.shape[0], dtype=torch.int64, device=ids.device)
        for _ in range(self.samples):
            z = logits + self.noise * torch.randn(
                logits.shape, generator=self.generator, device=logits.device, dtype=logits.dtype
            )
            noisy = routing.choose(z, spec=r.spec, bias=r.whatif_bias, top_k=ids.shape[1])
            flips += (membership(noisy, r.num_experts) != base).any(dim=1)
        nb = len(MARGIN_EDGES)
        acc.noise_tokens += torch.bincount(bucket, minlength=nb).cpu() * self.samples
        acc.noise_flips += torch.bincount(bucket, weights=flips.double(), minlength=nb).cpu().to(torch.int64)

    def _stats(self, chunk: Chunk, r: LayerRouter, keep: torch.Tensor | None, routed: routing.Routed) -> None:
        index = chunk.index if keep is None else chunk.index[keep]
        batch = routed.to("cpu").batch(num_experts=r.num_experts, top_k=int(routed.ids.shape[1]), index=index)
        for name in ("sequence_ids", "positions", "step"):
            t = chunk.token(name)
            if t is not None:
                t = t.to(torch.int64)
                setattr(batch, name, t if keep is None else t[keep])
        self.stats.layers[r.layer].update(batch)


# -- the result -------------------------------------------------------------------------------------
