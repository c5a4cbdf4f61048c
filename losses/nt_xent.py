"""NT-Xent (SimCLR).

Reference: Chen, Kornblith, Norouzi, Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, arXiv:2002.05709.

.. math::
    \\ell_k = -\\frac{s_{k,pos(k)}}{\\tau} + \\operatorname{lse}_{l \\ne k} \\frac{s_{kl}}{\\tau},
    \\qquad L = \\frac{1}{2B}\\sum_{k=1}^{2B} \\ell_k

over the stacked batch ``z = [u; v]`` (2B anchors, ``2B - 2`` negatives each).

``V`` views (docs/multiview.md): every row of every view is an anchor, its positives ``P(k)`` the other
views of its instance, every other row in its denominator; SupContrast's ``SupConLoss`` with
``labels=None`` (the ``L_out`` form, which solo-learn's ``simclr_loss_func`` is not for ``V > 2``):

.. math::
    \\ell_k = \\frac{1}{|P(k)|}\\sum_{p \\in P(k)} \\Big[-\\frac{s_{kp}}{\\tau}
    + \\operatorname{lse}_{l \\ne k} \\frac{s_{kl}}{\\tau}\\Big]

``global_views=G``: only the first ``G`` views are candidates (multi-crop's local views are anchors only).

Data: ``V >= 2`` views ``(N, d)`` (or features ``(N, V, d)``). Minimum batch: 2 instances.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss_fn = losses.build("nt_xent", temperature=0.5)
    >>> z_a, z_b = torch.randn(8, 16), torch.randn(8, 16)
    >>> loss = loss_fn(z_a, z_b)
    >>> sorted(loss_fn.diagnostics)[:3]
    ['contrastive_acc', 'hardest_neg_cos_mean', 'n_anchors']
    >>> loss = loss_fn(z_a, z_b, torch.randn(8, 16), torch.randn(8, 16))  # four views
    >>> int(loss_fn.diagnostics["n_anchors"]), float(loss_fn.diagnostics["pos_per_row_mean"])
    (32, 3.0)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import Layout, TwoViewLayout, as_layout
from mmcl.losses.parts.temperature import TemperatureRule
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "nt_xent",
    paper="SimCLR, Chen et al. 2020 (arXiv:2002.05709)",
    inputs="pairs or V views",
    search_space={"temperature": {"log": [0.02, 1.0]}},
)
class NTXentLoss(ContrastiveLoss):
    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.5,
        layout: Layout | str | dict | None = None,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            as_layout(layout, TwoViewLayout),
            temperature,
            **execution,
        )
