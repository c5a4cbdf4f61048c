"""Composable parts of the loss pipeline (see :mod:`mmcl.losses.core`)."""

from mmcl.losses.parts.layouts import (
    LAYOUTS,
    CrossViewLayout,
    LabelLayout,
    Layout,
    QueueLayout,
    TwoViewLayout,
    WithinViewLayout,
    as_layout,
)
from mmcl.losses.parts.margin import MarginGradientScaling, PositiveMargin
from mmcl.losses.parts.negatives import NegativeWeighting
from mmcl.losses.parts.temperature import (
    AdaptiveTemperature,
    DynamicTemperature,
    FixedTemperature,
    LearnableTemperature,
    TemperatureRule,
    as_temperature_rule,
)
from mmcl.losses.parts.weights import MACLWeights, PositiveWeights

__all__ = [
    "LAYOUTS",
    "AdaptiveTemperature",
    "CrossViewLayout",
    "DynamicTemperature",
    "FixedTemperature",
    "LabelLayout",
    "LearnableTemperature",
    "Layout",
    "MACLWeights",
    "MarginGradientScaling",
    "NegativeWeighting",
    "PositiveMargin",
    "PositiveWeights",
    "QueueLayout",
    "TemperatureRule",
    "TwoViewLayout",
    "WithinViewLayout",
    "as_layout",
    "as_temperature_rule",
]
