"""SCL and H-SCL: supervised contrastive learning with (hard) label-aware negatives.

Reference: Jiang, Nguyen, Ishwar, Aeron, "Supervised Contrastive Learning with Hard Negative Samples",
arXiv:2209.00078 (code: rjiang03/H-SCL, ``main/main.py``), implemented as that code computes it:

.. math::
    G_k^\\beta = N\\frac{\\sum_{l \\in Neg_y(k)} e^{(1+\\beta)s_{kl}/\\tau}}
    {\\sum_{l \\in Neg_y(k)} e^{\\beta s_{kl}/\\tau}},
    \\qquad \\ell_{k,p} = -\\log\\frac{e^{s_{kp}/\\tau}}{e^{s_{kp}/\\tau} + G_k^\\beta}

with ``Neg_y(k)`` the rows of another class (both views), the nominal ``N = 2B - 2`` whatever their
number, one term per (anchor, positive) pair (only that positive in its denominator) and the loss the
mean over all pairs. SCL is ``beta = 0``. Positives: every other row of the anchor's class
(``positives="labels"``, the training code) or the augmentation partner only (``"augmentation"``).
Anchors whose batch holds no other class are left out (``n_valid_anchors``); a batch of one class raises.
This is not SupCon's ``L_out``. The code fixes ``tau = 0.5``.

``V`` views (docs/multiview.md): the same on the stacked views, nominal ``N = V (B - 1)``.

Data: ``V >= 2`` views ``(N, d)`` + ``labels`` ``(N,)``. Minimum batch: 2 pairs of at least 2 classes.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss_fn = losses.build("h_scl", beta=1.0)
    >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16), labels=torch.tensor([0, 1] * 4))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import LabelLayout
from mmcl.losses.parts.negatives import NegativeWeighting
from mmcl.losses.parts.temperature import TemperatureRule
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


class HSCLLoss(ContrastiveLoss):
    """H-SCL as the H-SCL code computes it (module docstring); SCL is ``beta = 0``.

    Args:
        beta: tilt of the negatives toward hard ones (0: SCL).
        detach_weights: detach the tilt's weights (same value, another gradient).
        positives: ``"labels"``: every other row of the anchor's class (the training code); ``"augmentation"``:
            the anchor's other views only.
        nominal_negatives: count the negatives as the nominal ``2B - 2`` whatever their number (the code), else
            their actual number.
    """

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.5,
        beta: float = 0.5,
        detach_weights: bool = False,
        positives: str = "labels",
        nominal_negatives: bool = True,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            LabelLayout(anchors="all", positives=positives, negatives="other_labels"),
            temperature,
            negatives=NegativeWeighting(
                beta=beta, detach_weights=detach_weights, count="nominal" if nominal_negatives else "actual"
            ),
            reduction="pairs",
            empty_negatives="skip",
            **execution,
        )


class SCLLoss(HSCLLoss):
    """SCL: H-SCL without the tilt (``beta = 0``)."""

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.5,
        positives: str = "labels",
        nominal_negatives: bool = True,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(temperature, 0.0, False, positives, nominal_negatives, **execution)


# SCL first: it is the base case (beta = 0) and reads first in the table.
SCL_PAPER = "SCL as coded in H-SCL, Jiang et al. 2022 (arXiv:2209.00078)"
register_loss(
    "scl", paper=SCL_PAPER, inputs="pairs or V views + labels", search_space={"temperature": {"log": [0.05, 1.0]}}
)(SCLLoss)
register_loss(
    "h_scl",
    paper="H-SCL, Jiang et al. 2022 (arXiv:2209.00078)",
    inputs="pairs or V views + labels",
    search_space={"temperature": {"log": [0.05, 1.0]}, "beta": [0.0, 2.0]},
)(HSCLLoss)
