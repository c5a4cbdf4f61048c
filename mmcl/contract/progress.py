"""Progress of the long loops of an evaluation (embedding a split, a linear probe's epochs, cross-validation folds,
encoding sentences): the loop's owner takes a :data:`Progress`, a callable that yields the loop's items and shows a
bar while they pass. The evaluation context gives each task one (:meth:`mmcl.tasks.EvalContext.progress`); the
functions that take plain tensors default to :func:`no_progress`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")

#: ``progress(items, total=None)``: the same items, in order, shown as they pass (``total`` where ``items`` has no
#: length, e.g. a generator).
Progress = Callable[..., Iterable]


def no_progress(items: Iterable[T], total: int | None = None) -> Iterable[T]:
    """No bar: the items as they are."""
    return items
