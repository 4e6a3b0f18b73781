"""The one routing path: router logits and/or recorded choices -> :class:`Routed`, what accumulators read.

>>> from moediag.routing import route                                  # doctest: +SKIP
>>> r = route(logits, spec=spec, bias=selection_bias)                  # doctest: +SKIP
>>> r.ids, r.weights, r.margin                                         # doctest: +SKIP

``inspect`` (:func:`moediag.analysis.layer_batch`), ``replay``, ``compare`` (and a live monitor) call
:func:`route`; nothing else turns logits into choices, weights or margins.

Score functions (shared/design/metrics.md, "score functions seen in real models"):

``softmax``       softmax over all E, then top-k (Mixtral, Qwen-MoE, OLMoE, DBRX; DeepSeek-V2). Optional
                  renormalisation of the k weights (``norm_topk_prob``).
``topk_softmax``  top-k on the logits, then softmax over the k (GPT-OSS, Granite, Megatron's default).
``sigmoid``       sigmoid scores; a selection-only bias (DeepSeek-V3 ``e_score_correction_bias``) is added
                  for choosing. Weights are the unbiased sigmoid scores of the chosen experts,
                  renormalised when ``norm_topk_prob``.

Group-limited top-k keeps the experts of the ``topk_group`` best of ``n_group`` groups, scored by the
layer's ``group_score`` rule: ``max`` (a group's best score, DeepSeek-V2), ``top2_sum`` (the sum of its
best 2, DeepSeek-V3) or ``topk_sum`` (the sum of its best ``top_k // topk_group``, Megatron-Core's
``group_limited_topk`` for softmax and sigmoid alike). Without the key, sigmoid routers use ``top2_sum``
and the others ``max`` (:func:`default_group_score`), as traces written before the key meant.

**Margin** (docs/metrics.md), defined here only: per token, the lowest *chosen* score minus the highest
*unchosen* score among the experts the routing rule allows (the ``topk_group`` groups it kept; every expert
without group limits), in probability units: the softmax probability for ``softmax`` and ``topk_softmax``
(the softmax is monotonic in the logits, so the order is the logits' order), the sigmoid score for
``sigmoid``, plus the selection bias when there is one (the bias is part of what the rule compares; for
``topk_softmax`` the softmax of the biased logits). When the
rule chose the experts the margin is never negative; a negative margin means recorded choices that are not
the rule's top-k. NaN when no allowed expert is left unchosen (k = E, or k = the allowed experts).

For load-balancing losses and router entropy every policy needs a distribution over all E experts
(``distribution``): the softmax of the logits for ``softmax`` and ``topk_softmax`` (what Megatron's aux
loss uses), and for ``sigmoid`` the sigmoid scores normalised to sum to 1 per token (what Megatron and
DeepSeek-V3's sequence-wise aux loss use).

:func:`route` is pure torch and device-agnostic, and makes no host synchronisation (no ``.item()``, no
data-dependent Python branch): checking the input (ids in range, finite logits) is the caller's job.
"""

from moediag.routing.chunk import choose, route
from moediag.routing.groups import default_group_score, group_mask, group_score_from_config
from moediag.routing.routed import Routed
from moediag.routing.rule import SCORE_FUNCTIONS, RoutingRule, grouped
from moediag.routing.scores import SoftmaxParts, combine_weights, distribution, scores, softmax_parts
from moediag.routing.topk import margin, select
from moediag.trace.schema import GROUP_SCORES

__all__ = [
    "GROUP_SCORES",
    "SCORE_FUNCTIONS",
    "Routed",
    "RoutingRule",
    "SoftmaxParts",
    "choose",
    "combine_weights",
    "default_group_score",
    "distribution",
    "group_mask",
    "group_score_from_config",
    "grouped",
    "margin",
    "route",
    "scores",
    "select",
    "softmax_parts",
]
