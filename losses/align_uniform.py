"""Alignment and uniformity (Wang & Isola) as a training loss.

Reference: Wang, Isola, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere", ICML 2020, arXiv:2005.10242 (code: ssnl/align_uniform).

.. math::
    L_{align} = \\operatorname{mean}_i \\|u_i - v_i\\|_2^{\\alpha},\\qquad
    L_{unif}(u) = \\log \\operatorname{mean}_{i<j} e^{-t\\|u_i - u_j\\|^2},\\qquad
    L = L_{align} + \\lambda\\,\\tfrac12\\big(L_{unif}(u) + L_{unif}(v)\\big)

Uniformity is a log of a mean, so it does not split over processes: under ``torch.distributed`` every
rank evaluates it on the whole gathered batch (the mean over ranks stays the global loss).

Data: pairs ``(z_a, z_b)``; more views are refused (the alignment is written for one pair). Minimum batch:
2 pairs. The loss is usually negative.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss_fn = losses.build("align_uniform", alpha=2, t=2, lam=1.0)
    >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mmcl.losses.checks import check_positive
from mmcl.losses.core import EmbeddingLoss
from mmcl.losses.kcl import squared_distance
from mmcl.losses.parts.layouts import Batch
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import ExecutionOptions


def uniformity(z: Tensor, t: float = 2.0) -> Tensor:
    """``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` of unit-norm rows ``z`` (M, d), M >= 2."""
    M = z.shape[0]
    upper = torch.triu(torch.ones(M, M, dtype=torch.bool, device=z.device), diagonal=1)
    return torch.logsumexp(-t * squared_distance(z @ z.T)[upper], dim=0) - math.log(M * (M - 1) / 2)


@register_loss(
    "align_uniform",
    paper="Wang & Isola 2020 (arXiv:2005.10242)",
    inputs="pairs",
    search_space={"t": [1.0, 4.0], "lam": {"log": [0.1, 10.0]}},
)
class AlignUniformLoss(EmbeddingLoss):
    """Alignment and uniformity (module docstring).

    Args:
        alpha: exponent of the alignment's distance ``||u_i - v_i||^alpha``.
        t: scale of the uniformity kernel ``e^{-t ||u_i - u_j||^2}``.
        lam: weight of the uniformity term.
    """

    pairs_only = "its alignment ||u_i - v_i|| is written for one pair of views"

    def __init__(
        self,
        alpha: float = 2.0,
        t: float = 2.0,
        lam: float = 1.0,
        **execution: Unpack[ExecutionOptions],
    ) -> None:
        super().__init__(**execution)
        self.alpha = check_positive("alpha", alpha)
        self.t = check_positive("t", t)
        self.lam = float(lam)

    def compute(self, batch: Batch) -> Tensor:
        distance = (batch.u - batch.v).norm(dim=1)
        count = torch.tensor(batch.u.shape[0], device=distance.device)
        align = self.global_mean(distance.pow(self.alpha).sum(), count)
        unif_u, unif_v = uniformity(batch.U, self.t), uniformity(batch.V, self.t)
        if self.compute_diagnostics:
            pos_cos = (batch.u * batch.v).sum(-1).detach()
            self.diagnostics = {
                "align_term": align.detach(),
                "uniformity_u": unif_u.detach(),
                "uniformity_v": unif_v.detach(),
                "pos_cos_mean": pos_cos.mean(),
                "pos_cos_min": pos_cos.min(),
            }
        return align + self.lam * (unif_u + unif_v) / 2
