"""Statistics over groups of consecutive tokens (sequences, capacity groups) that merge exactly.

A group is a run of consecutive tokens with the same group id. A chunk, shard or machine sees a span of
tokens whose first and last runs may continue beyond it, so a :class:`RunAccumulator` keeps those two
runs open (their raw rows) and finalises every run known to be complete. ``merge(other)`` joins the last
open run of ``self`` with the first open run of ``other`` when their ids match (``other`` follows ``self``
in token order). Memory is bounded by two runs (two sequences, or two capacity groups) per accumulator.

State (moediag.stats.state): the subclass's sums, declared with ``add_state`` and merged generically, and
the two open runs, declared ``custom``: :meth:`RunAccumulator.merge_custom` joins them after the sums are
merged (a joined run that completes is finalised into the merged sums).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from moediag.stats.state import Accumulator


@dataclass
class Run:
    gid: int
    rows: dict[str, torch.Tensor]

    def join(self, other: Run) -> Run:
        return Run(self.gid, {k: torch.cat([v, other.rows[k]]) for k, v in self.rows.items()})

    def __len__(self) -> int:
        return int(next(iter(self.rows.values())).shape[0])


def run_bounds(gids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Start offsets and lengths of the runs of equal consecutive values."""
    n = gids.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    change = torch.nonzero(gids[1:] != gids[:-1]).flatten() + 1
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), change])
    ends = torch.cat([change, torch.tensor([n], dtype=torch.int64)])
    return starts, ends - starts


class RunAccumulator(Accumulator):
    """Base class: subclasses declare their sums (``add_state``) and implement ``_finalize(rows,
    lengths)`` to add complete runs to them; open runs stay raw until complete."""

    #: finalise the runs a chunk completes in one call (rows concatenated) rather than one call per batch
    JOIN_PARTS = True

    head: Run | None
    tail: Run | None

    def __init__(self) -> None:
        self.add_state("head", None, "custom")  # first run of the span (may continue before it)
        self.add_state("tail", None, "custom")  # last run, when the span has more than one

    # -- to implement ----------------------------------------------------------------------------
    def _finalize(self, rows: dict[str, torch.Tensor], lengths: torch.Tensor) -> None:
        raise NotImplementedError

    # -- machinery -------------------------------------------------------------------------------
    def _finalize_runs(self, runs: list[Run]) -> None:
        self._finalize_parts([(r.rows, torch.tensor([len(r)], dtype=torch.int64)) for r in runs])

    def _finalize_parts(self, parts: list[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> None:
        """Finalise batches of complete runs: joined into one call when :attr:`JOIN_PARTS` (a call has a
        fixed cost), else one call each (when copying the rows costs more than a call)."""
        if len(parts) == 1 or not self.JOIN_PARTS:
            for part in parts:
                self._finalize(*part)
        elif parts:
            rows = {k: torch.cat([p[0][k] for p in parts]) for k in parts[0][0]}
            self._finalize(rows, torch.cat([p[1] for p in parts]))

    def update_rows(self, gids: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        """Add a chunk of consecutive tokens with group ids ``gids``."""
        starts, lengths = run_bounds(gids)
        r = starts.numel()
        if r == 0:
            return
        closed: list[Run] = []  # runs this chunk completes, finalised together at the end
        middle = None
        first = Run(int(gids[0]), {k: v[: int(lengths[0])].clone() for k, v in rows.items()})
        self._push(first, closed)
        if r >= 2:
            if r >= 3:
                a, b = int(starts[1]), int(starts[-1])
                self._close_tail(closed)
                middle = ({k: v[a:b] for k, v in rows.items()}, lengths[1:-1])
            # clone: an open run must not keep the whole chunk's tensors alive
            last = Run(int(gids[int(starts[-1])]), {k: v[int(starts[-1]) :].clone() for k, v in rows.items()})
            if r >= 3:
                self.tail = last  # not contiguous with the head even if the ids repeat
            else:
                self._push(last, closed)
        parts = [(run.rows, torch.tensor([len(run)], dtype=torch.int64)) for run in closed]
        self._finalize_parts(parts + ([middle] if middle is not None else []))

    def _close_tail(self, closed: list[Run] | None) -> None:
        """Close the tail run: into ``closed`` (finalised later by the caller), or finalised now."""
        if self.tail is not None:
            if closed is not None:
                closed.append(self.tail)
            else:
                self._finalize_runs([self.tail])
            self.tail = None

    def _push(self, run: Run, closed: list[Run] | None) -> None:
        """Append a run that follows everything seen so far."""
        if self.head is None:
            self.head = run
        elif self.tail is None:
            if self.head.gid == run.gid:
                self.head = self.head.join(run)
            else:
                self.tail = run
        elif self.tail.gid == run.gid:
            self.tail = self.tail.join(run)
        else:
            self._close_tail(closed)
            self.tail = run

    def merge_custom(self, other: Accumulator) -> None:
        """Join the open runs (the sums are already merged): ``other``'s tokens come after these."""
        assert isinstance(other, RunAccumulator)
        if other.head is None:
            return
        self._push(other.head, None)
        if other.tail is not None:
            if self.tail is not None:
                self._close_tail(None)
            self.tail = other.tail

    def finalized(self) -> RunAccumulator:
        """A copy with the open runs finalised (for compute(); self is unchanged)."""
        done = copy.deepcopy(self)
        open_runs = [r for r in (done.head, done.tail) if r is not None]
        done.head = done.tail = None
        for run in open_runs:
            done._finalize_runs([run])
        return done
