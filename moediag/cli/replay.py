"""``moediag replay CHECKPOINT TRACE``: recompute routing from recorded router inputs, with what-ifs."""

from __future__ import annotations

from pathlib import Path

import typer

from moediag.cli.app import app, echo_err, finish
from moediag.cli.common import print_json, progress_bar, stdout_console
from moediag.errors import ExitCode, UsageError
from moediag.options import BY_NAME, default


@app.command("replay")
def replay_cmd(
    checkpoint: Path = typer.Argument(
        ..., metavar="CHECKPOINT", help="Checkpoint (folder, .safetensors or index .json)."
    ),
    trace: Path = typer.Argument(
        ..., metavar="TRACE", help="Trace recorded with router inputs (moediag record --router-inputs)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the machine-readable result (docs/replay.md)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu or cuda[:N]."),
    dtype: str = typer.Option("fp32", "--dtype", help="Router GEMM precision: fp32, bf16 or fp16."),
    top_k: int | None = typer.Option(None, "--top-k", help="What if each token chose this many experts."),
    capacity_factor: float | None = typer.Option(
        None, "--capacity-factor", help="What if each expert took at most ceil(CF*k*T/E) per group."
    ),
    drop_policy: str = typer.Option(
        "position", "--drop-policy", help="Which assignments drop over capacity: position or probs."
    ),
    capacity_group: int = typer.Option(
        default("capacity_group"), "--capacity-group", help=BY_NAME["capacity_group"].help
    ),
    no_bias: bool = typer.Option(False, "--no-bias", help="What if the selection bias were reset to 0."),
    bias_file: Path | None = typer.Option(
        None, "--bias", help="Selection biases to use instead (.safetensors layers.L.selection_bias or JSON)."
    ),
    noise: float | None = typer.Option(
        None, "--noise", help="Add N(0, SIGMA²) to the logits: share of tokens whose top-k set flips."
    ),
    samples: int = typer.Option(8, "--samples", help="Noise samples per token."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise."),
    ep_size: int | None = typer.Option(
        None, "--ep-size", help="Expert-parallel ranks: balancedness per layer."
    ),
    placement: str = typer.Option(
        "contiguous",
        "--placement",
        help="contiguous, balanced, hierarchical (DeepSeek EPLB, needs --nodes), or a placement JSON file.",
    ),
    replicas: int = typer.Option(
        0, "--replicas", help="With --placement balanced or hierarchical: extra expert copies."
    ),
    nodes: int | None = typer.Option(
        None, "--nodes", help="EP nodes (ranks numbered node by node): adds per-node loads."
    ),
    expert_groups: int | None = typer.Option(
        None, "--expert-groups", help="Hierarchical placement: expert groups (default: the router's n_group)."
    ),
    placement_out: Path | None = typer.Option(
        None, "--placement-out", help="Write the placement evaluated (e.g. the balanced proposal) as JSON."
    ),
    chunk_tokens: int | None = typer.Option(None, "--chunk-tokens", help="Tokens per chunk (memory bound)."),
    require_match: bool = typer.Option(
        False,
        "--require-match",
        help="Exit 1 unless the replay reproduces the recorded top-k (near-ties aside).",
    ),
) -> None:
    """Route the recorded router inputs again with the checkpoint's routers: agreement and what-ifs.

    Example: moediag replay tiny-mixtral/ trace/ --top-k 3 --capacity-factor 1.25 --ep-size 2
    --placement balanced --placement-out placement.json
    """
    from moediag.replay import load_bias_file, replay
    from moediag.trace import open_trace

    if no_bias and bias_file is not None:
        raise UsageError("--no-bias and --bias exclude each other")
    if placement_out is not None and ep_size is None:
        raise UsageError("--placement-out needs --ep-size")
    bias = None if no_bias else (load_bias_file(bias_file) if bias_file is not None else "checkpoint")
    tr = open_trace(trace)
    with progress_bar("replaying", tr.num_tokens) as advance:
        result = replay(
            checkpoint,
            tr,
            device=device,
            dtype=dtype,
            top_k=top_k,
            capacity_factor=capacity_factor,
            drop_policy=drop_policy,
            bias=bias,
            noise=noise,
            samples=samples,
            ep_size=ep_size,
            placement=placement,
            replicas=replicas,
            nodes=nodes,
            expert_groups=expert_groups,
            chunk_tokens=chunk_tokens,
            capacity_group=capacity_group,
            seed=seed,
            progress=advance,
        )
    doc = result.to_dict()
    if placement_out is not None:
        from moediag.placement import save_placement

        save_placement(placement_out, ep_size or 1, result.placement, replicas)
        echo_err(f"wrote placement to {placement_out}")
    if as_json:
        print_json(doc)
    else:
        from moediag.render.replay_table import render_replay

        render_replay(doc, stdout_console())
    s = doc["summary"]
    if require_match and s["match"] is not None and s["mismatched_tokens"] > s["mismatched_near_ties"]:
        finish(ExitCode.CHECK_FAILED)
