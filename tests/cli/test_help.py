"""The CLI surface a newcomer meets: help at 80 columns, one-line usage errors, global options anywhere,
shell completion."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from moediag.cli import app
from moediag.cli.app import split_global_options
from tests.render._traces import report_trace

runner = CliRunner()
GROUP = typer.main.get_command(app)
COMMANDS = sorted(GROUP.commands)  # type: ignore[attr-defined]
PYTHON_TYPES = re.compile(r"<(bool|int|float|str|path|Path)>|list\[|\b(NoneType|Optional)\b|\{[A-Z]+\}")


def _help(args: list[str], columns: int = 80) -> str:
    result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": str(columns), "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_fits_80_columns_with_every_flag_in_full(name: str) -> None:
    text = _help([name] if name else [])
    wide = [line for line in text.splitlines() if len(line) > 80]
    assert not wide, f"lines over 80 columns: {wide[:3]}"
    assert "…" not in text, "a flag or a help text was cut"
    assert not PYTHON_TYPES.search(text), PYTHON_TYPES.search(text)
    command = GROUP if not name else GROUP.commands[name]  # type: ignore[attr-defined]
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        for opt in [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else []:
            assert re.search(rf"(^|[\s,/]){re.escape(opt)}([\s,]|$)", text, re.M), f"{opt} missing or cut"
    usage = text.splitlines()[0]
    assert usage.startswith(f"Usage: moediag {name}".rstrip()), usage
    if name:
        assert "[OPTIONS]" in usage and "{" not in usage
        assert "Global options" in text and "--quiet" in text


def test_help_at_200_columns_keeps_paragraphs_whole() -> None:
    text = _help(["check"], columns=200)
    assert "pyproject.toml (or moediag.toml, or --config FILE)" in " ".join(text.split())
    first = next(line for line in text.splitlines() if line.startswith("  Thresholds come"))
    assert len(first) > 80  # filled to the width, not broken where the docstring's lines break
    assert max(len(line) for line in text.splitlines()) <= 100  # capped: long lines are hard to read


def test_help_groups_options_in_panels() -> None:
    text = _help(["inspect"])
    for panel in ("Output", "Routing metadata", "Analysis", "Checkpoints", "Memory and parallelism"):
        assert f"─ {panel}" in text
    assert "--weights / --no-weights" in text and "[default: --weights]" in text
    check = _help(["check"])
    assert "─ Rules (a threshold, or off)" in check and "--min-path-accuracy NUMBER|off" in check


def test_usage_lines_name_arguments_as_the_docs_do() -> None:
    assert _help(["import"]).splitlines()[0] == "Usage: moediag import [OPTIONS] FORMAT SRC..."
    assert _help(["replay"]).splitlines()[0] == "Usage: moediag replay [OPTIONS] CHECKPOINT TRACE"
    assert _help([]).splitlines()[0] == "Usage: moediag [OPTIONS] COMMAND [ARGS]..."


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["inspect", "x", "--worst", "abc"], "--worst: expected a whole number, got 'abc'"),
        (["plot", "x", "--kind", "pie", "-o", "a.png"], "--kind: 'pie' is not a figure"),
        (["check", "x", "--format", "xml"], "--format: 'xml' is not one of table, json, junit, markdown"),
        (["replay", "c", "t", "--capacity-factor", "big"], "--capacity-factor: expected a number, got 'big'"),
        (["inspect"], "missing argument PATH"),
        (["inspect", "x", "--wrst", "3"], "no such option --wrst; did you mean --worst?"),
        (["inspec", "x"], "no such command 'inspec'; did you mean 'inspect'?"),
        (["plot", "x", "--kind"], "--kind"),
        (["inspect", "x", "y"], "unexpected argument(s): y"),
        (["check", "x", "--zqxv"], "no such option --zqxv (see"),  # nothing close: no far-fetched guess
    ],
)
def test_usage_errors_are_one_plain_line(args: list[str], expected: str) -> None:
    result = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("moediag: error: ") and expected in lines[0], lines[0]
    assert not re.search(r"[╭│╰]|Value error|Input should be", result.output)
    assert result.stdout == ""


def test_no_arguments_prints_the_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage: moediag [OPTIONS] COMMAND" in result.output
    assert result.output.count("Usage:") == 1


def test_global_options_are_taken_from_anywhere_before_a_double_dash() -> None:
    from moediag.cli.flags import state

    assert split_global_options(["import", "hf", "a.pt", "--debug", "-o", "t", "--quiet"]) == [
        "import",
        "hf",
        "a.pt",
        "-o",
        "t",
    ]
    assert state["debug"] and state["quiet"] and not state["no_color"]
    assert split_global_options(["inspect", "--", "--no-color"]) == ["inspect", "--", "--no-color"]


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return report_trace(tmp_path_factory.mktemp("help") / "t.safetensors", layers=2, tokens=200)


def test_debug_after_the_subcommand_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a trace")
    plain = runner.invoke(app, ["inspect", str(bad)])
    assert plain.exit_code == 2 and "Traceback" not in plain.output
    debug = runner.invoke(app, ["inspect", str(bad), "--debug"])
    assert debug.exit_code == 2 and "Traceback" in debug.output and "No such option" not in debug.output


def test_quiet_keeps_results_and_drops_the_chatter(trace: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.png"
    loud = runner.invoke(app, ["plot", str(trace), "--kind", "imbalance", "-o", str(out)])
    assert loud.exit_code == 0 and "wrote" in loud.stderr
    quiet = runner.invoke(app, ["plot", str(trace), "--kind", "imbalance", "-o", str(out), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == "" and out.exists()
    table = runner.invoke(app, ["inspect", str(trace), "--quiet"])
    assert table.exit_code == 0 and "MaxVio" in table.stdout


def test_no_color_anywhere_gives_plain_text(trace: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[2]), FORCE_COLOR="1", COLUMNS="100")
    cmd = [sys.executable, "-m", "moediag", "inspect", str(trace)]
    coloured = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    plain = subprocess.run([*cmd, "--no-color"], capture_output=True, text=True, env=env, check=True).stdout
    assert "\x1b[" in coloured
    assert "\x1b[" not in plain and "MaxVio" in plain


def test_shell_completion_completes_commands_and_figure_lists() -> None:
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=root, _MOEDIAG_COMPLETE="complete_bash")

    def complete(words: str) -> list[str]:
        env.update(COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - 1))
        cmd = [sys.executable, "-m", "moediag"]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout.split()

    assert complete("moediag ins") == ["inspect"]
    assert complete("moediag plot t --kind imbalance,load-hi") == ["imbalance,load-histograms"]
    assert complete("moediag import sg") == ["sglang"]
    assert "--install-completion" in _help([])
