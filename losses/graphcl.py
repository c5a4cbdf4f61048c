"""GraphCL's loss.

Reference: You, Chen, Sui, Chen, Wang, Shen, "Graph Contrastive Learning with Augmentations",
NeurIPS 2020, arXiv:2010.13902 (code: Shen-Lab/GraphCL, ``unsupervised_TU/gsimclr.py``, ``loss_cal``).

.. math::
    \\ell_n = -\\frac{\\operatorname{sim}(x_n, x'_n)}{\\tau}
    + \\operatorname{lse}_{n' \\ne n}\\frac{\\operatorname{sim}(x_n, x'_{n'})}{\\tau},
    \\qquad L = \\operatorname{mean}_n \\ell_n

The positive is **not** in the denominator (decoupled); only the ``B - 1`` cross-view negatives; one
direction, first view (un-augmented graph) to the augmented one. It can be negative.

Data: pairs ``(z_a, z_b)``; more views are refused (a cross-view table). Minimum batch: 2 pairs.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss = losses.build("graphcl")(torch.randn(8, 96), torch.randn(8, 96))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import CrossViewLayout
from mmcl.losses.parts.temperature import TemperatureRule
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "graphcl",
    paper="GraphCL, You et al. 2020 (arXiv:2010.13902)",
    inputs="pairs",
    search_space={"temperature": {"log": [0.05, 1.0]}},
)
class GraphCLLoss(ContrastiveLoss):
    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.2,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            CrossViewLayout("u->v"),
            temperature,
            objective="decoupled",
            **execution,
        )
