"""DHEL: decoupled hyperspherical energy loss.

Reference: Koromilas, Bouritsas, Giannakopoulos, Nicolaou, Panagakis, "Bridging Mini-Batch and
Asymptotic Analysis in Contrastive Learning: From InfoNCE to Kernel-Based Losses", ICML 2024,
arXiv:2405.18045 (code: pakoromilas/DHEL-KCL).

.. math::
    L = \\frac1B\\sum_i\\Big[-\\frac{u_i\\cdot v_i}{\\tau} + \\operatorname{lse}_{j\\ne i}\\frac{u_i\\cdot u_j}{\\tau}
    + [\\text{include\\_augs}]\\,\\operatorname{lse}_{j \\ne i}\\frac{v_i\\cdot v_j}{\\tau}\\Big]

Only within-view negatives: alignment and uniformity are fully decoupled. ``include_augs=False`` drops
the second view's energy (then the loss is not symmetric in the views).

Data: pairs ``(z_a, z_b)``; more views are refused (the alignment is ``u_i . v_i``). Minimum batch: 2 pairs.
The loss can be negative.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss = losses.build("dhel", temperature=0.3)(torch.randn(8, 16), torch.randn(8, 16))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import WithinViewLayout
from mmcl.losses.parts.temperature import TemperatureRule
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "dhel",
    paper="DHEL, Koromilas et al. 2024 (arXiv:2405.18045)",
    inputs="pairs",
    search_space={"temperature": {"log": [0.02, 1.0]}},
)
class DHELLoss(ContrastiveLoss):
    """DHEL (module docstring).

    Args:
        include_augs: also the second view's energy (False: the first view's only; the loss is then not symmetric).
    """

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.3,
        include_augs: bool = True,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            WithinViewLayout(include_second_view=include_augs),
            temperature,
            objective="decoupled",
            direction_reduction="sum",
            **execution,
        )
