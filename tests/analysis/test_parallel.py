"""moediag.analysis.parallel: local worker processes and a Dask LocalCluster give the single-process result
exactly.

One trace of 4 shards whose sequences cross shard boundaries, with masks, logits (f32 and bf16), recorded
top-k ids, correctness, losses, domains, steps and input ids: every statistic of ``to_dict(detail=True)``
must be identical (timestamps aside). Work units are made small (600 tokens) so there are several per shard.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from moediag.analysis import analyze_trace, trace_stats
from moediag.analysis.units import compact, compute_unit, pinned_threads, plan_units, tree_fold
from moediag.cli import app
from moediag.compare import compare
from moediag.trace import open_trace
from tests.conftest import trace_metadata

CHUNK = 300
UNIT = 600
SEQ = 500  # sequences of 500 tokens: they cross unit and shard boundaries


def write_trace(root: Path, *, seed: int = 0, bad_shard: int | None = None, shards: int = 3) -> Path:
    root.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    e, k = 8, 2
    meta = trace_metadata(e, k, "softmax", domains=["prose", "code"])
    start = 0
    for s in range(shards):
        n = 600 + 37 * s
        idx = torch.arange(start, start + n)
        t: dict[str, torch.Tensor] = {}
        for layer, dtype in ((0, torch.float32), (1, torch.bfloat16)):
            logits = torch.randn(n, e, generator=g) * (1 + layer) + torch.linspace(0, 2, e)
            t[f"layers.{layer}.router_logits"] = logits.to(dtype)
        ids = torch.rand(n, e, generator=g).topk(k, dim=-1).indices
        if bad_shard == s:
            ids[n // 2, 0] = e + 5  # an expert id out of range: found only when the rows are read
        t["layers.3.topk_ids"] = ids.to(torch.int32)
        t["tokens.sequence_ids"] = (idx // SEQ).to(torch.int32)
        t["tokens.positions"] = (idx % SEQ).to(torch.int32)
        t["tokens.mask"] = (torch.rand(n, generator=g) > 0.05).to(torch.uint8)
        t["tokens.correct"] = (torch.rand(n, generator=g) > 0.4).to(torch.uint8)
        t["tokens.loss"] = torch.rand(n, generator=g) * 3
        t["tokens.domain"] = (idx // 400 % 2).to(torch.int32)
        t["tokens.step"] = (idx // 700).to(torch.int32)
        t["tokens.input_ids"] = torch.randint(0, 200, (n,), generator=g).to(torch.int32)
        save_file(t, str(root / f"part-{s:05d}.safetensors"), metadata=meta)
        start += n
    return root


def scrub(doc: dict[str, Any]) -> dict[str, Any]:
    doc["meta"].pop("created", None)
    return doc


def analysis(path: Path, **kw: Any) -> dict[str, Any]:
    return scrub(analyze_trace(path, chunk_tokens=CHUNK, unit_tokens=UNIT, **kw).to_dict(detail=True))


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(tmp_path_factory.mktemp("par") / "trace")


@pytest.fixture(scope="module")
def reference(trace: Path) -> dict[str, Any]:
    return analysis(trace)


@pytest.fixture(scope="module")
def cluster() -> Any:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as c:
        yield c


def test_reference_covers_every_statistic(reference: dict[str, Any]) -> None:
    """The comparison is only as good as what the fixture exercises."""
    s = reference["summary"]
    assert s["accuracy"] is not None and s["paths"] and s["hf_aux_loss"] is not None
    for row in reference["layers"]:
        assert row["coactivation"] is not None and row["step_load"]
        assert row["expert_accuracy"] and row["specialisation"]
        if row["layer"] != 3:
            assert row["seq_aux_loss"] is not None and row["z_loss"] is not None
        assert row["consecutive_same_rate"] is not None


def test_plan_units_cover_the_trace_in_order(trace: Path) -> None:
    t = open_trace(trace)
    units = plan_units(collect=trace_stats, trace=t, chunk_tokens=CHUNK, unit_tokens=UNIT)
    # 600 | 637 | 674 tokens in chunks of 300: a short tail (37) joins the next shard's first chunk
    assert [len(u.files) for u in units] == [1, 1, 2, 1]
    pos = 0
    for unit in units:
        for _, a, b, start in unit.chunks:
            assert start == pos and b > a
            pos += b - a
        assert unit.tokens < UNIT + CHUNK  # closed once it reaches UNIT
    assert pos == t.num_tokens
    # small shards are packed together; a unit never depends on the worker count
    packed = plan_units(collect=trace_stats, trace=t, chunk_tokens=CHUNK, unit_tokens=3000)
    assert [len(u.files) for u in packed] == [3]


def test_tree_fold_is_the_level_by_level_tree_dask_builds() -> None:
    def levels(xs: list[str]) -> str:
        while len(xs) > 1:
            pairs = [f"({xs[i]}+{xs[i + 1]})" for i in range(0, len(xs) - 1, 2)]
            xs = pairs + xs[len(xs) - len(xs) % 2 :]
        return xs[0]

    for n in range(1, 40):
        xs = [str(i) for i in range(n)]
        assert tree_fold(xs, lambda a, b: f"({a}+{b})") == levels(xs)


def test_state_round_trips_through_pickle_and_stays_small(trace: Path) -> None:
    unit = plan_units(collect=trace_stats, trace=open_trace(trace), chunk_tokens=CHUNK, unit_tokens=UNIT)[1]
    with pinned_threads(unit.threads):
        raw = compute_unit(unit)
    raw_size = len(pickle.dumps(raw))
    state = compact(raw)  # open runs are slices of whole chunks: copied so only their rows travel
    blob = pickle.dumps(state)
    back = pickle.loads(blob)
    assert json.dumps(back.compute(), sort_keys=True) == json.dumps(state.compute(), sort_keys=True)
    assert len(blob) <= 1.01 * raw_size and len(blob) < 400_000


def test_compact_copies_views_that_pin_a_bigger_buffer() -> None:
    big = torch.zeros(10_000, 8)
    state = {"head": [big[:3]], "whole": big}
    out = compact(state)
    assert out["head"][0].untyped_storage().nbytes() == 3 * 8 * 4
    assert out["whole"] is big


def test_one_unit_at_a_time_equals_units_side_by_side(trace: Path, reference: dict[str, Any]) -> None:
    assert analysis(trace, workers=1) == reference  # the reference ran units in threads of this process


def test_two_local_workers_equal_one_process(trace: Path, reference: dict[str, Any]) -> None:
    assert analysis(trace, workers=2) == reference


def test_dask_local_cluster_equals_one_process(trace: Path, reference: dict[str, Any], cluster: Any) -> None:
    assert analysis(trace, scheduler=cluster.scheduler_address) == reference


def test_compare_on_dask_equals_one_process(tmp_path: Path, trace: Path, cluster: Any) -> None:
    other = write_trace(tmp_path / "other", seed=1)
    one = compare(trace, other, chunk_tokens=CHUNK).to_dict()
    many = compare(trace, other, chunk_tokens=CHUNK, scheduler=cluster.scheduler_address).to_dict()
    for doc in (one, many):
        doc["meta"].pop("created", None)
    assert one == many


def test_check_on_dask_same_verdict(trace: Path, cluster: Any) -> None:
    runner = CliRunner()
    args = ["check", str(trace), "--format", "json", "--max-vio", "0.5"]
    one = runner.invoke(app, args)
    many = runner.invoke(app, [*args, "--scheduler", cluster.scheduler_address])
    assert one.exit_code == many.exit_code == 1, (one.output, many.output)
    a, b = json.loads(one.stdout), json.loads(many.stdout)
    for doc in (a, b):
        doc.get("meta", {}).pop("created", None)
    assert a == b


def test_corrupt_shard_on_dask_names_it(tmp_path: Path, cluster: Any) -> None:
    bad = write_trace(tmp_path / "bad", bad_shard=2)
    out = tmp_path / "r.html"
    result = CliRunner().invoke(
        app, ["report", str(bad), "-o", str(out), "--scheduler", cluster.scheduler_address]
    )
    assert result.exit_code == 2, result.output
    assert "part-00002.safetensors" in result.stderr and "expert id 13" in result.stderr
    assert not out.exists()


def test_corrupt_shard_with_local_workers_exits_2(tmp_path: Path) -> None:
    bad = write_trace(tmp_path / "bad", bad_shard=1)
    result = CliRunner().invoke(app, ["inspect", str(bad), "--json", "--workers", "2"])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "part-00001.safetensors" in err[0]  # one unit: analysed here, no worker
    assert result.stdout == ""
    # several units: the failing worker's shard is named, with the unit
    from moediag.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=r"worker, unit \d+ of \d+") as info:
        analyze_trace(bad, workers=2, chunk_tokens=CHUNK, unit_tokens=UNIT)
    assert "part-00001.safetensors" in str(info.value.path)


def test_workers_and_scheduler_are_exclusive(trace: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(app, ["inspect", str(trace), "--workers", "2", "--scheduler", "tcp://x:1"])
    assert both.exit_code == 2 and "not both" in both.stderr
    zero = runner.invoke(app, ["inspect", str(trace), "--workers", "0"])
    assert zero.exit_code == 2 and "--workers" in zero.stderr


def test_unreachable_scheduler_exits_2(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("distributed")
    monkeypatch.setenv("MOEDIAG_DASK_TIMEOUT", "2")
    result = CliRunner().invoke(app, ["inspect", str(trace), "--scheduler", "tcp://127.0.0.1:1"])
    assert result.exit_code == 2 and "scheduler" in result.stderr


def test_one_unit_runs_here_without_starting_worker_processes(tmp_path: Path) -> None:
    """--workers 2 on a trace of one unit: same result, and no process pool (it cost ~2 s of start-up)."""
    from moediag.analysis.runners import LocalRunner, open_runner

    path = write_trace(tmp_path / "small")
    units = plan_units(collect=trace_stats, trace=open_trace(path), unit_tokens=1 << 30)
    assert len(units) == 1
    with open_runner(2) as runner:
        assert isinstance(runner, LocalRunner)
        got = analyze_trace(path, runner=runner, unit_tokens=1 << 30).to_dict(detail=True)
        assert runner._pool is None
    want = analyze_trace(path, workers=1, unit_tokens=1 << 30).to_dict(detail=True)
    for doc in (got, want):
        doc["meta"].pop("created")
    assert got == want


def test_parallel_does_not_import_analysis() -> None:
    """No analysis <-> parallel cycle: the parallel modules run the collect function they are given and
    import nothing of the collection or the result."""
    import ast
    import inspect

    import moediag.analysis.parallel
    import moediag.analysis.runners
    import moediag.analysis.units

    allowed = ("moediag.analysis.units", "moediag.analysis.runners", "moediag.analysis.memory")
    for mod in (moediag.analysis.parallel, moediag.analysis.runners, moediag.analysis.units):
        tree = ast.parse(inspect.getsource(mod))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        bad = [
            m
            for m in imported
            if m and m.startswith(("moediag.analysis", "moediag.api")) and m not in allowed
        ]
        assert not bad, (mod.__name__, bad)
