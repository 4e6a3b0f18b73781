"""``moediag check PATH``: the CI gate. Exit 0 when every rule passes, 1 when one fails, 2 when the input
or the configuration can't be used.

The rule flags (``--max-vio``, ``--min-entropy``, ...) and option flags (``--scope``, ``--layers``, ...) are
generated from :data:`moediag.checks.KEYS`, the same table that checks the config file.
"""

from __future__ import annotations

import inspect as _inspect
from pathlib import Path
from typing import Any

import typer

from moediag.checks import (
    KEYS,
    RULES,
)
from moediag.cli.app import app, echo_err, finish
from moediag.cli.common import SCHEDULER_HELP, WORKERS_HELP, progress_bar, stdout_console
from moediag.cli.options import CHECKPOINT, OUTPUT, ROUTING, SAMPLE_HELP, SCALE
from moediag.errors import UsageError
from moediag.io import atomic
from moediag.io.outputs import FORCE_HELP, check_output
from moediag.options import DEFAULT_SAMPLE
from moediag.render.check_formats import OutputFormat, render

RULES_PANEL = "Rules (a threshold, or off)"
RULE_SETTINGS = "Rule settings"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, replaced in one step."""
    atomic.write_atomic(path, text)


def check_cmd(**kwargs: Any) -> None:
    """Gate CI on routing health: exit 0 when every rule passes, 1 when one fails, 2 on unusable input.

    Thresholds come from defaults, then the tool.moediag.check table of pyproject.toml (or
    moediag.toml, or --config FILE), then these flags; a threshold of 'off' disables a rule.
    See docs/checks.md.

    Example: moediag check trace.safetensors --max-vio 0.5 --layers 0,3-5 --format junit -o check.xml
    """
    path: Path = kwargs.pop("path")
    fmt = OutputFormat(kwargs.pop("output_format"))
    if kwargs.pop("as_json"):
        if fmt not in (OutputFormat.TABLE, OutputFormat.JSON):
            raise UsageError(f"--json and --format {fmt.value} ask for two formats; give one")
        fmt = OutputFormat.JSON
    output: Path | None = kwargs.pop("output")
    force: bool = kwargs.pop("force")
    allow_empty: bool = kwargs.pop("allow_empty")
    if output is not None:
        extra = [p for p in (kwargs.get("config"), kwargs.get("baseline")) if p is not None]
        check_output(output, [path, *extra], force=force)
    if (chunk_tokens := kwargs.get("chunk_tokens")) is not None and chunk_tokens < 1:
        raise UsageError("--chunk-tokens must be positive")
    from moediag.api import check

    thresholds = {name: kwargs.pop(name) for name in KEYS}
    # what is left is moediag.check's own keywords (config, baseline, routing, scale, sample), by name
    report = check(path, progress=progress_bar, allow_empty=allow_empty, **kwargs, **thresholds)
    if fmt is OutputFormat.TABLE and output is None:
        from moediag.render.terminal.check_table import render_check_table

        render_check_table(report, stdout_console())
    else:
        text = render(report, fmt)
        if output is not None:
            write_atomic(output, text)
        else:
            typer.echo(text, nl=False)
        echo_err(f"moediag check: {report.verdict()}")
    finish(report.exit_code)


def _parameters() -> list[_inspect.Parameter]:
    def param(name: str, annotation: Any, default: Any) -> _inspect.Parameter:
        return _inspect.Parameter(
            name, _inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
        )

    params = [
        _inspect.Parameter(
            "path",
            _inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Path,
            default=typer.Argument(
                ..., metavar="PATH", help="A trace (.safetensors or folder) or a checkpoint."
            ),
        ),
        param(
            "config",
            Path | None,
            typer.Option(
                None,
                "--config",
                metavar="FILE",
                help="A TOML file with a tool.moediag.check table "
                "(default: moediag.toml or pyproject.toml, from here upward).",
            ),
        ),
        param(
            "baseline",
            Path | None,
            typer.Option(
                None,
                "--baseline",
                metavar="FILE",
                help="A previous 'check --format json' or "
                "'inspect --json' output: fail when a figure regresses by "
                "more than --baseline-margin.",
            ),
        ),
        param(
            "output_format",
            OutputFormat,
            typer.Option(
                OutputFormat.TABLE,
                "--format",
                "-f",
                help="How to print the result.",
                rich_help_panel=OUTPUT,
            ),
        ),
        param(
            "as_json",
            bool,
            typer.Option(
                False, "--json", help="The JSON format (the same as --format json).", rich_help_panel=OUTPUT
            ),
        ),
        param(
            "output",
            Path | None,
            typer.Option(
                None,
                "--output",
                "-o",
                metavar="FILE",
                help="Write the report here (atomically; not written when the input or config is unusable).",
                rich_help_panel=OUTPUT,
            ),
        ),
        param("force", bool, typer.Option(False, "--force", help=FORCE_HELP)),
        param(
            "allow_empty",
            bool,
            typer.Option(
                False,
                "--allow-empty",
                help="Pass (exit 0) when there is nothing to judge (no MoE layer, no routed token, a "
                "dense checkpoint) instead of exit 2 (for pipelines that mix dense and sparse models).",
            ),
        ),
        param(
            "num_experts",
            int | None,
            typer.Option(
                None, "--num-experts", metavar="N", help="Experts per layer.", rich_help_panel=ROUTING
            ),
        ),
        param(
            "top_k",
            int | None,
            typer.Option(
                None, "--top-k", metavar="K", help="Experts chosen per token.", rich_help_panel=ROUTING
            ),
        ),
        param(
            "score_function",
            str | None,
            typer.Option(
                None,
                "--score-function",
                metavar="NAME",
                help="How router logits become scores: softmax, sigmoid or topk_softmax.",
                rich_help_panel=ROUTING,
            ),
        ),
        param(
            "chunk_tokens",
            int | None,
            typer.Option(
                None, "--chunk-tokens", metavar="N", help="Tokens read per chunk.", rich_help_panel=SCALE
            ),
        ),
        param(
            "workers",
            int | None,
            typer.Option(None, "--workers", "-w", metavar="N", help=WORKERS_HELP, rich_help_panel=SCALE),
        ),
        param(
            "sample",
            float | None,
            typer.Option(
                None,
                "--sample",
                metavar="FRACTION",
                help=SAMPLE_HELP + f" Default {DEFAULT_SAMPLE:g}.",
                rich_help_panel=CHECKPOINT,
            ),
        ),
        param(
            "scheduler",
            str | None,
            typer.Option(None, "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP, rich_help_panel=SCALE),
        ),
    ]
    for key in KEYS.values():
        default = (
            "off"
            if key.default is None
            else (",".join(map(str, key.default)) if isinstance(key.default, tuple) else key.default)
        )
        if key.type == "bool":
            option = typer.Option(
                None,
                f"{key.flag}/--no-{key.flag[2:]}",
                help=f"{key.help} [config: {key.name}]",
                show_default=False,
                rich_help_panel=RULE_SETTINGS,
            )
            params.append(param(key.name, bool | None, option))
            continue
        metavar = (
            ("NUMBER|off" if key.type == "float" else "INT|off")
            if key.is_threshold
            else (
                "|".join(key.choices)
                if key.choices
                else {"float": "NUMBER", "int": "INT", "layers": "LAYERS"}.get(key.type, "TEXT")
            )
        )
        option = typer.Option(
            None,
            key.flag,
            metavar=metavar,
            show_default=False,
            help=f"{key.help} [config: {key.name}; default: {default}]",
            rich_help_panel=RULES_PANEL if key.is_threshold else RULE_SETTINGS,
        )
        params.append(param(key.name, str | None, option))
    return params


check_cmd.__signature__ = _inspect.Signature(_parameters())  # type: ignore[attr-defined]
app.command("check")(check_cmd)

__all__ = ["RULES", "check_cmd", "write_atomic"]
