"""Cross-view InfoNCE (CPC; CLIP's symmetric form).

References: van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive Coding",
arXiv:1807.03748; Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", arXiv:2103.00020.

.. math::
    \\ell_i^{u\\to v} = -\\frac{u_i \\cdot v_i}{\\tau} + \\operatorname{lse}_{j=1..B} \\frac{u_i \\cdot v_j}{\\tau},
    \\qquad L = \\tfrac12 (L^{u\\to v} + L^{v\\to u}) \\ \\text{(symmetric, mean)}

Only cross-view negatives; the positive is in the denominator. The default layout for two modalities
(``z_a`` from one adapter, ``z_b`` from another). Extra hard negatives, when passed, join every row's
denominator.

Data: pairs ``(z_a, z_b)``; optional ``negatives`` ``(N, d)``; more views are refused (a cross-view table:
call it on each pair of views). Minimum batch: 2 pairs.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss_fn = losses.build("info_nce", temperature=0.07, direction="symmetric")
    >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
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
    "info_nce",
    paper="CPC, van den Oord et al. 2018 (arXiv:1807.03748); CLIP (arXiv:2103.00020)",
    inputs="pairs (+ optional hard negatives)",
    search_space={"temperature": {"log": [0.02, 1.0]}},
)
class InfoNCELoss(ContrastiveLoss):
    """Cross-view InfoNCE (module docstring).

    Args:
        direction: which view's rows are anchors: ``"u->v"``, ``"v->u"`` or ``"symmetric"`` (both, CLIP's form).
    """

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.1,
        direction: str = "symmetric",
        direction_reduction: str = "mean",
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            CrossViewLayout(direction),
            temperature,
            direction_reduction=direction_reduction,
            accepts_negatives=True,
            **execution,
        )
