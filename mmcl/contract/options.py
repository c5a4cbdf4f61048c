"""Option types with ranges, for the dataclasses that declare config sections and task options.

A numeric option declares its range in its type hint, so that every config key is checked the same way::

    @dataclass
    class KNNOptions:
        k: PositiveInt = 200
        temperature: PositiveFloat = 0.1

The engine's config loader reads the :class:`Range` of each ``Annotated`` hint and refuses a value outside it
with a message naming the key, the value and the range (``eval.knn.k=0 must be >= 1``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``ge``/``gt`` below, ``le``/``lt`` above (None: unbounded)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def contains(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

    def __str__(self) -> str:
        ge, gt, le, lt = (_plain(bound) for bound in (self.ge, self.gt, self.le, self.lt))
        low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
        high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f">= {ge}" if ge is not None else f"> {gt}"
        return f"<= {le}" if le is not None else f"< {lt}"


def short_number(value: int) -> str:
    """An integer as a message shows it: in full, or its first digits and length when it is long."""
    text = str(value)
    return text if len(text) <= 20 else f"{text[:12]}...({len(text)} digits)"


def _plain(bound: float | None) -> str | None:
    """A bound as written: integers in full (a seed's 4294967295), other numbers in their short form."""
    if bound is None:
        return None
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]  # a probability or a ratio in [0, 1]
#: A seed every library mmcl seeds takes (scikit-learn's ``random_state`` stops at 2**32 - 1).
Seed = Annotated[int, Range(ge=0, le=2**32 - 1)]


def build_dataclass(cls: type, values: dict, section: str) -> Any:
    """An instance of the dataclass ``cls`` from a config ``section``'s ``values``: unknown keys, wrong types and
    values outside an option's :class:`Range` are refused with a ``ValueError`` naming ``section.key``."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {section!r} must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in config section {section!r}; valid keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls, include_extras=True)
    checked = {key: check_type(f"{section}.{key}", value, hints[key]) for key, value in values.items()}
    return cls(**checked)


def check_type(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type hint ``hint`` (``name`` in messages); ints become floats where a float is
    expected."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        value = check_type(name, value, args[0])
        for bound in (a for a in hint.__metadata__ if isinstance(a, Range)):
            if value is not None and not bound.contains(value):
                raise ValueError(f"{name}={value!r} must be {bound}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_type(name, value, arg)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"{name}={value!r} does not match {hint}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name}={value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{name}={value!r} must be a list")
        return [check_type(f"{name}[{i}]", item, args[0]) for i, item in enumerate(value)] if args else value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{name}={short_number(value)} is too large for a number (above {sys.float_info.max:.3g})"
                             ) from None  # fmt: skip
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # data.augment=28 reads as a number in YAML
    if hint is dict and isinstance(value, dict):
        return value
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{name}={value!r} must be of type {getattr(hint, '__name__', hint)}")
    if hint is float and not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number")
    return value
