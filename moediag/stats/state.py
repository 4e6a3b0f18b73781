"""Declared state and one generic merge for every accumulator (torchmetrics' ``add_state`` /
``merge_state``).

An accumulator declares each field of its state with :meth:`Accumulator.add_state` (a default and how two
values combine), its sub-accumulators with :meth:`Accumulator.add_child`, and its settings with
:meth:`Accumulator.add_setting`. :meth:`Accumulator.merge` then folds in another accumulator field by
field, and refuses to run when an attribute was set without being declared: a new field cannot be left
out of a merge by forgetting to list it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

Reduce = Literal["sum", "max", "min", "or", "child"] | Callable[[Any, Any], Any]

_BOOKKEEPING = frozenset({"_reductions", "_settings"})


def _combine(how: Reduce, a: Any, b: Any) -> Any:
    if how == "sum":
        return a + b
    if how == "max":
        return max(a, b)
    if how == "min":
        return min(a, b)
    if how == "or":
        return a or b
    assert callable(how)
    return how(a, b)


class Accumulator:
    """Base of the mergeable statistics: declared state, generic :meth:`merge`."""

    _reductions: dict[str, Reduce]
    _settings: set[str]

    def _declare(self) -> None:
        if "_reductions" not in self.__dict__:
            object.__setattr__(self, "_reductions", {})
            object.__setattr__(self, "_settings", set())

    def add_state(self, name: str, default: Any, reduce: Reduce = "sum") -> None:
        """A field of the state, set to ``default``: merged by ``reduce`` (``sum``, ``max``, ``min``,
        ``or``, or a function ``(mine, theirs) -> merged``)."""
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

    def undeclared(self) -> list[str]:
        """Attributes set without being declared (they would be lost by a merge)."""
        self._declare()
        known = set(self._reductions) | self._settings | _BOOKKEEPING
        return sorted(name for name in vars(self) if name not in known)

    def merge(self, other: Accumulator) -> None:
        """Fold in ``other`` (the tokens that come after): every declared field, by its reduction."""
        missing = self.undeclared()
        if missing:
            raise TypeError(
                f"{type(self).__name__}: {', '.join(missing)} not declared with add_state / add_child / "
                "add_setting, so a merge would drop it"
            )
        for name, how in self._reductions.items():
            mine, theirs = getattr(self, name), getattr(other, name)
            if how == "child":
                mine.merge(theirs)
            else:
                setattr(self, name, _combine(how, mine, theirs))
