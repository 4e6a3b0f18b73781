"""``replay(checkpoint, trace, ...)``: open both, route every layer that holds router inputs, return a
:class:`~moediag.replay.result.ReplayResult`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from moediag.errors import UsageError
from moediag.replay.device import resolve_device
from moediag.replay.engine import Replayer
from moediag.replay.expert_parallel import plan_ep
from moediag.replay.placement import ReplicaPlan
from moediag.replay.placement_file import PlacementFile
from moediag.replay.result import ReplayResult
from moediag.replay.settings import BiasArg, PlacementArg, ProgressFn, resolve_dtype
from moediag.stats import StatsOptions
from moediag.stats.capacity import DEFAULT_GROUP_TOKENS, resolve_policy
from moediag.trace import Trace, open_trace


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
    (:func:`moediag.replay.placement.plan_replicas`).
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
    rp = Replayer(
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
        ep, proposed, plan = plan_ep(
            rp.layers, ep_size, placement, replicas, nodes, groups, target_balancedness
        )
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
