"""Debiased contrastive loss.

Reference: Chuang, Robinson, Lin, Torralba, Jegelka, "Debiased Contrastive Learning", NeurIPS 2020,
arXiv:2007.00224 (code: chingyaoc/DCL).

.. math::
    P_k = e^{s_{k,pos}/\\tau},\\quad G_k = \\sum_{l \\in Neg(k)} e^{s_{kl}/\\tau},\\quad N = 2B-2,\\quad
    Ng_k = \\max\\Big(\\frac{G_k - \\tau^+ N P_k}{1 - \\tau^+},\\ N e^{-1/\\tau}\\Big),\\quad
    \\ell_k = -\\log\\frac{P_k}{P_k + Ng_k}

``tau_plus`` is the class prior (the chance that a "negative" shares the anchor's class); ``tau_plus=0``
is NT-Xent. Computed in log space, shifted by the row maximum, so it is exact and stable.

``V`` views (docs/multiview.md): every other row in the denominator, the negatives' mass debiased with
Chuang et al.'s estimator for ``M`` positives (the mean of the row's positive exponentials).

Data: ``V >= 2`` views ``(N, d)``. Minimum batch: 2 pairs.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss = losses.build("debiased", tau_plus=0.1)(torch.randn(8, 16), torch.randn(8, 16))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import Layout, TwoViewLayout, as_layout
from mmcl.losses.parts.negatives import NegativeWeighting
from mmcl.losses.parts.temperature import TemperatureRule
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "debiased",
    paper="Debiased CL, Chuang et al. 2020 (arXiv:2007.00224)",
    inputs="pairs or V views",
    search_space={"temperature": {"log": [0.05, 1.0]}, "tau_plus": [0.01, 0.2]},
)
class DebiasedLoss(ContrastiveLoss):
    """Debiased contrastive loss (module docstring).

    Args:
        tau_plus: class prior ``tau+``, the probability that a negative shares the anchor's class, in [0, 1).
        floor: clamp the debiased negative mass at ``N e^{-1/tau}``, as the reference code does.
    """

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.5,
        tau_plus: float = 0.1,
        floor: bool = True,
        layout: Layout | str | dict | None = None,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            as_layout(layout, TwoViewLayout),
            temperature,
            negatives=NegativeWeighting(tau_plus=tau_plus, floor=floor),
            **execution,
        )
