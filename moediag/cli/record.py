"""``moediag record MODEL_DIR --text FILE -o TRACE``: a thin adapter over :func:`moediag.record.record`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import typer

from moediag.cli.app import app, echo_err
from moediag.cli.common import stderr_console
from moediag.cli.flags import is_quiet
from moediag.cli.options import OUTPUT, RUN, Force
from moediag.render.words import human_size, plural


def _progress() -> tuple[Callable[[int, int], None] | None, Callable[[], None]]:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""
    if not sys.stderr.isatty() or is_quiet():
        return None, lambda: None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("recording"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tokens"),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )
    task = bar.add_task("record", total=None)
    bar.start()

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar.stop


@app.command("record")
def record_command(
    model_dir: Path = typer.Argument(
        ..., metavar="MODEL_DIR", help="A local transformers model folder (config.json + weights)."
    ),
    text: list[Path] = typer.Option(
        ...,
        "--text",
        "-t",
        help="Text file to run; repeat for several domains (each named by its file stem).",
        metavar="FILE",
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Trace to write: one file if it ends in .safetensors, else a folder of shards "
        "(replaced when complete).",
        rich_help_panel=OUTPUT,
        metavar="TRACE",
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", help="Record at most this many tokens in all.", metavar="N"
    ),
    seq_len: int = typer.Option(512, "--seq-len", help="Tokens per sequence.", metavar="N"),
    batch_size: int = typer.Option(8, "--batch-size", help="Sequences per forward.", metavar="N"),
    device: str = typer.Option(
        "auto", "--device", help="auto, cpu or cuda.", rich_help_panel=RUN, metavar="auto|cpu|cuda"
    ),
    dtype: str = typer.Option(
        "auto",
        "--dtype",
        help="Model dtype: auto, float32, bfloat16 or float16.",
        rich_help_panel=RUN,
        metavar="auto|float32|bfloat16|float16",
    ),
    router_inputs: bool = typer.Option(
        False,
        "--router-inputs/--no-router-inputs",
        help="Also store each router's input (for replay; large).",
        rich_help_panel=OUTPUT,
    ),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help="Run modelling code from the model folder (local files only).",
        rich_help_panel=RUN,
    ),
    force: Force = False,
) -> None:
    """Run a transformers causal LM over text and record its routing into a v1 trace.

    Example: moediag record ./tiny-mixtral --text prose.txt --text code.py -o trace/ --max-tokens 20000
    """
    from moediag.io.outputs import check_output
    from moediag.record import record

    check_output(output, [model_dir, *text], force=force, folder=True)
    update, stop = _progress()
    try:
        result = record(
            model_dir,
            text,
            output,
            max_tokens=max_tokens,
            seq_len=seq_len,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            router_inputs=router_inputs,
            trust_remote_code=trust_remote_code,
            progress=update,
        )
    finally:
        stop()
    recomputed = [str(k) for k, v in result.logits_source.items() if v != "output"]
    note = f"; logits recomputed from router weights for layers {', '.join(recomputed)}" if recomputed else ""
    echo_err(
        f"recorded {plural(result.tokens, 'token')} x {plural(len(result.layers), 'MoE layer')} "
        f"({result.num_experts} experts, "
        f"top-{result.top_k}, {result.score_function}; tokenizer {result.tokenizer}) -> {result.path} "
        f"({human_size(result.bytes)}, {result.seconds:.1f} s){note}"
    )
