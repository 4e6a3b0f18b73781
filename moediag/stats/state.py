"""Declared state and one generic merge for every accumulator (torchmetrics' ``add_state`` /
``merge_state``).

An accumulator declares each field of its state with :meth:`Accumulator.add_state` (a default and how two
values combine), its sub-accumulators with :meth:`Accumulator.add_child`, and its settings with
:meth:`Accumulator.add_setting`. :meth:`Accumulator.merge` then folds in another accumulator field by
field, and refuses to run when an attribute was set without being declared: a new field cannot be left
out of a merge by forgetting to list it.

Reductions: ``sum``, ``max``, ``min``, ``or``, ``and`` (on numbers, tensors, or dicts of them: per key,
a key on one side only is copied), ``each`` (a dict of accumulators: each merged with its own ``merge``,
a key on one side only taken over), a function ``(mine, theirs) -> merged``, or ``custom``: fields whose
merge depends on each other or on order (the open runs of :class:`~moediag.stats.runs.RunAccumulator`, a
bounded summary's counters), merged by the class's :meth:`Accumulator.merge_custom`, which runs after
every other field, in one documented place.

``merge(other)`` folds in the tokens that come after; it may take over parts of ``other`` (a dict entry,
an open run), so ``other`` is not used afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import torch

Reduce = Literal["sum", "max", "min", "or", "and", "each", "child", "custom"] | Callable[[Any, Any], Any]

_BOOKKEEPING = frozenset({"_reductions", "_settings"})


def _pair(how: str, a: Any, b: Any) -> Any:
    if how == "sum":
        return a + b
    if how == "max":
        return max(a, b)
    if how == "min":
        return min(a, b)
    if how == "or":
        return a or b
    assert how == "and"
    return a and b


def _combine(how: Reduce, a: Any, b: Any) -> Any:
    if callable(how):
        return how(a, b)
    if how == "each":
        out = dict(a)
        for key, theirs in b.items():
            if key in out:
                out[key].merge(theirs)
            else:
                out[key] = theirs
        return out
    if isinstance(a, dict):
        out = dict(a)
        for key, theirs in b.items():
            if key in out:
                out[key] = _combine(how, out[key], theirs)
            else:
                out[key] = theirs.clone() if isinstance(theirs, torch.Tensor) else copy.deepcopy(theirs)
        return out
    return _pair(how, a, b)


class Accumulator:
    """Base of the mergeable statistics: declared state, generic :meth:`merge`."""

    _reductions: dict[str, Reduce]
    _settings: set[str]

    def _declare(self) -> None:
        if "_reductions" not in self.__dict__:
            object.__setattr__(self, "_reductions", {})
            object.__setattr__(self, "_settings", set())

    def add_state(self, name: str, default: Any, reduce: Reduce = "sum") -> None:
        """A field of the state, set to ``default``: merged by ``reduce`` (module docstring)."""
        self._declare()
        setattr(self, name, default)
        self._reductions[name] = reduce

    def add_child(self, name: str, child: Any) -> None:
        """A sub-accumulator, merged with its own ``merge``."""
        self._declare()
        setattr(self, name, child)
        self._reductions[name] = "child"

    def add_setting(self, name: str, value: Any) -> None:
        """A setting (sizes, thresholds): the same on both sides of a merge, not merged."""
        self._declare()
        setattr(self, name, value)
        self._settings.add(name)

    def declared(self) -> set[str]:
        """Every declared name: state, children and settings."""
        self._declare()
        return set(self._reductions) | self._settings

    def undeclared(self) -> list[str]:
        """Attributes set without being declared (they would be lost by a merge)."""
        known = self.declared() | _BOOKKEEPING
        return sorted(name for name in vars(self) if name not in known)

    def merge_custom(self, other: Accumulator) -> None:
        """Merge the fields declared ``custom`` (after every other field); classes that declare any
        implement it."""
        raise NotImplementedError(f"{type(self).__name__} declares custom state but no merge_custom")

    def merge(self, other: Accumulator) -> None:
        """Fold in ``other`` (the tokens that come after): every declared field, by its reduction."""
        missing = self.undeclared()
        if missing:
            raise TypeError(
                f"{type(self).__name__}: {', '.join(missing)} not declared with add_state / add_child / "
                "add_setting, so a merge would drop it"
            )
        custom = False
        for name, how in self._reductions.items():
            if how == "custom":
                custom = True
                continue
            mine, theirs = getattr(self, name), getattr(other, name)
            if how == "child":
                mine.merge(theirs)
            else:
                setattr(self, name, _combine(how, mine, theirs))
        if custom:
            self.merge_custom(other)
