"""Every JSON document's meta comes from one writer: the same first keys, and every figure-changing option."""

from __future__ import annotations

from pathlib import Path

import moediag
from moediag.stats import StatsOptions

SAMPLES = Path(__file__).parents[2] / "sample_traces"
FIRST = ["format", "moediag_version", "kind"]


def test_meta_blocks_start_alike_and_record_every_option() -> None:
    from moediag.compare import compare

    trace = moediag.inspect(SAMPLES / "healthy.safetensors").to_dict()["meta"]
    ckpt = moediag.inspect(SAMPLES / "trained_noaux", weights=False).to_dict()["meta"]
    check = moediag.check(SAMPLES / "healthy.safetensors").to_dict()["meta"]
    cmp = compare(SAMPLES / "healthy.safetensors", SAMPLES / "imbalanced.safetensors").to_dict()["meta"]
    for meta, kind in ((trace, "trace"), (ckpt, "checkpoint"), (check, "trace"), (cmp, "compare")):
        assert list(meta)[:3] == FIRST and meta["kind"] == kind
        assert meta["moediag_version"] == moediag.__version__
    assert set(trace["options"]) == {f for f in StatsOptions.__dataclass_fields__}
    assert trace["options"]["capacity_factors"] == list(StatsOptions().capacity_factors)
