"""How a loss runs, as opposed to what it computes: one group of options every loss takes (:class:`Execution`:
``gather_distributed``, ``diagnostics``; the softmax losses also ``blockwise`` and ``block_size``).

A preset declares them once as ``**execution`` and hands them to its base class, so they are never
restated; :func:`mmcl.losses.options` lists them after the preset's own options.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TypedDict


class ExecutionOptions(TypedDict, total=False):
    """Keywords of every loss (``**execution: Unpack[ExecutionOptions]``)."""

    gather_distributed: bool
    diagnostics: bool


class BlockwiseOptions(ExecutionOptions, total=False):
    """Keywords of the softmax-family losses: also the blockwise path's."""

    blockwise: bool | None
    block_size: int | None


@dataclass(frozen=True)
class Execution:
    """Validated execution options (a loss class names those it takes in its ``execution_options``).

    Args:
        gather_distributed: under ``torch.distributed``, contrast with every process's rows (False: each process's
            own batch only).
        diagnostics: fill ``loss.diagnostics`` after each call (False: skip those statistics).
        blockwise: (softmax losses) compute the table in blocks of anchor rows, memory linear in the batch: None
            from 2^16 entries on, True always, False never.
        block_size: (softmax losses) anchor rows per block (None: chosen from the table's size).
    """

    gather_distributed: bool = True
    diagnostics: bool = True
    blockwise: bool | None = None
    block_size: int | None = None

    def __post_init__(self) -> None:
        if self.blockwise not in (None, True, False):
            raise ValueError(f"blockwise must be None (automatic), True or False, got {self.blockwise!r}")
        size = self.block_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"block_size must be a positive integer (anchor rows per block), got {size!r}")
        object.__setattr__(self, "gather_distributed", bool(self.gather_distributed))
        object.__setattr__(self, "diagnostics", bool(self.diagnostics))

    @classmethod
    def of(cls, owner: str, accepted: type, options: dict) -> Execution:
        """The options of a loss class whose keywords are the TypedDict ``accepted``; others raise, naming them."""
        names = list(accepted.__annotations__)
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {owner}; its execution options: {names}")
        return cls(**options)

    @classmethod
    def defaults(cls, accepted: type) -> dict[str, object]:
        """The defaults of the keywords of the TypedDict ``accepted``, in its order."""
        values = asdict(cls())
        return {name: values[name] for name in accepted.__annotations__}
