"""``moediag watch SRC... --format F --listen HOST:PORT``: follow a serving system's routing dumps.

A thin adapter over :class:`moediag.watch.Watcher` and :class:`moediag.live.prometheus.PrometheusMetrics`:
parse flags, build the rule settings (``--check RULE=VALUE``, ``[tool.moediag.check]``), start the server,
run until SIGTERM/SIGINT (or the first alert with ``--exit-on-alert``), save the state.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import typer

from moediag.cli.app import app, echo_err, finish
from moediag.errors import UsageError

_FORMATS = "sglang | vllm | trtllm | megatron | trace"


def _check_flags(specs: list[str]) -> dict[str, Any]:
    from moediag.checks import KEYS

    flags: dict[str, Any] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not value.strip():
            raise UsageError(f"--check {spec!r}: expected RULE=VALUE, e.g. --check max_vio=0.5")
        if name not in KEYS:
            raise UsageError(f"--check {spec!r}: unknown rule or option {name!r}; see docs/checks.md")
        flags[name] = value.strip()
    return flags


def _layers(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(f"--layers takes comma-separated layer indices, got {value!r}") from None


@app.command("watch")
def watch_command(
    src: list[Path] = typer.Argument(..., metavar="SRC...", help="Folder(s) or file(s) the server writes."),
    format: str = typer.Option(..., "--format", "-f", metavar="FORMAT", help=f"Dump format: {_FORMATS}."),
    listen: str = typer.Option(
        "127.0.0.1:9464",
        "--listen",
        metavar="HOST:PORT",
        help="Serve /metrics and /healthz here (port 0: any).",
    ),
    no_listen: bool = typer.Option(False, "--no-listen", help="Serve nothing (alerts and sinks only)."),
    check: list[str] = typer.Option(
        [],
        "--check",
        metavar="RULE=VALUE",
        help="A rule threshold or option, as for moediag check (max_vio=0.5, max_dead=off); repeatable.",
    ),
    config: Path | None = typer.Option(
        None, "--config", help="A TOML file with a tool.moediag.check table (default: found from here up)."
    ),
    no_checks: bool = typer.Option(False, "--no-checks", help="Evaluate no rules."),
    exit_on_alert: bool = typer.Option(
        False, "--exit-on-alert", help="Stop with exit code 1 at the first alert (batch jobs)."
    ),
    once: bool = typer.Option(
        False, "--once", help="Read what is there now, report one window and exit (no server)."
    ),
    window_steps: int | None = typer.Option(
        None, "--window-steps", metavar="N", help="The window covers the last N steps."
    ),
    window_seconds: float | None = typer.Option(
        60.0, "--window-seconds", metavar="S", help="The window covers the last S seconds (0: no time limit)."
    ),
    judge_windows: int = typer.Option(
        3,
        "--judge-windows",
        metavar="W",
        help="Cold for W windows in a row = dead; MaxVio rising for W = alert.",
    ),
    interval: float = typer.Option(1.0, "--interval", metavar="S", help="Seconds between polls and reports."),
    settle: float = typer.Option(
        1.0, "--settle", metavar="S", help="A dump is read once its size has not changed for S seconds."
    ),
    state: Path | None = typer.Option(
        None,
        "--state",
        metavar="FILE",
        help="Resume from / save to this state file (default: under $XDG_STATE_HOME/moediag/).",
    ),
    no_state: bool = typer.Option(False, "--no-state", help="Keep no state: read everything on each start."),
    per_expert: str = typer.Option(
        "off", "--per-expert", metavar="off|all|top:N", help="Export per-expert load shares (bounded series)."
    ),
    sink: list[str] = typer.Option(
        [],
        "--sink",
        metavar="SPEC",
        help="Also write each report to a sink (jsonl:PATH, tensorboard:DIR, ...).",
    ),
    num_experts: int | None = typer.Option(
        None, "--num-experts", metavar="N", help="Experts per layer, when dumps lack it."
    ),
    top_k: int | None = typer.Option(
        None, "--top-k", metavar="K", help="Experts per token, when count dumps lack it."
    ),
    layers: str | None = typer.Option(
        None,
        "--layers",
        metavar="L,L,...",
        help="Model layer index of each MoE layer, in source order (vllm), e.g. 1,3,5.",
    ),
    threads: int = typer.Option(
        1, "--threads", metavar="N", help="torch threads (1: leave the cores to the server it watches)."
    ),
) -> None:
    """Follow a serving system's routing dumps; serve Prometheus metrics; evaluate rules per window.

    Reads new dump files once complete and lines appended to JSONL files, incrementally (a restart resumes
    from the state file). Ends cleanly on SIGTERM or SIGINT. See docs/watch.md.

    Example: moediag watch /var/dumps --format sglang --listen 127.0.0.1:9464 --window-steps 200
    --check max_vio=1.5
    """
    from moediag.checks.config import load_config

    try:
        from moediag.live.prometheus import PrometheusMetrics, parse_listen
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UsageError(
            f"moediag watch needs prometheus_client ({exc}): pip install 'moediag[watch]'"
        ) from None
    from moediag.live.sinks import make_sink
    from moediag.watch import DecodeOptions, Watcher, WatchOptions
    from moediag.watch.decoders import parse_watch_format
    from moediag.watch.state import check_outside, default_state_path

    fmt = parse_watch_format(format)
    for name, value in (("--interval", interval), ("--settle", settle), ("--window-seconds", window_seconds)):
        if value is not None and value < 0:
            raise UsageError(f"{name} must not be negative, got {value}")
    if window_steps is not None and window_steps < 1:
        raise UsageError(f"--window-steps must be at least 1, got {window_steps}")
    if judge_windows < 1:
        raise UsageError(f"--judge-windows must be at least 1, got {judge_windows}")
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    import torch

    torch.set_num_threads(threads)  # small tensors per record: more threads only spin against the server
    host, port = parse_listen(listen)
    sources = list(src)
    checks = None if no_checks else load_config(config, _check_flags(check))
    state_path = None if no_state else (state or default_state_path(sources, fmt.value))
    for spec in sink:
        scheme, _, arg = spec.partition(":")
        if scheme in ("jsonl", "tensorboard") and arg:
            check_outside(Path(arg), sources)
    options = WatchOptions(
        format=fmt,
        decode=DecodeOptions(num_experts=num_experts, top_k=top_k, layer_ids=_layers(layers)),
        window_steps=window_steps,
        window_seconds=window_seconds or None,
        interval=interval,
        settle=0.0 if once else settle,
        judge_windows=judge_windows,
        check=checks,
        state_path=state_path,
    )
    watcher = Watcher(sources, options)
    metrics = PrometheusMetrics(rules=watcher.rules(), per_expert=per_expert, health=watcher.healthy)
    counters = {
        name: metrics.counter(f"moediag_watch_{name}", help) for name, help in _counter_help().items()
    }
    watcher.on_count(lambda name, n: counters[name].inc(n))
    sinks = [metrics, *(make_sink(s) for s in sink)]
    watcher.sinks = sinks
    try:
        if once:
            watcher.poll()
            _, alerts = watcher.report()
            watcher.save()
            _summary(watcher, "done")
            finish(1 if exit_on_alert and alerts else 0)
            return
        if not no_listen:
            server = metrics.serve(host, port)
            echo_err(f"moediag watch: serving {server.url}/metrics and {server.url}/healthz")
        stop = threading.Event()
        stopped_by: list[str] = []

        def on_signal(signum: int, frame: Any) -> None:
            stopped_by.append(signal.Signals(signum).name)
            stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = watcher.run(stop, exit_on_alert=exit_on_alert)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        _summary(watcher, f"stopped ({stopped_by[0]})" if stopped_by else "stopped on an alert")
        finish(code)
    finally:
        for each in sinks:
            each.close()


def _counter_help() -> dict[str, str]:
    from moediag.watch import WATCH_COUNTERS

    return WATCH_COUNTERS


def _summary(watcher: Any, how: str) -> None:
    c = watcher.counters
    echo_err(
        f"moediag watch: {how}: {c['files']} files, {c['records']} records, {watcher.step} steps, "
        f"{c['bad_files']} bad files, {c['bad_lines']} bad lines, {watcher.alerts_seen} alerts"
    )
