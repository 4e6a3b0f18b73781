"""``moediag compare A B``: what changed between two traces (or two checkpoints).

Traces
    - On the same tokens (equal token counts and, when both have ``tokens.input_ids``, equal ids):
      router saturation per layer, streaming both traces chunk by chunk in lockstep (bounded memory):
      ``top1_agreement`` = share of tokens whose first choice is the same in A and B (random baseline 1/E)
      and ``topk_overlap`` = mean over tokens of |topk_A ∩ topk_B| / k (random baseline k/E; OLMoE's
      "router saturation"). A token excluded in either trace (mask, non-finite logits) is left out.
    - On any two traces: ``load_js_divergence`` = Jensen-Shannon divergence, base 2 (0 = same load shares,
      1 = disjoint), between the two load distributions; ``max_vio_delta`` and ``cv_delta`` (B - A); and,
      when both have ``tokens.correct``, the accuracy shift per expert (top-1 attribution) and per frequent
      path: the difference B - A with a Newcombe hybrid-score 95% interval; ``shifted`` when it excludes 0.
Checkpoints
    Router-row cosine per expert (A's row i against B's row i) and the selection-bias change per expert
    (``e_score_correction_bias`` / ``expert_bias``), found by :mod:`moediag.checkpoint.layouts`.

Layers are matched by the model's layer index; layers in only one input are left out (and listed in
``summary``). A layer whose expert count differs is an error (exit 2).

Models (``moediag compare --models``): :mod:`moediag.compare.models` (compute and quality framing).
The verdict of a comparison: :mod:`moediag.compare.verdict`.
"""

from __future__ import annotations

from moediag.compare.checkpoints import compare_checkpoints
from moediag.compare.dispatch import compare
from moediag.compare.models import ModelComparison, compare_models
from moediag.compare.result import COMPARE_JSON_FORMAT, Comparison, js_divergence
from moediag.compare.traces import aligned_chunks, compare_traces, saturation
from moediag.compare.verdict import CompareVerdict, compare_verdict

__all__ = [
    "COMPARE_JSON_FORMAT",
    "CompareVerdict",
    "Comparison",
    "ModelComparison",
    "aligned_chunks",
    "compare",
    "compare_checkpoints",
    "compare_models",
    "compare_traces",
    "compare_verdict",
    "js_divergence",
    "saturation",
]
