"""Composable parts of the loss pipeline (see :mod:`losses.core`)."""

from losses.parts.layouts import (
    LAYOUTS,
    CrossViewLayout,
    LabelLayout,
    Layout,
    QueueLayout,
    TwoViewLayout,
    WithinViewLayout,
    as_layout,
)
from losses.parts.margin import MarginGradientScaling, PositiveMargin
from losses.parts.negatives import NegativeWeighting
from losses.parts.temperature import (
    AdaptiveTemperature,
    DynamicTemperature,
    FixedTemperature,
    TemperatureRule,
    as_temperature_rule,
)

__all__ = [
    "LAYOUTS",
    "AdaptiveTemperature",
    "CrossViewLayout",
    "DynamicTemperature",
    "FixedTemperature",
    "LabelLayout",
    "Layout",
    "MarginGradientScaling",
    "NegativeWeighting",
    "PositiveMargin",
    "QueueLayout",
    "TemperatureRule",
    "TwoViewLayout",
    "WithinViewLayout",
    "as_layout",
    "as_temperature_rule",
]
