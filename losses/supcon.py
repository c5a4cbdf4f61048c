"""SupCon: supervised contrastive loss (``L_out``).

Reference: Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, arXiv:2004.11362
(code: HobbitLong/SupContrast, ``losses.py``).

.. math::
    \\ell_i = -\\frac{\\tau}{\\tau_{base}}\\frac{1}{|P(i)|}\\sum_{p \\in P(i)}\\Big[\\frac{s_{ip}}{\\tau}
    - \\operatorname{lse}_{a \\in A(i)} \\frac{s_{ia}}{\\tau}\\Big], \\qquad L = \\operatorname{mean}_i \\ell_i

``A(i)``: every row of ``[u; v]`` but ``i``; ``P(i)``: the rows of the same class (the augmentation
partner when ``labels`` is None; an explicit instance-level ``positive_mask`` ``(N, N)`` also works). An
anchor without positives contributes 0 and still counts (the reference code's rule). ``contrast_mode``
``"all"`` uses both views as anchors, ``"one"`` the first only. ``base_temperature`` defaults to the
temperature (factor 1); 0.07 reproduces the reference code's gradient scale.

Any number of views: ``loss_fn(z_1, ..., z_V, labels=...)`` or SupContrast's own call ``loss_fn(features,
labels)`` with ``features`` ``(N, V, d)`` compute SupContrast's ``SupConLoss`` (tested equal in float64,
values and gradients); ``global_views=G`` keeps only the first ``G`` views as candidates (multi-crop).

Data: ``V >= 2`` views ``(N, d)`` + ``labels`` ``(N,)``. Minimum batch: 2 instances.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss_fn = losses.build("supcon", temperature=0.1)
    >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16), labels=torch.tensor([0, 1, 0, 1, 2, 2, 3, 3]))
    >>> features = torch.randn(8, 3, 16)  # SupContrast's [bsz, n_views, d]
    >>> loss = loss_fn(features, torch.tensor([0, 1, 0, 1, 2, 2, 3, 3]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import LabelLayout
from mmcl.losses.parts.temperature import FixedTemperature, TemperatureRule, as_temperature_rule
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "supcon",
    paper="SupCon, Khosla et al. 2020 (arXiv:2004.11362)",
    inputs="pairs or V views + labels (optional)",
    search_space={"temperature": {"log": [0.02, 1.0]}},
)
class SupConLoss(ContrastiveLoss):
    """SupCon's ``L_out`` (module docstring).

    Args:
        base_temperature: ``tau_base`` of the loss's factor ``tau / tau_base`` (None: the temperature, factor 1;
            0.07: the reference code's gradient scale).
        contrast_mode: ``"all"``: every view's rows are anchors; ``"one"``: the first view's only.
    """

    min_global_batch = 2  # with one pair the denominator holds only the positive

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.1,
        base_temperature: float | None = None,
        contrast_mode: str = "all",
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        rule = as_temperature_rule(temperature)
        scale = 1.0
        if base_temperature is not None:
            if not isinstance(rule, FixedTemperature):
                raise ValueError("base_temperature needs a fixed temperature (the factor is tau / base_temperature)")
            if not base_temperature > 0:
                raise ValueError(f"base_temperature must be > 0, got {base_temperature}")
            scale = rule.temperature / base_temperature
        super().__init__(
            LabelLayout(anchors=contrast_mode, positives="labels", negatives="others"),
            rule,
            positives_in_denominator=True,
            loss_scale=scale,
            empty_negatives="allow",
            **execution,
        )
