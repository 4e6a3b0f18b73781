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

Layout: ``run`` (:func:`replay`), ``engine`` (the replayer), ``layer`` (per-layer counts), ``result``
(the document), ``settings`` (dtype, bias file, constants), ``expert_parallel`` (the EP what-if), and the
placements it uses: ``ranks``, ``search`` (EPLB and the local search), ``placement`` (the policies),
``placement_file``; ``device`` (resolving ``--device``).
"""

from __future__ import annotations

from moediag.replay.device import resolve_device
from moediag.replay.expert_parallel import a2a_bytes
from moediag.replay.layer import LayerReplay
from moediag.replay.placement import ReplicaPlan, balanced, hierarchical, plan_replicas
from moediag.replay.placement_file import PlacementFile, load_placement, save_placement
from moediag.replay.ranks import PLACEMENT_FORMAT, check_placement, contiguous, node_loads, rank_loads
from moediag.replay.result import ReplayResult, skip_lines
from moediag.replay.run import replay
from moediag.replay.settings import DTYPES, MARGIN_EDGES, TIE_EPS, load_bias_file, resolve_dtype

__all__ = [
    "DTYPES",
    "MARGIN_EDGES",
    "PLACEMENT_FORMAT",
    "TIE_EPS",
    "LayerReplay",
    "PlacementFile",
    "ReplayResult",
    "ReplicaPlan",
    "a2a_bytes",
    "balanced",
    "check_placement",
    "contiguous",
    "hierarchical",
    "load_bias_file",
    "load_placement",
    "node_loads",
    "plan_replicas",
    "rank_loads",
    "replay",
    "resolve_device",
    "resolve_dtype",
    "save_placement",
    "skip_lines",
]
