"""pandas views of the results, for notebooks: one row per layer, per (layer, expert), per path, per rule.

>>> a = moediag.inspect("sample_traces/trained_aux.safetensors")       # doctest: +SKIP
>>> a.layers_frame().sort_values("max_vio").tail(3)                     # doctest: +SKIP
>>> a.experts_frame().query("dead")                                     # doctest: +SKIP
>>> a.layers_frame().to_csv("layers.csv")                               # doctest: +SKIP

The frames are built from the same dictionaries as ``--json`` (docs/json.md), so their values and
column names are the JSON's; list- and dict-valued figures stay in the JSON (per-expert lists become
``experts_frame`` rows). pandas is imported only when a frame is asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["check_frame", "experts_frame", "layers_frame", "paths_frame"]


def _pd() -> Any:
    import pandas

    return pandas


def layers_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per layer (index ``layer``): every scalar figure of ``layers[]``."""
    records = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in rows]
    for rec, r in zip(records, rows, strict=True):
        rec["dead_count"] = len(r.get("dead_experts") or [])
        rec["cold_count"] = len(r.get("cold_experts") or [])
    return _pd().DataFrame.from_records(records).set_index("layer")


def experts_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (layer, expert): ``load``, ``share``, ``dead``, ``cold``, and ``tokens``, ``accuracy``,
    ``ci_low``, ``ci_high``, ``below_overall``, ``mean_loss`` of the top-1 attribution when the trace has
    correctness (NaN otherwise)."""
    records = []
    for r in rows:
        dead, cold = set(r.get("dead_experts") or []), set(r.get("cold_experts") or [])
        share = r.get("load_share") or []
        acc = {int(x["expert"]): x for x in r.get("expert_accuracy") or [] if isinstance(x, Mapping)}
        for e, load in enumerate(r.get("load") or []):
            rec: dict[str, Any] = {
                "layer": r["layer"],
                "expert": e,
                "load": load,
                "share": share[e] if e < len(share) else None,
                "dead": e in dead,
                "cold": e in cold,
            }
            a = acc.get(e, {})
            for key in ("tokens", "accuracy", "ci_low", "ci_high", "below_overall", "mean_loss"):
                rec[key] = a.get(key)
            records.append(rec)
    return _pd().DataFrame.from_records(records).set_index(["layer", "expert"])


def paths_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    """One row per frequent routing path of each tracked window (``summary.paths``): ``window`` (first and
    last MoE layer), ``path`` (a tuple of experts), ``share``, ``tokens``, accuracy and interval."""
    windows = summary.get("paths") or []
    windows = [windows] if isinstance(windows, Mapping) else windows
    records = []
    for w in windows:
        layers = tuple(w.get("layers") or ())
        for p in w.get("frequent") or []:
            rec = {"window": layers, "path": tuple(p["path"])}
            rec.update({k: v for k, v in p.items() if k != "path"})
            records.append(rec)
    columns = ["window", "path", "share", "tokens", "correct", "accuracy", "ci_low", "ci_high"]
    return _pd().DataFrame.from_records(records, columns=None if records else columns)


def check_frame(report: Any) -> pd.DataFrame:
    """One row per (rule, layer) result of a :class:`~moediag.checks.CheckReport`: ``rule``, ``kind``,
    ``scope``, ``layer`` (None for the model), ``value``, ``threshold``, ``direction``, ``status``,
    ``reason``."""
    records = []
    for o in report.outcomes:
        for r in o.results:
            records.append(
                {
                    "rule": o.name,
                    "kind": o.kind,
                    "scope": r.scope,
                    "layer": r.layer,
                    "value": r.value,
                    "shown": r.shown_value,
                    "threshold": r.threshold,
                    "direction": r.direction,
                    "status": r.status,
                    "reason": r.reason,
                }
            )
    return _pd().DataFrame.from_records(records)
