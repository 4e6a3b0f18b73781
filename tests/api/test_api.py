"""The library does what the CLI does: moediag.inspect / check / report, and settings from [tool.moediag]."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import moediag
from moediag.cli import app
from moediag.errors import ConfigError, UsageError
from moediag.options import DEFAULTS, SETTINGS, resolve
from moediag.trace import build_metadata, write_trace

SAMPLES = Path(__file__).parents[2] / "sample_traces"


def _trace(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(512, 8, generator=g)
    z[:, :2] += 3.0
    return write_trace(
        path, {"layers.0.router_logits": z}, build_metadata(num_experts=8, top_k=2, score_function="softmax")
    )


def _cli(*args: object) -> dict:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code in (0, 1), r.output
    return json.loads(r.stdout)


def test_exports_are_lazy() -> None:
    code = (
        "import sys, moediag; assert 'torch' not in sys.modules; moediag.inspect; "
        "assert 'moediag.api' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert {"inspect", "check", "report"} <= set(moediag.__all__)


def test_library_equals_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _trace(tmp_path / "t.safetensors")
    lib = moediag.inspect(path).to_dict()
    cli = _cli("inspect", path, "--json")
    for doc in (lib, cli):
        doc["meta"].pop("created")
    assert lib == cli
    report = moediag.check(path, max_vio=0.1)
    doc = _cli("check", path, "--max-vio", "0.1", "--json")
    assert doc["status"] == report.status == "fail" and doc["verdict"] == report.verdict()
    assert _cli("check", path, "--max-vio", "0.1", "--format", "json")["rules"] == doc["rules"]
    out = moediag.report([path], tmp_path / "r.html")
    assert out.read_text(encoding="utf-8").count(lib["summary"]["verdict"]["text"]) == 1


def test_check_json_and_another_format_is_a_usage_error(tmp_path: Path) -> None:
    path = _trace(tmp_path / "t.safetensors")
    r = CliRunner().invoke(app, ["check", str(path), "--json", "--format", "junit"])
    assert r.exit_code == 2 and "two formats" in r.output


def test_tool_moediag_configures_inspect_report_and_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """[tool.moediag] < [tool.moediag.check] (shared settings) < [tool.moediag.<command>] < flags."""
    monkeypatch.chdir(tmp_path)
    path = _trace(tmp_path / "t.safetensors")
    (tmp_path / "pyproject.toml").write_text(
        "[tool.moediag]\ncold_eps = 0.2\ncapacity_group = 256\n"
        "[tool.moediag.check]\ncold_eps = 0.3\nmax_vio = 5.0\nmax_cv = 5.0\nmin_entropy = 0.1\n"
        "[tool.moediag.inspect]\ncapacity_group = 128\n"
    )
    doc = _cli("inspect", path, "--json")
    assert doc["meta"]["options"]["cold_eps"] == 0.3  # check's value: inspect and check agree
    assert doc["meta"]["options"]["capacity_group_tokens"] == 128
    assert doc["summary"]["verdict"]["level"] == "healthy"  # judged by the configured thresholds
    assert _cli("inspect", path, "--json", "--cold-eps", "0.05")["meta"]["options"]["cold_eps"] == 0.05
    assert _cli("check", path, "--json")["status"] == "pass"
    plot = resolve("plot", {}, tmp_path / "pyproject.toml")
    assert plot["capacity_group"] == 256 and plot.sources["capacity_group"].endswith("[tool.moediag]")
    assert resolve("report", {"cold_eps": 0.7})["cold_eps"] == 0.7
    (tmp_path / "pyproject.toml").write_text("[tool.moediag.inspect]\ncold_epz = 0.2\n")
    r = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 2 and "cold_epz" in r.output and "pyproject.toml" in r.output
    with pytest.raises(ConfigError, match="must be a number"):
        (tmp_path / "pyproject.toml").write_text("[tool.moediag]\ncold_eps = 'x'\n")
        resolve("inspect")


def test_every_default_is_in_the_table() -> None:
    from moediag.checks import KEYS
    from moediag.stats import StatsOptions
    from moediag.stats.capacity import DEFAULT_GROUP_TOKENS

    assert StatsOptions().cold_eps == DEFAULTS["cold_eps"] == KEYS["cold_eps"].default
    assert DEFAULTS["capacity_group"] == DEFAULT_GROUP_TOKENS
    assert KEYS["capacity_factor"].default == DEFAULTS["capacity_factor"]
    docs = (Path(__file__).parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    for s in SETTINGS:
        assert f"`{s.name}`" in docs, s.name


def test_the_library_report_follows_the_output_rules(tmp_path: Path) -> None:
    """moediag.report refuses what the CLI refuses (it wrote wherever it was told): never onto an input,
    a foreign file only with force, and a name that is not .html before anything is read."""
    import shutil

    from moediag.io.outputs import OutputError

    src = tmp_path / "h.safetensors"
    shutil.copy(Path(__file__).parents[2] / "sample_traces" / "healthy.safetensors", src)
    mine = tmp_path / "mine.html"
    mine.write_text("my notes")
    with pytest.raises(OutputError, match="--force"):
        moediag.report(src, mine)
    assert mine.read_text() == "my notes"
    with pytest.raises(UsageError, match="the report is HTML"):
        moediag.report(src, src)
    assert moediag.report(src, mine, force=True) == mine and "moediag" in mine.read_text()
