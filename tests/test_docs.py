"""Docs that can't drift: every command has help and a docs entry; the docs' examples run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moediag.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


def command_names() -> list[str]:
    import typer.main

    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_there_are_commands() -> None:
    assert "inspect" in command_names()


@pytest.mark.parametrize("name", command_names())
def test_every_command_has_help_and_a_docs_entry(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    cli_md = (ROOT / "docs" / "cli.md").read_text()
    assert re.search(rf"^## moediag {name}$", cli_md, re.M), f"docs/cli.md has no '## moediag {name}' entry"
    readme = (ROOT / "README.md").read_text()
    assert f"moediag {name}" in readme


def test_trace_format_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worked examples in docs/trace-format.md write traces that moediag reads."""
    from moediag.analysis import analyze_trace

    text = (ROOT / "docs" / "trace-format.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "trace-format.md", "exec"), {})
    a = analyze_trace(tmp_path / "example-trace.safetensors")
    assert a.summary["max_vio"]["worst_layer"] == 3
    assert analyze_trace(tmp_path / "one-file.safetensors").summary["tokens"] == 100
    assert analyze_trace(tmp_path / "sharded-trace").summary["tokens"] == 100


def test_readme_has_exactly_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, re.S)
    assert len(commands) == 2
    assert all(len(c.strip().splitlines()) == 1 for c in commands)
