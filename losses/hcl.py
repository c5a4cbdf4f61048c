"""HCL / H-UCL: contrastive learning with hard negative samples.

Reference: Robinson, Chuang, Sra, Jegelka, "Contrastive Learning with Hard Negative Samples",
ICLR 2021, arXiv:2010.04592 (code: joshr17/HCL, ``image/main.py``).

The official finite-batch estimator, NT-Xent layout, ``N = 2B - 2``:

.. math::
    R_k = N\\frac{\\sum_l e^{(1+\\beta)s_{kl}/\\tau}}{\\sum_l e^{\\beta s_{kl}/\\tau}},\\quad
    Ng_k = \\max\\Big(\\frac{R_k - \\tau^+ N P_k}{1-\\tau^+},\\ N e^{-1/\\tau}\\Big),\\quad
    \\ell_k = -\\log\\frac{P_k}{P_k + Ng_k}

``beta`` tilts the negatives toward the hard ones (``beta = 0``: the debiased loss; with ``tau_plus = 0``
NT-Xent). The importance weights stay in the graph as in the official code; ``detach_weights=True``
detaches them (same value, different gradient). ``beta_schedule="anneal_down"`` lowers beta to 0 in 9
steps over training (the code's ``--anneal down``; the trainer sets the progress).

``V`` views (docs/multiview.md): every other row in the denominator, the tilt on the negatives only and the
debiasing with the mean of the row's positive exponentials; ``beta = tau_plus = 0`` is NT-Xent.

Data: ``V >= 2`` views ``(N, d)``. Minimum batch: 2 pairs.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss = losses.build("hcl", beta=1.0, tau_plus=0.1)(torch.randn(8, 16), torch.randn(8, 16))
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
    "hcl",
    paper="HCL, Robinson et al. 2021 (arXiv:2010.04592)",
    inputs="pairs or V views",
    aliases=("h_ucl",),
    search_space={"temperature": {"log": [0.05, 1.0]}, "beta": [0.0, 2.0], "tau_plus": [0.01, 0.2]},
)
class HCLLoss(ContrastiveLoss):
    """HCL (module docstring).

    Args:
        beta: concentration of the tilt toward hard negatives (0: the debiased loss).
        tau_plus: class prior ``tau+`` of the debiasing, in [0, 1) (0 and beta 0: NT-Xent).
        floor: clamp the negative mass at ``N e^{-1/tau}``, as the reference code does.
        detach_weights: detach the importance weights (same value, another gradient; the reference keeps them).
        beta_schedule: ``"constant"``, or ``"anneal_down"``: beta to 0 in 9 steps over training (``--anneal down``).
    """

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.5,
        beta: float = 1.0,
        tau_plus: float = 0.1,
        floor: bool = True,
        detach_weights: bool = False,
        beta_schedule: str = "constant",
        layout: Layout | str | dict | None = None,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            as_layout(layout, TwoViewLayout),
            temperature,
            negatives=NegativeWeighting(
                beta=beta, detach_weights=detach_weights, tau_plus=tau_plus, floor=floor, beta_schedule=beta_schedule
            ),
            **execution,
        )
