"""The README's figures are the tool's: the sample-trace table and the example outputs are recomputed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moediag.analysis import analyze_trace
from moediag.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ROW = re.compile(r"^\| `(trained_\w+)` \([^)]*\) \| ([\d.]+) \| ([\d., ]+) \| (\d+) \| (\w+)", re.M)


def test_the_table_covers_the_three_trained_traces() -> None:
    assert [m.group(1) for m in ROW.finditer(README)] == ["trained_noaux", "trained_aux", "trained_aux_layer"]


@pytest.mark.parametrize("row", list(ROW.finditer(README)), ids=lambda m: m.group(1))
def test_sample_table_figures_are_what_the_tool_prints(row: re.Match[str]) -> None:
    name, accuracy, max_vio, dead, verdict = row.groups()
    analysis = analyze_trace(ROOT / "sample_traces" / f"{name}.safetensors")
    assert f"{analysis.summary['accuracy']:.3f}" == accuracy
    assert ", ".join(f"{r['max_vio']:.2f}" for r in analysis.layers) == max_vio
    assert analysis.summary["dead_experts"] == int(dead)
    result = CliRunner().invoke(app, ["inspect", str(ROOT / "sample_traces" / f"{name}.safetensors")])
    assert result.stdout.startswith(verdict + ":")


def test_hf_aux_loss_reads_what_the_readme_says() -> None:
    assert "reads a perfect 2.00 (`summary.hf_aux_loss`)" in README
    hf = analyze_trace(ROOT / "sample_traces" / "trained_aux.safetensors").summary["hf_aux_loss"]
    assert f"{hf:.2f}" == "2.00"


def test_example_outputs_are_what_the_commands_print() -> None:
    block = re.search(r"```text\n(.*?)```", README, re.S)
    assert block is not None
    pairs = re.findall(r"^\$ moediag (.*?) \| head -1\n(.*)$", block.group(1), re.M)
    assert len(pairs) >= 2
    for command, expected in pairs:
        args = [a.replace("sample_traces/", str(ROOT / "sample_traces") + "/") for a in shlex.split(command)]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "100"})
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[0] == expected
