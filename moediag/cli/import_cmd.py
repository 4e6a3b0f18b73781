"""``moediag import FORMAT SRC -o TRACE``: another system's routing dump -> a moediag trace."""

from __future__ import annotations

import typer

from moediag.cli.app import app, echo_err
from moediag.cli.options import OUTPUT, ROUTING, Force
from moediag.errors import UsageError
from moediag.importers import ImportFormat, import_routing, parse_format
from moediag.render.words import plural

_FORMATS = ", ".join(f.value for f in ImportFormat)


def _parse_layers(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        ids = [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(f"--layers takes comma-separated layer indices, got {value!r}") from None
    from moediag.checks import MAX_LAYER

    if any(not 0 <= x <= MAX_LAYER for x in ids):
        raise UsageError(f"--layers: layer indices must be in 0..{MAX_LAYER}")
    return ids


def complete_formats(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
    return [f.value for f in ImportFormat if f.value.startswith(incomplete)]


@app.command("import")
def import_command(
    format: str = typer.Argument(
        ..., metavar="FORMAT", help=f"Source format: {_FORMATS}.", autocompletion=complete_formats
    ),
    src: list[str] = typer.Argument(..., metavar="SRC...", help="Dump file(s), folder(s) or a quoted glob."),
    output: str = typer.Option(
        ...,
        "-o",
        "--output",
        help="Trace to write: a folder of shards, or one file if it ends in .safetensors.",
        rich_help_panel=OUTPUT,
        metavar="TRACE",
    ),
    num_experts: int | None = typer.Option(
        None,
        "--num-experts",
        help="Experts per layer, when the source lacks it.",
        rich_help_panel=ROUTING,
        metavar="N",
    ),
    top_k: int | None = typer.Option(
        None,
        "--top-k",
        help="Experts chosen per token, when the source lacks it.",
        rich_help_panel=ROUTING,
        metavar="K",
    ),
    score_function: str | None = typer.Option(
        None,
        "--score-function",
        help="softmax, sigmoid or topk_softmax, when the source has logits but not this.",
        rich_help_panel=ROUTING,
        metavar="NAME",
    ),
    force: Force = False,
    layers: str | None = typer.Option(
        None,
        "--layers",
        help="Model layer index of each MoE layer, in source order (hf, vllm), e.g. 1,3,5.",
        metavar="L,L,...",
    ),
) -> None:
    """Convert another system's routing dump into a moediag trace.

    Example: moediag import sglang dumps/ -o trace/ ; moediag import hf logits.pt -o t.safetensors --top-k 2
    --score-function softmax. See docs/importers.md for what each format reads and assumes.
    """
    fmt = parse_format(format)
    result = import_routing(
        fmt,
        list(src),
        output,
        num_experts=num_experts,
        top_k=top_k,
        score_function=score_function,
        layer_ids=_parse_layers(layers),
        force=force,
    )
    what = (
        plural(result.num_tokens, "token")
        if result.per_token
        else f"{plural(result.num_steps, 'step')} of counts"
    )
    echo_err(
        f"moediag: imported {fmt.value} ({result.kind}): {plural(len(result.layers), 'MoE layer')}, "
        f"{result.num_experts} experts, {what} from {plural(len(result.files), 'file')} -> {result.output}"
    )
    for note in result.notes:
        echo_err(f"  note: {note}")
