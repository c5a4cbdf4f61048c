"""Paired data sources: ``data.pairs`` names one, registered with :func:`register_pairs`.

A source is a function ``(a, b, **options) -> PairSource`` of the two built tower adapters (so that it can read
what a tower's own data section loads, e.g. a graph tower's molecules) and ``data.options``. ``items_a[i]`` and
``items_b[i]`` are a pair; each item is what its tower's ``collate_eval`` takes as an input (a graph ``Data``, a
sentence, an image tensor).

Example: captions of your own images, ``data.pairs=captions``::

    from mmcl.modalities.paired import PairSource, register_pairs

    @register_pairs("captions")
    def captions(a, b, file: str = "captions.tsv") -> PairSource:
        ...  # return PairSource(items_a=images, items_b=sentences)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mmcl.contract import Registry


@dataclass(frozen=True)
class PairSource:
    """Items of both towers, matched by index: ``(items_a[i], items_b[i])`` is pair ``i``."""

    items_a: Sequence[Any]
    items_b: Sequence[Any]

    def __post_init__(self) -> None:
        if len(self.items_a) != len(self.items_b):
            raise ValueError(f"a paired source gave {len(self.items_a)} items for tower a and {len(self.items_b)} "
                             "for tower b; pairs are matched by index, so the counts must agree")  # fmt: skip


PairLoader = Callable[..., PairSource]
PAIR_SOURCES: Registry[PairLoader] = Registry(
    "paired data source", builtin=("mmcl.modalities.paired.molecules",), config_key="data.pairs"
)


def register_pairs(name: str) -> Callable[[PairLoader], PairLoader]:
    """Decorator registering ``loader(a, b, **options) -> PairSource`` as ``data.pairs`` (module docstring)."""
    return PAIR_SOURCES.register(name)
