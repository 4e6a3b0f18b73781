"""The weights pass: router, bias and expert-redundancy diagnostics of an analysis, layer by layer, in
this process or across workers (local processes or a Dask cluster, as for traces).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moediag.checkpoint.inventory import Inventory
from moediag.checkpoint.layouts import MoEBlock
from moediag.checkpoint.reading import load_tensor_f32
from moediag.checkpoint.result import CheckpointAnalysis, LayerResult
from moediag.checkpoint.similarity import DEFAULT_CHUNK_BYTES, expert_similarity
from moediag.checkpoint.weights import bias_stats, router_stats

__all__ = ["check_weights"]


def check_weights(
    analysis: CheckpointAnalysis,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
    plan: Callable[[int], None] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> CheckpointAnalysis:
    """Fill in router, bias and expert-redundancy diagnostics of ``analysis`` (in place; returned too).

    Reads one layer at a time, in chunks of at most ``chunk_bytes`` (as float32); ``progress(n)`` is
    called with the bytes read after each chunk. ``analysis.weight_bytes()`` is the screen's total;
    ``plan(n)`` is told the bytes of each exact verification before it starts (add them to the total).
    ``workers=N`` (local processes) or ``scheduler=`` (a Dask cluster, as for traces: every worker must
    see the checkpoint at the same path) checks layers side by side, one torch thread each; progress
    then comes a layer at a time.
    """
    from moediag.analysis.runners import check_workers, open_runner, ordered, submit_task

    check_workers(workers)  # the traces' rule, before any byte is read
    inv = analysis.inventory
    args = (analysis.redundancy_threshold, chunk_bytes)
    if (workers is None or workers == 1) and scheduler is None:
        for lr in analysis.layers:
            _weights_for(inv, lr, *args, progress, plan, analysis.sample, analysis.seed)
    else:
        with open_runner(workers, scheduler) as runner:
            assert runner is not None
            n = workers if workers is not None else 4

            def submit(lr: LayerResult) -> Any:
                sub = inv.subset(_block_tensors(lr.block))
                return submit_task(runner, _layer_task, sub, lr, *args, analysis.sample, analysis.seed)

            # ordered() is typed for trace units but generic in what it submits
            results = ordered(submit, analysis.layers, 2 * n)  # type: ignore[arg-type]
            for lr, done in zip(analysis.layers, results, strict=True):
                lr.__dict__.update({k: v for k, v in done.__dict__.items() if k != "block"})
                if done.screen and plan is not None:
                    plan(done.screen["verify_bytes"])
                if progress is not None:
                    progress((done.screen or {}).get("bytes", 0) + (done.screen or {}).get("verify_bytes", 0))
    screens = [lr.screen for lr in analysis.layers if lr.screen]
    if screens:
        cand = sum(sc["candidate_pairs"] for sc in screens)
        verified = sum(len(sc["verified_experts"]) for sc in screens)
        analysis.notes.append(
            f"expert redundancy screened on a {analysis.sample:.1%} sample of rows (seed {analysis.seed}) "
            f"in {len(screens)} layer(s): {cand} candidate pair(s), {verified} expert(s) verified on the "
            "full weights; unverified experts' norms are estimates (--sample 1: every row, exactly)"
        )
    skipped = sorted({lr.weights_note for lr in analysis.layers if lr.weights_note})
    for s in skipped[:3]:
        if s not in analysis.notes:
            analysis.notes.append(s)
    analysis.weights_checked = bool(analysis.layers)
    return analysis


def _block_tensors(b: MoEBlock) -> list[str]:
    """Every tensor the weights pass of block ``b`` reads."""
    names = [n for n in (b.router, b.router_bias, b.selection_bias) if n]
    for m in b.matrices:
        names += list((m.names or {}).values()) + ([m.fused] if m.fused else [])
        names += list(m.scales.values()) if isinstance(m.scales, dict) else ([m.scales] if m.scales else [])
    return names


def _layer_task(
    inv: Inventory, lr: LayerResult, threshold: float, chunk_bytes: int, sample: float, seed: int
) -> LayerResult:
    """One layer's weights pass in a worker (one torch thread: workers share the machine's cores)."""
    from moediag.analysis.units import pinned_threads

    with pinned_threads(1):
        _weights_for(inv, lr, threshold, chunk_bytes, None, None, sample, seed)
    return lr


def _weights_for(
    inv: Inventory,
    lr: LayerResult,
    threshold: float,
    chunk_bytes: int,
    progress: Callable[[int], None] | None,
    plan: Callable[[int], None] | None = None,
    sample: float = 1.0,
    seed: int = 0,
) -> None:
    b = lr.block
    if b.router:
        lr.router = router_stats(load_tensor_f32(inv, b.router), threshold)
    if b.selection_bias:
        lr.bias = bias_stats(load_tensor_f32(inv, b.selection_bias), "selection", b.selection_bias)
    if b.router_bias:
        lr.router_bias = bias_stats(load_tensor_f32(inv, b.router_bias), "logit", b.router_bias)

    sim = expert_similarity(
        inv,
        b,
        threshold=threshold,
        chunk_bytes=chunk_bytes,
        progress=progress,
        sample=sample,
        seed=seed,
        plan=plan,
    )
    lr.screen = sim.screen
    if sim.cosine is not None:
        lr.redundant_pairs = sim.pairs
        lr.distinct_experts = sim.distinct
        lr.expert_norms = sim.norms
        lr.zero_experts = sim.zero_experts
        lr.similarity_matrices = sim.matrices
    if sim.skipped:
        lr.weights_note = (
            "expert similarity "
            + ("partial" if sim.cosine is not None else "not computed")
            + ": "
            + "; ".join(sim.skipped)
        )
    elif sim.cosine is None:
        lr.weights_note = "expert similarity not computed: no expert weight matrices found"
