"""Sufficient statistics kept on the model's device, updated without host-device synchronisation.

Routing is :func:`moediag.routing.route`, the one routing path inspect uses (pure torch, no host
synchronisation). Each layer owns views into two flat buffers (int64 and float64) holding exactly the
state of inspect's
:class:`~moediag.stats.load.LoadStats` and :class:`~moediag.stats.router.RouterStats`: expert counts,
first-choice counts, tokens, probability sums, z-loss and entropy sums, transformers-style counts, the
margin histogram. Updates use only device ops (``index_add_``, masked sums): no ``.item()``, no boolean
indexing, no ``bincount`` (which reads its maximum on CUDA). Padding is masked by multiplication.

At a report, :meth:`DeviceStats.reduce` sums the two buffers across ranks (``torch.distributed`` all-reduce:
sums of counts and sums, so exact), :meth:`DeviceStats.to_host` copies them once and rebuilds inspect's
accumulators (:class:`~moediag.live.window.LiveLayer`), and :meth:`DeviceStats.zero` starts the next window.
"""

from __future__ import annotations

import torch

from moediag.live.window import LiveLayer
from moediag.routing import Routed
from moediag.stats.router import MARGIN_BINS, MARGIN_MAX, MARGIN_THRESHOLDS


class _LayerViews:
    """One layer's slices of the flat buffers."""

    def __init__(self, ints: torch.Tensor, floats: torch.Tensor, e: int) -> None:
        b = MARGIN_BINS
        nth = len(MARGIN_THRESHOLDS)
        i = 0
        self.counts = ints[i : i + e]
        i += e
        self.top1 = ints[i : i + e]
        i += e
        self.hf_counts = ints[i : i + e]
        i += e
        self.margin_hist = ints[i : i + b]
        i += b
        self.margin_below = ints[i : i + nth]
        i += nth
        self.scalars_i = ints[i : i + 4]  # tokens, margin_tokens, margin_under, margin_over
        f = 0
        self.prob_sum = floats[f : f + e]
        f += e
        self.softmax_sum = floats[f : f + e]
        f += e
        self.scalars_f = floats[f : f + 4]  # lse_sq_sum, entropy_sum, confidence_sum, margin_sum

    @staticmethod
    def sizes(e: int) -> tuple[int, int]:
        return 3 * e + MARGIN_BINS + len(MARGIN_THRESHOLDS) + 4, 2 * e + 4


class DeviceStats:
    """Per-layer device-side sufficient statistics for the open window (see the module docstring)."""

    def __init__(
        self, layers: dict[int, tuple[int, int | None]], device: torch.device, cold_eps: float = 0.1
    ) -> None:
        """``layers``: layer -> (num_experts, top_k)."""
        self.layers = dict(sorted(layers.items()))
        self.device = device
        self.cold_eps = cold_eps
        n_int = sum(_LayerViews.sizes(e)[0] for e, _ in self.layers.values())
        n_float = sum(_LayerViews.sizes(e)[1] for e, _ in self.layers.values())
        self.ints = torch.zeros(n_int, dtype=torch.int64, device=device)
        self.floats = torch.zeros(n_float, dtype=torch.float64, device=device)
        self.views: dict[int, _LayerViews] = {}
        oi = of = 0
        for layer, (e, _) in self.layers.items():
            si, sf = _LayerViews.sizes(e)
            self.views[layer] = _LayerViews(self.ints[oi : oi + si], self.floats[of : of + sf], e)
            oi += si
            of += sf
        self.thresholds = torch.tensor(MARGIN_THRESHOLDS, dtype=torch.float64, device=device)

    @property
    def nbytes(self) -> int:
        return self.ints.numel() * 8 + self.floats.numel() * 8

    def update(self, layer: int, r: Routed, valid: torch.Tensor | None) -> None:
        """Add one router call routed by :func:`moediag.routing.route` (the one routing path, as inspect
        routes a trace); ``valid`` [n] bool masks padding (None: every row counts)."""
        v = self.views[layer]
        assert r.probs is not None and r.softmax is not None and r.lse is not None and r.margin is not None
        assert r.hf_ids is not None
        n, k = r.ids.shape
        if valid is None:
            ones_k = torch.ones(n * k, dtype=torch.int64, device=r.ids.device)
            ones = ones_k[:n]
            v.counts.index_add_(0, r.ids.reshape(-1), ones_k)
            v.top1.index_add_(0, r.top1, ones)
            v.hf_counts.index_add_(0, r.hf_ids.reshape(-1), ones_k)
            tokens = torch.full((), n, dtype=torch.int64, device=r.ids.device)  # a fill: no host copy
            w = None
        else:
            vi = valid.to(torch.int64)
            vk = vi.unsqueeze(1).expand(n, k).reshape(-1)
            v.counts.index_add_(0, r.ids.reshape(-1), vk)
            v.top1.index_add_(0, r.top1, vi)
            v.hf_counts.index_add_(0, r.hf_ids.reshape(-1), vk)
            tokens = vi.sum()
            w = valid
        probs, softmax = r.probs, r.softmax
        if w is not None:
            wf = w.to(probs.dtype).unsqueeze(1)
            probs = probs * wf
            softmax = softmax * wf if r.softmax is not r.probs else probs
        p_sum = probs.sum(0, dtype=torch.float64)
        v.prob_sum += p_sum
        v.softmax_sum += p_sum if r.softmax is r.probs else softmax.sum(0, dtype=torch.float64)
        p = r.probs
        # as RouterStats: per-row figures in float32 (from the softmax pass when probs is the softmax)
        entropy = r.entropy if r.entropy is not None else -(p * p.clamp_min(1e-30).log()).sum(-1)
        confidence = r.confidence if r.confidence is not None else p.amax(-1)
        lse = r.lse.double()
        ent = entropy.double()
        conf = confidence.double()
        m = r.margin.double()
        ok = ~torch.isnan(m)
        if w is not None:
            ok = ok & w
            lse, ent, conf = (torch.where(w, t, torch.zeros_like(t)) for t in (lse, ent, conf))
        m0 = torch.where(ok, m, torch.zeros_like(m))
        v.scalars_f += torch.stack([(lse * lse).sum(), ent.sum(), conf.sum(), m0.sum()])
        inside = ok & (m >= 0) & (m <= MARGIN_MAX)
        idx = (m0.clamp(0, MARGIN_MAX) / MARGIN_MAX * MARGIN_BINS).long().clamp_max(MARGIN_BINS - 1)
        v.margin_hist.index_add_(0, idx, inside.to(torch.int64))
        v.margin_below += ((m0.unsqueeze(1) < self.thresholds) & ok.unsqueeze(1)).sum(0)
        zero = torch.zeros((), dtype=torch.int64, device=m.device)
        v.scalars_i += torch.stack(
            [
                tokens if tokens is not None else zero,
                ok.sum(),
                (ok & (m < 0)).sum(),
                (ok & (m > MARGIN_MAX)).sum(),
            ]
        )

    def reduce(self, group: object | None = None) -> None:
        """Sum the window's statistics over the ranks of ``group`` (a no-op outside torch.distributed)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        dist.all_reduce(self.ints, op=dist.ReduceOp.SUM, group=group)  # type: ignore[arg-type]
        dist.all_reduce(self.floats, op=dist.ReduceOp.SUM, group=group)  # type: ignore[arg-type]

    def zero(self) -> None:
        self.ints.zero_()
        self.floats.zero_()

    def to_host(self) -> dict[int, LiveLayer]:
        """The window as inspect's accumulators (one copy of each buffer to the host)."""
        ints = self.ints.cpu()
        floats = self.floats.cpu()
        host = DeviceStats.__new__(DeviceStats)
        host.views = {}
        oi = of = 0
        for layer, (e, _) in self.layers.items():
            si, sf = _LayerViews.sizes(e)
            host.views[layer] = _LayerViews(ints[oi : oi + si], floats[of : of + sf], e)
            oi += si
            of += sf
        out: dict[int, LiveLayer] = {}
        for layer, (e, k) in self.layers.items():
            v = host.views[layer]
            live = LiveLayer(layer, e, k, self.cold_eps)
            tokens, m_tokens, m_under, m_over = (int(x) for x in v.scalars_i.tolist())
            lse_sq, ent, conf, m_sum = (float(x) for x in v.scalars_f.tolist())
            live.load.counts = v.counts.clone()
            live.load.top1_counts = v.top1.clone()
            live.load.tokens = tokens
            rs = live.router
            rs.tokens = tokens
            rs.prob_sum = v.prob_sum.clone()
            rs.softmax_sum = v.softmax_sum.clone()
            rs.hf_counts = v.hf_counts.clone()
            rs.lse_sq_sum, rs.entropy_sum, rs.confidence_sum = lse_sq, ent, conf
            rs.margin_tokens, rs.margin_sum, rs.margin_under, rs.margin_over = (
                m_tokens,
                m_sum,
                m_under,
                m_over,
            )
            rs.margin_hist = v.margin_hist.clone()
            rs.margin_below = v.margin_below.clone()
            live.has_logits = True
            out[layer] = live
        return out
