"""DySTreSS: dynamically scaled temperature.

Reference: Manna, Chattopadhyay, Dey, Bhattacharya, Pal, "Dynamically Scaled Temperature in
Self-Supervised Contrastive Learning", IEEE TAI 6(6), 2025, arXiv:2308.01140 (code: sadimanna/DySTreSS).

NT-Xent with a per-entry temperature of the detached cosine:

.. math::
    \\ell_{ij} = \\frac{s_{ij}}{\\tau(\\operatorname{sg}(s_{ij}))},\\qquad
    \\tau(s) = \\tau_{min} + \\tfrac12(\\tau_{max} - \\tau_{min})(1 - \\cos \\pi s)\\quad\\text{("cossin")}

for the positive and every negative; the positive is in the denominator. Near-orthogonal pairs get
``tau_min``, near-identical (and antipodal) ones ``tau_max``. Other shapes: ``"shifted"`` (SimCSE and
ImageNet code), ``"cosconst"`` (CIFAR script), ``"const"``; see :class:`mmcl.losses.parts.DynamicTemperature`.

``V`` views: NT-Xent's multi-view table (docs/multiview.md) with these per-entry temperatures.

Data: ``V >= 2`` views ``(N, d)``. Minimum batch: 2 pairs.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss_fn = losses.build("dystress", tau_min=0.07, tau_max=0.2)
    >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import Layout, TwoViewLayout, as_layout
from mmcl.losses.parts.temperature import DynamicTemperature
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "dystress",
    paper="DySTreSS, Manna et al. 2025 (arXiv:2308.01140)",
    inputs="pairs or V views",
    search_space={"tau_min": {"log": [0.02, 0.1]}, "tau_max": {"log": [0.1, 1.0]}},  # tau_min <= tau_max everywhere
)
class DySTreSSLoss(ContrastiveLoss):
    """DySTreSS (module docstring): NT-Xent with a per-entry temperature of the detached cosine.

    Args:
        tau_min: the temperature of near-orthogonal pairs.
        tau_max: the temperature of near-identical (and antipodal) pairs.
        shape: ``"cossin"``, ``"shifted"`` (SimCSE and ImageNet code), ``"cosconst"`` (CIFAR script) or
            ``"const"`` (``tau_max`` everywhere).
        offset: the shifted shapes' offset (None: the shape's, -0.4 for shifted, 0.2 for cosconst).
        width: the shifted shapes' width (None: the shape's, 0.7 for shifted, 0.8 for cosconst).
        detach_temperature: no gradient through the temperature (the reference code).
        tau_min_schedule: ``"constant"``, or ``"linear_to_max"``: ``tau_min`` rises to ``tau_max`` over training.
    """

    def __init__(
        self,
        tau_min: float = 0.07,
        tau_max: float = 0.2,
        shape: str = "cossin",
        offset: float | None = None,
        width: float | None = None,
        detach_temperature: bool = True,
        tau_min_schedule: str = "constant",
        layout: Layout | str | dict | None = None,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            as_layout(layout, TwoViewLayout),
            DynamicTemperature(tau_min, tau_max, shape, offset, width, detach_temperature, tau_min_schedule),
            **execution,
        )
