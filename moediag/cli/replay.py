"""``moediag replay CHECKPOINT TRACE``: recompute routing from recorded router inputs, with what-ifs."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from moediag.cli.app import app, echo_err, finish
from moediag.cli.common import print_json, progress_bar, stdout_console
from moediag.cli.options import EP, OUTPUT, RUN, WHAT_IF
from moediag.errors import ExitCode, UsageError
from moediag.options import BY_NAME, default


def _check_order(checkpoint: Path, trace: Path) -> None:
    """A hint instead of a format error when the two arguments are swapped or of the wrong kind."""
    from moediag.errors import MoediagError
    from moediag.io.inputs import detect_kind

    try:
        kinds = detect_kind(checkpoint), detect_kind(trace)
    except MoediagError:
        return  # the reader that opens it names the file and the problem
    if kinds == ("trace", "checkpoint"):
        raise UsageError(
            f"the arguments are swapped: {checkpoint} is a trace and {trace} a checkpoint; "
            f"replay takes CHECKPOINT TRACE: moediag replay {trace} {checkpoint}"
        )
    if kinds[0] == "trace":
        raise UsageError(f"{checkpoint} is a trace, but replay's first argument is the CHECKPOINT")
    if kinds[1] == "checkpoint":
        raise UsageError(f"{trace} is a checkpoint, but replay's second argument is the TRACE")


@app.command("replay")
def replay_cmd(
    checkpoint: Path = typer.Argument(
        ..., metavar="CHECKPOINT", help="Checkpoint (folder, .safetensors or index .json)."
    ),
    trace: Path = typer.Argument(
        ..., metavar="TRACE", help="Trace recorded with router inputs (moediag record --router-inputs)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the machine-readable result (docs/replay.md).", rich_help_panel=OUTPUT
    ),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto (CUDA when available), cpu or cuda[:N].",
        rich_help_panel=RUN,
        metavar="DEVICE",
    ),
    dtype: str = typer.Option(
        "fp32",
        "--dtype",
        help="Router GEMM precision: fp32, bf16 or fp16.",
        rich_help_panel=RUN,
        metavar="fp32|bf16|fp16",
    ),
    top_k: int | None = typer.Option(
        None,
        "--top-k",
        help="What if each token chose this many experts.",
        rich_help_panel=WHAT_IF,
        metavar="K",
    ),
    capacity_factor: float | None = typer.Option(
        None,
        "--capacity-factor",
        help="What if each expert took at most ceil(CF*k*T/E) per group.",
        rich_help_panel=WHAT_IF,
        metavar="CF",
    ),
    drop_policy: str = typer.Option(
        "token-order",
        "--drop-policy",
        help="Which assignments a full expert drops first: token-order (later tokens), highest-weight "
        "(lowest weights), first-choices-first (later choices); the total rate is the same for all.",
        rich_help_panel=WHAT_IF,
        metavar="POLICY",
    ),
    min_capacity: int = typer.Option(
        0,
        "--min-capacity",
        help="Capacity floor per expert and group (DeepSpeed's min_capacity; 0 = none).",
        rich_help_panel=WHAT_IF,
        metavar="N",
    ),
    capacity_group: int = typer.Option(
        default("capacity_group"),
        "--capacity-group",
        help=BY_NAME["capacity_group"].help,
        rich_help_panel=WHAT_IF,
        metavar="N",
    ),
    no_bias: bool = typer.Option(
        False, "--no-bias", help="What if the selection bias were reset to 0.", rich_help_panel=WHAT_IF
    ),
    bias_file: Path | None = typer.Option(
        None,
        "--bias",
        help="Selection biases to use instead (.safetensors layers.L.selection_bias or JSON).",
        rich_help_panel=WHAT_IF,
        metavar="FILE",
    ),
    noise: float | None = typer.Option(
        None,
        "--noise",
        help="Add N(0, SIGMA²) to the logits: share of tokens whose top-k set flips.",
        rich_help_panel=WHAT_IF,
        metavar="SIGMA",
    ),
    samples: int = typer.Option(
        8, "--samples", help="Noise samples per token.", rich_help_panel=WHAT_IF, metavar="N"
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise.", rich_help_panel=WHAT_IF, metavar="N"),
    ep_size: int | None = typer.Option(
        None,
        "--ep-size",
        help="Expert-parallel ranks: balancedness per layer.",
        rich_help_panel=EP,
        metavar="N",
    ),
    placement: str = typer.Option(
        "contiguous",
        "--placement",
        help="contiguous, balanced, hierarchical (DeepSeek EPLB, needs --nodes), or a placement JSON file.",
        rich_help_panel=EP,
        metavar="NAME|FILE",
    ),
    replicas: int = typer.Option(
        0,
        "--replicas",
        help="With --placement balanced or hierarchical: extra expert copies.",
        rich_help_panel=EP,
        metavar="N",
    ),
    target_balancedness: float | None = typer.Option(
        None,
        "--target-balancedness",
        help="Instead of --replicas: the fewest replicas whose placement reaches this balancedness "
        "in every layer.",
    ),
    nodes: int | None = typer.Option(
        None,
        "--nodes",
        help="EP nodes (ranks numbered node by node): adds per-node loads.",
        rich_help_panel=EP,
        metavar="N",
    ),
    expert_groups: int | None = typer.Option(
        None,
        "--expert-groups",
        help="Hierarchical placement: expert groups (default: the router's n_group).",
        rich_help_panel=EP,
        metavar="N",
    ),
    placement_out: Path | None = typer.Option(
        None,
        "--placement-out",
        help="Write the placement evaluated (e.g. the balanced proposal) as JSON.",
        rich_help_panel=OUTPUT,
        metavar="FILE",
    ),
    chunk_tokens: int | None = typer.Option(
        None, "--chunk-tokens", help="Tokens per chunk (memory bound).", rich_help_panel=RUN, metavar="N"
    ),
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
    if placement_out is not None:
        from moediag.io.outputs import check_output

        inputs: list[str | os.PathLike[str]] = [checkpoint, trace]
        inputs += [placement] if os.path.exists(placement) else []
        inputs += [bias_file] if bias_file else []
        check_output(placement_out, inputs, flag="--placement-out")
    bias = None if no_bias else (load_bias_file(bias_file) if bias_file is not None else "checkpoint")
    _check_order(checkpoint, trace)
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
            target_balancedness=target_balancedness,
            nodes=nodes,
            expert_groups=expert_groups,
            chunk_tokens=chunk_tokens,
            capacity_group=capacity_group,
            min_capacity=min_capacity,
            seed=seed,
            progress=advance,
        )
    doc = result.to_dict()
    for note in result.notes:
        echo_err(f"moediag: note: {note}")
    if placement_out is not None:
        from moediag.replay.placement_file import save_placement

        save_placement(placement_out, ep_size or 1, result.placement, result.settings["replicas"])
        echo_err(f"wrote placement to {placement_out}")
    if as_json:
        print_json(doc)
    else:
        from moediag.render.terminal.replay_table import render_replay

        render_replay(doc, stdout_console())
    if require_match:
        from moediag.analysis.verdict import replay_verdict

        if replay_verdict(doc).level == "mismatch":  # the library's judgement: near-ties and no routing pass
            finish(ExitCode.CHECK_FAILED)
