"""DCL and DCLW: decoupled contrastive learning.

Reference: Yeh, Hong, Hsu, Liu, Chen, LeCun, "Decoupled Contrastive Learning", ECCV 2022,
arXiv:2110.06848. No official code; lightly's ``DCLLoss``/``DCLWLoss`` implement the split form.

Joint form (the paper's Eq. 6, default):

.. math::
    \\ell_i^{(1)} = -w_i\\frac{u_i\\cdot v_i}{\\tau} + \\log\\Big(\\sum_{j\\ne i} e^{u_i\\cdot u_j/\\tau}
    + \\sum_{j \\ne i} e^{u_i\\cdot v_j/\\tau}\\Big), \\qquad
    L = \\tfrac12(\\operatorname{mean}_i \\ell_i^{(1)} + \\operatorname{mean}_i \\ell_i^{(2)})

Split form (``negative_sum="split"``, lightly): one log-sum-exp per view, added. The positive is not in
the denominator. DCL has ``w_i = 1``; DCLW weighs positives by the detached
``w_i = 2 - B softmax_i(u . v / sigma)`` (mean exactly 1).

``V`` views (DCL; docs/multiview.md): ``-mean_p w u_i . z_p / tau + log M_i`` over the row's other views ``p``,
the negatives every row of another instance (split: one log-sum-exp per view). DCLW refuses them: its
weights are a softmax over the instances' one pair.

Data: ``V >= 2`` views ``(N, d)`` (DCLW: pairs). Minimum batch: 2 pairs. The loss can be negative.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss = losses.build("dclw", temperature=0.1, sigma=0.5)(torch.randn(8, 16), torch.randn(8, 16))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.checks import check_choice
from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import Layout, TwoViewLayout, as_layout
from mmcl.losses.parts.negatives import NegativeWeighting
from mmcl.losses.parts.temperature import TemperatureRule
from mmcl.losses.parts.weights import PositiveWeights
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "dcl",
    paper="DCL, Yeh et al. 2022 (arXiv:2110.06848)",
    inputs="pairs or V views",
    search_space={"temperature": {"log": [0.02, 1.0]}},
)
class DCLLoss(ContrastiveLoss):
    """DCL (module docstring).

    Args:
        negative_sum: ``"joint"``: one log-sum-exp over both views' negatives (the paper's Eq. 6); ``"split"``:
            one per view, added (lightly).
    """

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.1,
        negative_sum: str = "joint",
        direction_reduction: str = "mean",
        layout: Layout | str | dict | None = None,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        split = check_choice("negative_sum", negative_sum, ("joint", "split")) == "split"
        super().__init__(
            as_layout(layout, TwoViewLayout),
            temperature,
            objective="decoupled",
            negatives=NegativeWeighting(split_views=split),
            direction_reduction=direction_reduction,
            **execution,
        )


@register_loss(
    "dclw",
    paper="DCLW, Yeh et al. 2022 (arXiv:2110.06848)",
    inputs="pairs",
    search_space={"temperature": {"log": [0.02, 1.0]}, "sigma": [0.1, 1.0]},
)
class DCLWLoss(DCLLoss):
    """DCLW: DCL with von Mises-Fisher positive weights (module docstring).

    Args:
        sigma: width of the positive weights ``w_i = 2 - B softmax_i(u_i . v_i / sigma)`` (mean 1).
        batch_stat_scope: the weights' softmax over this process's batch (``"local"``, as the reference) or the
            gathered one (``"global"``).
    """

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.1,
        sigma: float = 0.5,
        negative_sum: str = "joint",
        direction_reduction: str = "mean",
        batch_stat_scope: str = "local",
        layout: Layout | str | dict | None = None,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(temperature, negative_sum, direction_reduction, layout, **execution)
        self.positive_weights = PositiveWeights(sigma, batch_stat_scope)
