"""Temporal judgement over consecutive windows: dead experts and rising imbalance.

A single window is a small sample: an expert that receives nothing for 10 steps may just be unlucky. The
judge therefore waits for ``windows`` windows in a row:

- an expert **cold** (share < ``cold_eps / E``, inspect's ``cold_experts``) in ``windows`` consecutive
  windows is **judged dead** (``judged_dead``);
- a layer whose **MaxVio rises** in ``windows`` consecutive windows (each strictly above the one before)
  is flagged (``max_vio_rising``).

Windows with too few tokens to judge (expected assignments per expert ``k*T/E`` below
``min_expected_load``, the same floor ``moediag check`` applies to its dead/cold rules) neither extend nor
break a streak. State is O(E) per layer, whatever the length of the run.
"""

from __future__ import annotations

from typing import Any

import torch

from moediag.live.window import WindowReport

DEFAULT_WINDOWS = 3
DEFAULT_MIN_EXPECTED_LOAD = 20.0


class TemporalJudge:
    """Streak counters per layer (cold streak per expert, MaxVio rising streak)."""

    def __init__(self, windows: int = DEFAULT_WINDOWS, min_expected_load: float = DEFAULT_MIN_EXPECTED_LOAD):
        if windows < 1:
            raise ValueError(f"windows={windows}: must be at least 1")
        self.windows = windows
        self.min_expected_load = min_expected_load
        self.cold_streak: dict[int, torch.Tensor] = {}
        self.rising_streak: dict[int, int] = {}
        self.last_max_vio: dict[int, float] = {}

    def judge(self, report: WindowReport) -> dict[int, dict[str, Any]]:
        """Advance the streaks with ``report``'s window; sets and returns ``report.judged``."""
        out: dict[int, dict[str, Any]] = {}
        for layer, row in report.layers.items():
            e = int(row["num_experts"])
            streak = self.cold_streak.get(layer)
            if streak is None or streak.numel() != e:
                streak = torch.zeros(e, dtype=torch.int64)
            assignments = row.get("assignments") or 0
            judgeable = assignments > 0 and assignments / e >= self.min_expected_load
            if judgeable:
                cold = torch.zeros(e, dtype=torch.bool)
                cold[list(row.get("cold_experts") or [])] = True
                streak = torch.where(cold, streak + 1, torch.zeros_like(streak))
                vio = row.get("max_vio")
                if vio is not None:
                    prev = self.last_max_vio.get(layer)
                    rising = prev is not None and vio > prev
                    self.rising_streak[layer] = self.rising_streak.get(layer, 0) + 1 if rising else 0
                    self.last_max_vio[layer] = float(vio)
            self.cold_streak[layer] = streak
            out[layer] = {
                "judged_dead": torch.nonzero(streak >= self.windows).flatten().tolist(),
                "cold_streak_max": int(streak.max()) if e else 0,
                "max_vio_rising": self.rising_streak.get(layer, 0) >= self.windows,
                "max_vio_rising_windows": self.rising_streak.get(layer, 0),
            }
        report.judged = out
        return out
