"""The sampled redundancy screen: planted near-duplicates at several noise levels, compared with the exact
pass (``sample=1``). No pair at or above the threshold may be missed, and every reported pair (and zero
expert) must be the exact value, not the sample's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from moediag.checkpoint import analyze_checkpoint
from moediag.checkpoint.similarity import sample_rows, screen_cutoff

from .conftest import fp8_quantise

H, F, E = 256, 512, 12


def _near(a: torch.Tensor, cos: float, g: torch.Generator) -> torch.Tensor:
    """``a`` plus independent noise scaled so that the expected cosine with ``a`` is ``cos``."""
    sigma = math.sqrt(1 / cos**2 - 1)
    return a + sigma * a.std() * torch.randn(a.shape, generator=g)


def _write(folder: Path, levels: list[float], seed: int, fp8: bool, zero: int | None = None) -> Path:
    """A DeepSeek-V3-style MoE layer (per-expert gate/up/down, FP8 with 128x128 scale blocks or bf16)
    whose experts 2i+1 are noisy copies of 2i at cosine ``levels[i]``."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    mats: dict[int, dict[str, torch.Tensor]] = {}
    for j in range(E):
        mats[j] = {p: torch.randn(shape, generator=g) for p, shape in _SHAPES.items()}
    for i, c in enumerate(levels):
        mats[2 * i + 1] = {p: _near(w, c, g) for p, w in mats[2 * i].items()}
    if zero is not None:
        mats[zero] = {p: torch.zeros_like(w) for p, w in mats[zero].items()}
    t: dict[str, torch.Tensor] = {
        "model.layers.0.mlp.gate.weight": torch.randn(E, H, generator=g).bfloat16(),
        "model.layers.0.mlp.gate.e_score_correction_bias": torch.randn(E, generator=g),
    }
    for j, ps in mats.items():
        for p, w in ps.items():
            name = f"model.layers.0.mlp.experts.{j}.{p}.weight"
            if fp8:
                q, s = fp8_quantise(w, (128, 128))
                t[name], t[name + "_scale_inv"] = q, s
            else:
                t[name] = w.bfloat16()
    save_file(t, str(folder / "model.safetensors"))
    cfg = {
        "model_type": "deepseek_v3",
        "n_routed_experts": E,
        "num_experts_per_tok": 2,
        "hidden_size": H,
        "moe_intermediate_size": F,
        "num_hidden_layers": 1,
        "first_k_dense_replace": 0,
    }
    if fp8:
        cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


_SHAPES = {"gate_proj": (F, H), "up_proj": (F, H), "down_proj": (H, F)}


def _layer(path: Path, sample: float, threshold: float = 0.99, seed: int = 0) -> dict:
    d = analyze_checkpoint(path, sample=sample, seed=seed, redundancy_threshold=threshold).to_dict()
    return d["layers"][0]


def _check(path: Path, threshold: float, seed: int = 0) -> tuple[dict, dict]:
    exact = _layer(path, 1.0, threshold)
    screened = _layer(path, 1 / 32, threshold, seed)
    scr = screened["redundancy_screen"]
    assert exact["redundancy_screen"] is None  # sample 1: no screen, every pair exact
    assert scr is not None and all(n < rows for n, rows in scr["rows"].values())  # it did sample
    # no missed pair at or above the threshold, none reported that is not one. Both are full-weight
    # values that differ only in float32 summation order over ~10^5 products (~1e-5): a pair within
    # 1e-4 of the threshold may fall on either side in either pass, and is compared by value only.
    near = 1e-4
    got = {(a, b): c for a, b, c in screened["redundant_pairs"]}
    want = {(a, b): c for a, b, c in exact["redundant_pairs"]}
    assert {k for k, c in want.items() if c >= threshold + near} <= set(got)
    assert set(got) <= set(want) | {k for k, c in got.items() if c < threshold + near}
    # every reported pair is verified: its experts were read in full and its cosine is the exact one
    for (a, b), c in got.items():
        assert a in scr["verified_experts"] and b in scr["verified_experts"]
        assert c >= threshold
        if (a, b) in want:
            assert c == pytest.approx(want[(a, b)], abs=near)
    if all(abs(c - threshold) > near for c in [*got.values(), *want.values()]):
        assert screened["distinct_experts"] == exact["distinct_experts"]
    assert screened["zero_experts"] == exact["zero_experts"]
    return exact, screened


@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "bf16"])
def test_planted_near_duplicates_at_several_noise_levels(tmp_path: Path, fp8: bool) -> None:
    levels = [0.9995, 0.995, 0.9905, 0.988, 0.97, 0.8]  # above, at and below the 0.99 threshold
    path = _write(tmp_path / "ckpt", levels, seed=1, fp8=fp8)
    exact, screened = _check(path, 0.99)
    found = [p[:2] for p in exact["redundant_pairs"]]
    assert [[0, 1], [2, 3]] <= found <= [[0, 1], [2, 3], [4, 5]]  # FP8 rounding lowers 0.9905 a little
    scr = screened["redundancy_screen"]
    # candidates below the threshold were verified and rejected (0.988, 0.97 are above the cutoff)
    assert {6, 7} <= set(scr["verified_experts"]) and scr["candidate_pairs"] > len(found)
    # the screen read a small fraction; only the planted pairs near the threshold were verified in full
    assert scr["bytes"] < 0.1 * (scr["bytes"] + scr["verify_bytes"] * E / len(scr["verified_experts"]))
    assert set(scr["verified_experts"]) <= set(range(10))
    assert scr["cutoff"] == pytest.approx(screen_cutoff(0.99))
    note = next(n for n in analyze_checkpoint(path).to_dict()["summary"]["notes"] if "screened" in n)
    assert f"{scr['candidate_pairs']} candidate pair(s), {len(scr['verified_experts'])} expert(s)" in note
    # estimated norms of unverified experts are close to the exact ones; verified ones are exact
    for j, (est, ex) in enumerate(zip(screened["expert_norms"], exact["expert_norms"], strict=True)):
        tol = 1e-4 if j in scr["verified_experts"] else 0.2
        assert est == pytest.approx(ex, rel=tol)


def test_pair_at_the_threshold_is_reported(tmp_path: Path) -> None:
    path = _write(tmp_path / "ckpt", [0.992, 0.95], seed=2, fp8=True)
    c = _layer(path, 1.0, 0.5)["redundant_pairs"]
    # the pair's exact cosine becomes the threshold (less float32 summation error)
    at = next(p[2] for p in c if p[:2] == [0, 1]) - 1e-4
    exact, screened = _check(path, at)
    assert [p[:2] for p in screened["redundant_pairs"]] == [[0, 1]]


def test_zero_expert_is_verified_not_guessed(tmp_path: Path) -> None:
    path = _write(tmp_path / "ckpt", [0.999], seed=3, fp8=True, zero=7)
    _, screened = _check(path, 0.99)
    assert screened["zero_experts"] == [7] and 7 in screened["redundancy_screen"]["verified_experts"]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    levels=st.lists(st.floats(0.97, 0.9999), min_size=1, max_size=5),
    data_seed=st.integers(0, 1000),
    sample_seed=st.integers(0, 1000),
)
def test_screen_equals_exact_pass(
    tmp_path: Path, levels: list[float], data_seed: int, sample_seed: int
) -> None:
    path = _write(tmp_path / f"h{data_seed}-{len(levels)}", levels, seed=data_seed, fp8=False)
    _check(path, 0.99, seed=sample_seed)


def test_sample_rows_are_seeded_runs() -> None:
    a = sample_rows(7168, 2048, 1 / 32, seed=0, key="down_proj")
    assert a == sample_rows(7168, 2048, 1 / 32, seed=0, key="down_proj")  # reproducible
    assert a != sample_rows(7168, 2048, 1 / 32, seed=1, key="down_proj")
    rows = sum(r1 - r0 for r0, r1 in a)
    assert 224 <= rows < 240 and all(r1 - r0 == 16 for r0, r1 in a)  # 32 KiB runs of 2 KiB rows
    assert all(b[0] >= a_[1] for a_, b in zip(a, a[1:], strict=False))  # sorted, disjoint
    assert sample_rows(24, 64, 1 / 32, 0, "w") == [(0, 24)]  # small matrices are read whole
    assert sample_rows(5000, 64, 1.0, 0, "w") == [(0, 5000)]


def _weights_view(d: dict) -> list[dict]:
    keys = (
        "redundant_pairs",
        "distinct_experts",
        "zero_experts",
        "redundancy_screen",
        "router_norms",
        "bias",
    )
    return [{k: layer[k] for k in keys} for layer in d["layers"]]


def _two_layers(folder: Path) -> Path:
    """Two MoE layers: layer 0 with a planted pair, layer 1 without."""
    a = _write(folder / "a", [0.999], seed=4, fp8=True)
    b = _write(folder / "b", [], seed=5, fp8=True)
    from safetensors.torch import load_file

    t = load_file(str(a / "model.safetensors"))
    t.update(
        {k.replace("layers.0.", "layers.1."): v for k, v in load_file(str(b / "model.safetensors")).items()}
    )
    out = folder / "two"
    out.mkdir()
    save_file(t, str(out / "model.safetensors"))
    cfg = json.loads((a / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(cfg, num_hidden_layers=2)))
    return out


def _near_equal(x: object, y: object) -> None:
    if isinstance(x, dict) and isinstance(y, dict):
        assert x.keys() == y.keys()
        for k in x:
            _near_equal(x[k], y[k])
    elif isinstance(x, list) and isinstance(y, list):
        assert len(x) == len(y)
        for a, b in zip(x, y, strict=True):
            _near_equal(a, b)
    elif isinstance(x, float):
        assert x == pytest.approx(y, rel=1e-4, abs=1e-6)  # workers use one torch thread: other sum order
    else:
        assert x == y


def test_workers_check_layers_side_by_side(tmp_path: Path) -> None:
    from moediag.checkpoint import check_weights

    path = _two_layers(tmp_path)
    serial = analyze_checkpoint(path).to_dict()
    assert [p[:2] for p in serial["layers"][0]["redundant_pairs"]] == [[0, 1]]
    seen: list[int] = []
    a = analyze_checkpoint(path, weights=False)
    check_weights(a, workers=2, progress=seen.append)
    _near_equal(_weights_view(a.to_dict()), _weights_view(serial))
    assert len(seen) == 2 and sum(seen) > 0  # progress a layer at a time


def test_dask_scheduler_checks_layers(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from moediag.checkpoint import check_weights

    path = _two_layers(tmp_path)
    serial = analyze_checkpoint(path).to_dict()
    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0"
    ) as cluster:
        a = analyze_checkpoint(path, weights=False)
        check_weights(a, scheduler=cluster.scheduler_address)
    _near_equal(_weights_view(a.to_dict()), _weights_view(serial))
