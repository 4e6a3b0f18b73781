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
    BaselineMismatchError,
    CheckConfig,
    CheckReport,
    ConfigValueError,
    NothingToCheckError,
    run_checks,
)
from moediag.cli.app import app, echo_err, finish
from moediag.cli.common import SCHEDULER_HELP, WORKERS_HELP, progress_bar, stdout_console
from moediag.errors import InvalidInputError, UsageError
from moediag.io import atomic
from moediag.io.paths import FORCE_HELP, check_output
from moediag.render.check_formats import OutputFormat, render

_FIXED = (
    "path",
    "config",
    "baseline",
    "output_format",
    "output",
    "force",
    "allow_empty",
    "num_experts",
    "top_k",
    "score_function",
    "chunk_tokens",
    "workers",
    "scheduler",
)


def analysis_document(
    path: Path,
    config: CheckConfig,
    num_experts: int | None = None,
    top_k: int | None = None,
    score_function: str | None = None,
    chunk_tokens: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
) -> dict[str, Any]:
    """The ``inspect --json`` document of a trace or checkpoint, analysed with the check's settings."""
    from moediag.inputs import detect_kind

    if detect_kind(path) == "checkpoint":
        return checkpoint_document(path)
    from moediag.analysis import analyze_trace
    from moediag.cli.inspect import routing_overrides
    from moediag.stats import StatsOptions
    from moediag.stats.capacity import CAPACITY_FACTORS
    from moediag.trace import open_trace

    trace = open_trace(path, overrides=routing_overrides(num_experts, top_k, score_function))
    factors = tuple(sorted(set(CAPACITY_FACTORS) | {float(config["capacity_factor"])}))
    options = StatsOptions(
        cold_eps=float(config["cold_eps"]),
        capacity_factors=factors,
        min_capacity=int(config["min_capacity"]),
    )
    wanted = config["layers"]
    if wanted is not None:
        missing = [x for x in wanted if x not in trace.layers]
        if missing:
            have = ", ".join(map(str, sorted(trace.layers)))
            raise UsageError(f"--layers: layer {missing[0]} is not in {path} (layers: {have})")
    with progress_bar("analysing", trace.num_tokens) as advance:
        analysis = analyze_trace(
            trace,
            options=options,
            chunk_tokens=chunk_tokens,
            progress=advance,
            layers=wanted,
            workers=workers,
            scheduler=scheduler,
        )
    doc = analysis.to_dict()
    for row in doc["layers"]:
        if row.get("bias") is None and row.get("selection_bias") is None:
            bias = trace.selection_bias(int(row["layer"]))
            if bias is not None:
                row["bias"] = {"min": float(bias.min()), "max": float(bias.max()), "mean": float(bias.mean())}
    return doc


def checkpoint_document(path: Path) -> dict[str, Any]:
    """A checkpoint's ``inspect --json`` document, from the checkpoint analysis (moediag.checkpoint)."""
    import importlib

    for module_name, func_name in (
        ("moediag.checkpoint", "analyze_checkpoint"),
        ("moediag.checkpoint.analysis", "analyze_checkpoint"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        func = getattr(module, func_name, None)
        if func is not None:
            result = func(path, weights=True)
            doc = result.to_dict() if hasattr(result, "to_dict") else dict(result)
            doc.setdefault("meta", {}).setdefault("kind", "checkpoint")
            doc["meta"].setdefault("path", str(path))
            return dict(doc)
    raise InvalidInputError("checkpoint analysis is not available in this version of moediag", path)


def load_baseline(path: Path, config: CheckConfig) -> dict[str, Any]:
    from moediag.checks import baseline_figures
    from moediag.io import strict_json
    from moediag.io.paths import JSON_MAX_BYTES

    if not path.exists() and not path.is_symlink():
        raise InvalidInputError("baseline file not found", path)
    # a regular file (no FIFO, no /dev/zero), size-capped, depth- and number-checked
    doc = strict_json.load_file(path, limit=JSON_MAX_BYTES, what="baseline")
    try:
        return baseline_figures(doc, config)
    except ConfigValueError as exc:
        raise InvalidInputError(f"baseline: {exc}", path) from None


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, replaced in one step."""
    atomic.write_atomic(path, text)


def run_check(
    path: Path,
    *,
    config_file: Path | None = None,
    baseline: Path | None = None,
    flags: dict[str, Any] | None = None,
    num_experts: int | None = None,
    top_k: int | None = None,
    score_function: str | None = None,
    chunk_tokens: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    allow_empty: bool = False,
) -> CheckReport:
    """Resolve the settings, analyse ``path``, and run the rules (what the command does, minus output)."""
    from moediag.config import load_config

    config = load_config(config_file, flags or {})
    base = load_baseline(baseline, config) if baseline is not None else None
    doc = analysis_document(
        path, config, num_experts, top_k, score_function, chunk_tokens, workers, scheduler
    )
    doc.setdefault("meta", {})["path"] = str(path)
    try:
        return run_checks(
            doc, config, base, None if baseline is None else str(baseline), allow_empty=allow_empty
        )
    except NothingToCheckError as exc:
        raise InvalidInputError(str(exc), path) from None
    except BaselineMismatchError as exc:
        raise InvalidInputError(f"baseline: {exc}", baseline) from None
    except ConfigValueError as exc:
        raise UsageError(f"--layers: {exc}") from None


def check_cmd(**kwargs: Any) -> None:
    """Gate CI on routing health: exit 0 when every rule passes, 1 when one fails, 2 on unusable input.

    Thresholds come from defaults, then the tool.moediag.check table of pyproject.toml (or
    moediag.toml, or --config FILE), then these flags; a threshold of 'off' disables a rule.
    See docs/checks.md.

    Example: moediag check trace.safetensors --max-vio 0.5 --layers 0,3-5 --format junit -o check.xml
    """
    path: Path = kwargs.pop("path")
    fmt = OutputFormat(kwargs.pop("output_format"))
    output: Path | None = kwargs.pop("output")
    force: bool = kwargs.pop("force")
    allow_empty: bool = kwargs.pop("allow_empty")
    if output is not None:
        extra = [p for p in (kwargs.get("config"), kwargs.get("baseline")) if p is not None]
        check_output(output, [path, *extra], force=force)
    if (chunk_tokens := kwargs.get("chunk_tokens")) is not None and chunk_tokens < 1:
        raise UsageError("--chunk-tokens must be positive")
    report = run_check(
        path,
        config_file=kwargs.pop("config"),
        baseline=kwargs.pop("baseline"),
        num_experts=kwargs.pop("num_experts"),
        top_k=kwargs.pop("top_k"),
        score_function=kwargs.pop("score_function"),
        chunk_tokens=kwargs.pop("chunk_tokens"),
        workers=kwargs.pop("workers"),
        scheduler=kwargs.pop("scheduler"),
        allow_empty=allow_empty,
        flags={name: kwargs.pop(name) for name in KEYS},
    )
    if fmt is OutputFormat.TABLE and output is None:
        from moediag.render.check_table import render_check_table

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
                help="A previous 'check --format json' or "
                "'inspect --json' output: fail when a figure regresses by "
                "more than --baseline-margin.",
            ),
        ),
        param(
            "output_format",
            OutputFormat,
            typer.Option(
                OutputFormat.TABLE, "--format", "-f", help="table | json | junit | markdown | github."
            ),
        ),
        param(
            "output",
            Path | None,
            typer.Option(
                None,
                "--output",
                "-o",
                help="Write the report here (atomically; not written when the input or config is unusable).",
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
            typer.Option(None, "--num-experts", help="Experts per layer, if the trace lacks it."),
        ),
        param(
            "top_k",
            int | None,
            typer.Option(None, "--top-k", help="Experts per token, if the trace lacks it."),
        ),
        param(
            "score_function",
            str | None,
            typer.Option(
                None, "--score-function", help="softmax | sigmoid | topk_softmax, if the trace lacks it."
            ),
        ),
        param(
            "chunk_tokens", int | None, typer.Option(None, "--chunk-tokens", help="Tokens read per chunk.")
        ),
        param(
            "workers",
            int | None,
            typer.Option(None, "--workers", "-w", metavar="N", help=WORKERS_HELP),
        ),
        param(
            "scheduler",
            str | None,
            typer.Option(None, "--scheduler", metavar="ADDRESS", help=SCHEDULER_HELP),
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
                help=f"{key.help} (config: {key.name})",
                show_default=False,
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
            help=f"{key.help} (config: {key.name}; default: {default})",
        )
        params.append(param(key.name, str | None, option))
    return params


check_cmd.__signature__ = _inspect.Signature(_parameters())  # type: ignore[attr-defined]
app.command("check")(check_cmd)

__all__ = ["RULES", "analysis_document", "check_cmd", "run_check", "write_atomic"]
