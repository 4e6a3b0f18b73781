"""Every accumulator declares its whole state (moediag.stats.state), and streaming == one-shot == merge
holds for each one on its own (hypothesis), not only through ModelStats."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moediag.stats
from moediag import routing
from moediag.stats.accuracy import ExpertAccuracyStats, _Tally
from moediag.stats.batch import LayerBatch
from moediag.stats.capacity import CapacityStats
from moediag.stats.coactivation import CoactivationStats
from moediag.stats.layer import LayerStats, ModelStats, StatsOptions
from moediag.stats.load import LoadStats, StepLoadStats
from moediag.stats.paths import ChunkPaths, PathStats
from moediag.stats.quality import PairedQualityStats
from moediag.stats.router import RouterStats
from moediag.stats.runs import RunAccumulator
from moediag.stats.sequences import ConsecutiveStats, SeqAuxStats
from moediag.stats.sketch import KeyedSketch
from moediag.stats.specialisation import SpecialisationStats
from moediag.stats.state import Accumulator
from moediag.stats.touched import ExpertsTouchedStats
from moediag.trace.schema import RoutingSpec
from tests.conftest import assert_same

E, K = 6, 2


def make_batch(seed: int, n: int, *, sequences: bool = True, empty_slots: bool = False) -> LayerBatch:
    """A routed batch with every token field (what analysis.layer_batch hands the accumulators)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, E, generator=g) * 2
    routed = routing.route(logits, spec=RoutingSpec(num_experts=E, top_k=K, score_function="softmax"))
    batch = routed.batch(num_experts=E, top_k=K, index=torch.arange(n))
    if empty_slots:
        batch.ids = batch.ids.clone()
        batch.ids[torch.rand(n, generator=g) < 0.2, -1] = -1
        batch.filled = False
    if sequences:
        batch.sequence_ids = torch.cumsum((torch.rand(n, generator=g) < 0.15).to(torch.int64), 0)
        starts = torch.ones(n, dtype=torch.bool)
        starts[1:] = batch.sequence_ids[1:] != batch.sequence_ids[:-1]
        run_start = torch.cummax(torch.where(starts, torch.arange(n), 0), 0).values
        batch.positions = torch.arange(n) - run_start
    batch.step = torch.sort(torch.randint(0, 3, (n,), generator=g)).values
    batch.correct = torch.rand(n, generator=g) < 0.6
    batch.loss = torch.rand(n, generator=g).double() * 3
    batch.domain = torch.randint(0, 3, (n,), generator=g)
    batch.input_ids = torch.randint(0, 12, (n,), generator=g)
    return batch


def _paths_update(acc: PathStats, batch: LayerBatch) -> None:
    chunk = ChunkPaths(int(batch.index[0]), len(batch))
    for layer in acc.layers:
        chunk.add(layer, batch)
    acc.update(chunk)


def _sketch_update(acc: KeyedSketch, batch: LayerBatch) -> None:
    acc.add(batch.ids[:, :1], {"tokens": torch.ones(len(batch), dtype=torch.int64)})


def _quality_update(acc: PairedQualityStats, batch: LayerBatch) -> None:
    assert batch.loss is not None and batch.correct is not None
    acc.update(
        domain=batch.domain,
        loss_a=batch.loss,
        loss_b=(batch.loss * 1.7) % 3,  # token by token, as the pairing requires
        correct_a=batch.correct,
        correct_b=batch.correct ^ (batch.input_ids % 3 == 0),
    )


def _model_update(acc: ModelStats, batch: LayerBatch) -> None:
    chunk = acc.chunk_paths(int(batch.index[0]), len(batch))
    for layer in (0, 1):
        acc.layer(layer, E, K).update(batch)
        chunk.add(layer, batch)
    acc.update_paths(chunk)


def _plain(acc: Any, batch: LayerBatch) -> None:
    acc.update(batch)


def _result(acc: Any) -> Any:
    if isinstance(acc, RouterStats):
        return acc.compute(torch.ones(E, dtype=torch.int64))
    if isinstance(acc, ExpertsTouchedStats):
        return acc.compute(K)
    if isinstance(acc, CoactivationStats):
        return {"pairs": acc.pairs.tolist(), "max_error": acc.max_error}
    if isinstance(acc, KeyedSketch):
        return {
            "keys": acc.keys.tolist(),
            "count": acc.count.tolist(),
            "values": acc.values["tokens"].tolist(),
        }
    if isinstance(acc, _Tally):
        return {
            name: getattr(acc, name).tolist() for name in ("tokens", "correct", "loss_sum", "loss_tokens")
        }
    if isinstance(acc, LayerStats):
        out = acc.compute()
        out["steps"] = acc.steps.compute()
        out["coactivation"] = acc.coactivation.pairs.tolist()
        return out
    return acc.compute()


#: name -> (a fresh accumulator, how a batch goes in); every Accumulator in moediag.stats is here
FACTORIES: dict[str, tuple[Callable[[], Any], Callable[[Any, LayerBatch], None]]] = {
    "LoadStats": (lambda: LoadStats(E), _plain),
    "StepLoadStats": (lambda: StepLoadStats(E), _plain),
    "RouterStats": (lambda: RouterStats(E, K), _plain),
    "CapacityStats": (lambda: CapacityStats(E, K, group_tokens=7), _plain),
    "SeqAuxStats": (lambda: SeqAuxStats(E, K), _plain),
    "ConsecutiveStats": (lambda: ConsecutiveStats(E), _plain),
    "CoactivationStats": (lambda: CoactivationStats(E), _plain),
    "CoactivationStats.sparse": (lambda: CoactivationStats(E, dense_max=2), _plain),
    "ExpertAccuracyStats": (lambda: ExpertAccuracyStats(E), _plain),
    "_Tally": (lambda: _Tally(E), lambda acc, b: acc.add(b.top1, b.correct, b.loss)),
    "SpecialisationStats": (lambda: SpecialisationStats(E, K), _plain),
    "ExpertsTouchedStats": (lambda: ExpertsTouchedStats(E, (1, 2, 4)), _plain),
    "PathStats": (lambda: PathStats([0, 1]), _paths_update),
    "KeyedSketch": (lambda: KeyedSketch(1, 64, {"tokens": ((), torch.int64)}), _sketch_update),
    "PairedQualityStats": (lambda: PairedQualityStats(), _quality_update),
    "LayerStats": (lambda: LayerStats(0, E, K, StatsOptions(capacity_group_tokens=5)), _plain),
    "ModelStats": (lambda: ModelStats(StatsOptions(capacity_group_tokens=5)), _model_update),
}


def _accumulator_classes() -> set[type]:
    found: set[type] = set()
    for info in pkgutil.iter_modules(moediag.stats.__path__, "moediag.stats."):
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Accumulator) and cls.__module__ == info.name:
                found.add(cls)
    return found - {Accumulator, RunAccumulator}


def test_every_accumulator_is_covered_here() -> None:
    """A new accumulator in moediag.stats must get a factory, and so the checks below."""
    covered = {type(factory()) for factory, _ in FACTORIES.values()}
    assert _accumulator_classes() - covered == set()


def _all_accumulators(acc: Any, seen: list[Any]) -> list[Any]:
    """``acc`` and every accumulator reachable through its declared children and ``each`` dicts."""
    seen.append(acc)
    for name, how in acc._reductions.items():
        value = getattr(acc, name)
        if how == "child":
            _all_accumulators(value, seen)
        elif how == "each":
            for child in value.values():
                _all_accumulators(child, seen)
    return seen


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_after_update_merge_and_compute_is_all_declared(name: str) -> None:
    factory, update = FACTORIES[name]
    a, b = factory(), factory()
    update(a, make_batch(1, 40, empty_slots=name != "PathStats"))
    update(b, make_batch(2, 30))
    for acc in _all_accumulators(a, []) + _all_accumulators(b, []):
        assert acc.undeclared() == [], f"{type(acc).__name__}: {acc.undeclared()}"
        assert set(vars(acc)) - {"_reductions", "_settings"} == acc.declared()
    a.merge(b)
    _result(a)
    for acc in _all_accumulators(a, []):
        assert acc.undeclared() == [], f"{type(acc).__name__}: {acc.undeclared()}"


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_field_added_without_declaring_it_stops_the_merge(name: str) -> None:
    factory, update = FACTORIES[name]
    a, b = factory(), factory()
    update(a, make_batch(3, 20))
    a.new_field = 1  # what a change that sets a new field in update() and forgets to declare it does
    with pytest.raises(TypeError, match="new_field not declared"):
        a.merge(b)


def test_custom_state_needs_merge_custom() -> None:
    class Custom(Accumulator):
        def __init__(self) -> None:
            self.add_state("ends", None, "custom")

    with pytest.raises(NotImplementedError, match="merge_custom"):
        Custom().merge(Custom())


def test_dict_reductions_are_per_key() -> None:
    class Keyed(Accumulator):
        def __init__(self, **values: int) -> None:
            self.add_state("sums", dict(values))
            self.add_state("peaks", dict(values), "max")
            self.add_state("flags", {"x": True}, "and")

    a, b = Keyed(x=1, y=5), Keyed(y=2, z=3)
    b.flags = {"x": False}
    a.merge(b)
    assert (a.sums, a.peaks, a.flags) == ({"x": 1, "y": 7, "z": 3}, {"x": 1, "y": 5, "z": 3}, {"x": False})


@pytest.mark.parametrize("name", sorted(FACTORIES))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 80),
    cuts=st.lists(st.integers(1, 79), max_size=4),
    sequences=st.booleans(),
)
def test_streaming_equals_one_shot_equals_merge(
    name: str, seed: int, n: int, cuts: list[int], sequences: bool
) -> None:
    """(The bounded summaries, KeyedSketch and sparse co-activation, stay under capacity here, so they are
    exact; their bounds past capacity are tested in test_sketch / test_coactivation.)"""
    factory, update = FACTORIES[name]
    full = make_batch(seed, n, sequences=sequences, empty_slots=name not in ("PathStats", "ModelStats"))
    one = factory()
    update(one, full)
    bounds = sorted({0, n, *[c for c in cuts if c < n]})
    stream, merged = factory(), factory()
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        part = full.select(slice(lo, hi))  # type: ignore[arg-type]
        update(stream, part)
        piece = factory()
        update(piece, part)
        merged.merge(piece)
    assert_same(_to_plain(_result(one)), _to_plain(_result(stream)), f"{name} streamed")
    assert_same(_to_plain(_result(one)), _to_plain(_result(merged)), f"{name} merged")


def _to_plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _to_plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_to_plain(v) for v in x]
    return x
