"""Options that several commands share, declared once (typer ``Annotated`` aliases) with their help panel.

A command writes ``num_experts: NumExperts = None`` and gets the same flag, metavar, help and group in
every command's ``--help``; docs/cli.md describes each once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from moediag.cli.common import PATH_WINDOW_HELP, SCHEDULER_HELP, WORKERS_HELP
from moediag.io.outputs import FORCE_HELP

# help panels, in the order a reader needs them (moediag/cli/help.py prints Arguments first, Options last)
OUTPUT = "Output"
ROUTING = "Routing metadata (when the trace lacks it)"
ANALYSIS = "Analysis"
CHECKPOINT = "Checkpoints"
SCALE = "Memory and parallelism"
WHAT_IF = "What-ifs"
RUN = "Device and precision"
EP = "Expert parallelism"

Force = Annotated[bool, typer.Option("--force", help=FORCE_HELP, rich_help_panel=OUTPUT)]
NumExperts = Annotated[
    int | None,
    typer.Option("--num-experts", metavar="N", help="Experts per layer.", rich_help_panel=ROUTING),
]
TopK = Annotated[
    int | None,
    typer.Option("--top-k", metavar="K", help="Experts chosen per token.", rich_help_panel=ROUTING),
]
ScoreFunction = Annotated[
    str | None,
    typer.Option(
        "--score-function",
        metavar="NAME",
        help="How router logits become scores: softmax, sigmoid or topk_softmax.",
        rich_help_panel=ROUTING,
    ),
]
ChunkTokens = Annotated[
    int | None,
    typer.Option(
        "--chunk-tokens", metavar="N", help="Tokens read per chunk (the memory bound).", rich_help_panel=SCALE
    ),
]
Workers = Annotated[
    int | None, typer.Option("--workers", "-w", metavar="N", help=WORKERS_HELP, rich_help_panel=SCALE)
]
Scheduler = Annotated[
    str | None,
    typer.Option("--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP, rich_help_panel=SCALE),
]
ColdEps = Annotated[
    float,
    typer.Option(
        "--cold-eps",
        metavar="EPS",
        help="An expert is cold when its share of assignments is below EPS / E.",
        rich_help_panel=ANALYSIS,
    ),
]
CapacityGroup = Annotated[
    int,
    typer.Option(
        "--capacity-group",
        metavar="N",
        help="Tokens per capacity group when the trace has no sequence ids.",
        rich_help_panel=ANALYSIS,
    ),
]
MinCapacity = Annotated[
    int,
    typer.Option(
        "--min-capacity",
        metavar="N",
        help="Capacity floor per expert and group (DeepSpeed's min_capacity; 0 = none).",
        rich_help_panel=ANALYSIS,
    ),
]
PathWindow = Annotated[
    list[str] | None,
    typer.Option("--path-window", metavar="FIRST:LAST", help=PATH_WINDOW_HELP, rich_help_panel=ANALYSIS),
]
Weights = Annotated[
    bool,
    typer.Option(
        "--weights/--no-weights",
        help="Read expert and router weights for router and redundancy diagnostics.",
        rich_help_panel=CHECKPOINT,
    ),
]
RedundancyThreshold = Annotated[
    float,
    typer.Option(
        "--redundancy-threshold",
        metavar="COSINE",
        help="Cosine similarity above which two experts count as duplicates.",
        rich_help_panel=CHECKPOINT,
    ),
]
#: help of ``--sample`` (inspect, report and check take it for checkpoints)
SAMPLE_HELP = (
    "Fraction of each expert's rows the redundancy screen reads; candidate pairs are then verified on the "
    "full weights. 1 reads every row exactly (and finds a NaN in any row, for max_nonfinite)."
)
Sample = Annotated[
    float,
    typer.Option("--sample", metavar="FRACTION", help=SAMPLE_HELP, rich_help_panel=CHECKPOINT),
]
Layer = Annotated[
    int | None,
    typer.Option("--layer", "-l", metavar="L", help="Only this layer (the model's own index)."),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="A TOML file with a tool.moediag.check table (default: moediag.toml or pyproject.toml, "
        "from here upward).",
    ),
]


def json_option(doc: str) -> object:
    """``--json``: the machine-readable result on stdout, documented in ``doc``."""
    return typer.Option("--json", help=f"Print the machine-readable result ({doc}).", rich_help_panel=OUTPUT)
