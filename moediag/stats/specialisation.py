"""Expert specialisation per layer: by domain, by vocabulary (OLMoE sec. 5; Mixtral sec. 5).

- **domain share** (needs ``tokens.domain``): share(i, D) = tokens of domain D with expert i in their top-k /
  tokens of D; with no specialisation every share is k/E.
- **specialisation score** of a layer: the mean over domains (each domain with at least one token counts
  once) of the total-variation distance between the domain's expert distribution and the layer's overall
  one, TV(p_D, p) = 1/2 sum_i |p_D,i - p_i|, where p_D,i = assignments of D's tokens to i / (assignments of
  D's tokens). 0 = every domain routes like the whole; 1 = domains use disjoint experts. Undefined (None)
  without domains.
- **vocabulary** (needs ``tokens.input_ids``): for a token id x seen at least ``min_occurrences`` times,
  share(i, x) = occurrences of x with i in the top-k / occurrences of x; its concentration is max_i
  share(i, x) (k/E with no specialisation, 1 = always the same expert). Reported: the number of such ids,
  the mean concentration and the most concentrated ids. Memory is bounded: ids are tracked in a
  :class:`~moediag.stats.sketch.KeyedSketch` of ``vocab_capacity`` ids (the most frequent ones survive;
  counts are exact while fewer distinct ids than the capacity have been seen, see ``vocab_exact``).

Consecutive-token repetition lives in :class:`moediag.stats.sequences.ConsecutiveStats`; the layer's
``specialisation`` block repeats its rate beside these figures.
"""

from __future__ import annotations

from typing import Any

import torch

from moediag.stats.batch import LayerBatch
from moediag.stats.sketch import KeyedSketch
from moediag.stats.state import Accumulator

DEFAULT_VOCAB_CAPACITY = 512
MIN_OCCURRENCES = 10
TOP_IDS = 10


def tv_distance(p: torch.Tensor, q: torch.Tensor) -> float:
    """Total-variation distance between two distributions (1/2 L1)."""
    return 0.5 * float((p - q).abs().sum())


def _add_padded(mine: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """Sum of two per-domain tables whose first dimension (domains seen so far) may differ."""
    rows = max(mine.shape[0], theirs.shape[0])
    out = torch.zeros((rows, *mine.shape[1:]), dtype=mine.dtype)
    out[: mine.shape[0]] += mine
    out[: theirs.shape[0]] += theirs
    return out


class SpecialisationStats(Accumulator):
    """Domain x expert assignment counts and a bounded per-token-id expert count table."""

    num_experts: int
    top_k: int
    domain_counts: torch.Tensor
    domain_tokens: torch.Tensor
    vocab: KeyedSketch

    def __init__(self, num_experts: int, top_k: int, vocab_capacity: int = DEFAULT_VOCAB_CAPACITY) -> None:
        self.add_setting("num_experts", num_experts)
        self.add_setting("top_k", top_k)
        # [D, E] assignments and [D] tokens per domain; D grows with the largest domain id seen
        self.add_state("domain_counts", torch.zeros(0, num_experts, dtype=torch.int64), _add_padded)
        self.add_state("domain_tokens", torch.zeros(0, dtype=torch.int64), _add_padded)
        shapes = {"tokens": ((), torch.int64), "experts": ((num_experts,), torch.int64)}
        self.add_child("vocab", KeyedSketch(1, vocab_capacity, shapes))

    def _grow(self, d: int) -> None:
        have = self.domain_tokens.numel()
        if d > have:
            self.domain_counts = torch.cat(
                [self.domain_counts, torch.zeros(d - have, self.num_experts, dtype=torch.int64)]
            )
            self.domain_tokens = torch.cat([self.domain_tokens, torch.zeros(d - have, dtype=torch.int64)])

    def update(self, batch: LayerBatch) -> None:
        n = len(batch)
        if n == 0:
            return
        e = self.num_experts
        ids = batch.ids
        if batch.domain is not None:
            dom = batch.domain.to(torch.int64)
            ok = dom >= 0
            if bool(ok.any()):
                d = int(dom[ok].max()) + 1
                self._grow(d)
                self.domain_tokens[:d] += torch.bincount(dom[ok], minlength=d)
                k = ids.shape[1]
                flat_dom = dom.repeat_interleave(k)
                flat_ids = ids.reshape(-1)
                sel = (flat_dom >= 0) & (flat_ids >= 0)
                pairs = torch.bincount(flat_dom[sel] * e + flat_ids[sel], minlength=d * e).view(d, e)
                self.domain_counts[:d] += pairs
        if batch.input_ids is not None:
            k = ids.shape[1]
            uniq, inverse, counts = torch.unique(
                batch.input_ids.to(torch.int64), return_inverse=True, return_counts=True
            )

            def tallies(keep: torch.Tensor) -> dict[str, torch.Tensor]:
                slot = torch.cumsum(keep.to(torch.int64), 0) - 1
                m = int(keep.sum())
                flat_slot = slot[inverse].repeat_interleave(k)
                flat_kept = keep[inverse].repeat_interleave(k)
                flat_ids = ids.reshape(-1)
                sel = flat_kept & (flat_ids >= 0)
                experts = torch.bincount(flat_slot[sel] * e + flat_ids[sel], minlength=m * e).view(m, e)
                return {"tokens": counts[keep].to(torch.int64), "experts": experts.to(torch.int64)}

            self.vocab.add_grouped(uniq.unsqueeze(1), counts.to(torch.int64), tallies)

    def compute(self, min_occurrences: int = MIN_OCCURRENCES, top: int = TOP_IDS) -> dict[str, Any]:
        baseline = self.top_k / self.num_experts
        out: dict[str, Any] = {"baseline": baseline, "score": None, "domains": None, "vocabulary": None}
        total = self.domain_counts.sum(0).double()
        if self.domain_tokens.numel() and float(total.sum()) > 0:
            overall = total / total.sum()
            domains, tvs = [], []
            for d in range(self.domain_tokens.numel()):
                nd = int(self.domain_tokens[d])
                if nd == 0:
                    continue
                c = self.domain_counts[d].double()
                shares = c / nd
                tv = tv_distance(c / c.sum(), overall) if float(c.sum()) > 0 else None
                if tv is not None:
                    tvs.append(tv)
                top_expert = int(shares.argmax())
                domains.append(
                    {
                        "domain": d,
                        "tokens": nd,
                        "shares": shares.tolist(),
                        "max_expert": top_expert,
                        "max_share": float(shares[top_expert]),
                        "tv_distance": tv,
                    }
                )
            out["domains"] = domains
            out["score"] = sum(tvs) / len(tvs) if tvs else None
        sk = self.vocab
        if sk.total:
            tokens = sk.values["tokens"]
            keep = tokens >= min_occurrences
            ids = sk.keys[keep, 0]
            shares = sk.values["experts"][keep].double() / tokens[keep].double().unsqueeze(1)
            conc, expert = (
                shares.max(dim=1) if ids.numel() else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
            )
            order = torch.argsort(conc, descending=True, stable=True)[:top]
            out["vocabulary"] = {
                "min_occurrences": min_occurrences,
                "ids": int(ids.numel()),
                "mean_concentration": float(conc.mean()) if ids.numel() else None,
                "top": [
                    {
                        "input_id": int(ids[i]),
                        "occurrences": int(tokens[keep][i]),
                        "expert": int(expert[i]),
                        "share": float(conc[i]),
                    }
                    for i in order.tolist()
                ],
                "capacity": sk.capacity,
                "exact": sk.exact,
                "max_undercount": sk.decrement,
            }
        return out
