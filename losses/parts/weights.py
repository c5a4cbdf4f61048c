"""Detached weights on the objective's terms: DCLW's positive weights and MACL's pair weights.

=============================  ==================================================================
part                           weight
=============================  ==================================================================
:class:`PositiveWeights`       DCLW: ``w_i = 2 - n softmax_i(sg(u_i . v_i) / sigma)`` on the
                               decoupled positive term, over the ``n`` pairs of the batch
:class:`MACLWeights`           MACL: ``V = 1 / (1 - P + eps)`` on each coupled term ``t = -log P``,
                               with ``1 - P = -expm1(-t)`` (exact when ``P`` is within 1e-10 of 1)
=============================  ==================================================================

Both are detached: they change the value and the gradient's scale, never its direction within a term.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmcl.losses.checks import check_choice, check_positive


class PositiveWeights(nn.Module):
    """DCLW's detached positive weights, ``w_i = 2 - n * softmax_i(sg(u_i . v_i) / sigma)`` over ``n`` pairs
    (mean exactly 1). ``batch_stat_scope``: the softmax over the local or the gathered global batch."""

    def __init__(self, sigma: float = 0.5, batch_stat_scope: str = "local") -> None:
        super().__init__()
        self.sigma = check_positive("sigma", sigma)
        self.batch_stat_scope = check_choice("batch_stat_scope", batch_stat_scope, ("local", "global"))

    def forward(self, pair_cos: Tensor) -> Tensor:
        return 2 - pair_cos.shape[0] * torch.softmax(pair_cos.detach() / self.sigma, dim=0)


class MACLWeights(nn.Module):
    """MACL's detached weights on the coupled terms (Huang et al., ICML 2023; spec 3.14).

    .. math::
        V_{ap} = \\frac{1}{1 - P_{ap} + \\epsilon}, \\qquad 1 - P_{ap} = -\\operatorname{expm1}(-t_{ap})

    from each term ``t_ap = -log P_ap`` (a log-sum-exp minus the positive logit), never from ``P`` itself:
    forming ``P = exp(-t)`` and then ``1 - P`` loses every digit once ``P`` is within 1e-16 of 1 (the
    loss computes ``t = log(1 + M / e^l)`` from the negative mass ``M``, so ``t`` itself is exact).
    ``eps = 0`` (the default) is the official code; lightly's port uses ``eps = 1e-8``, which moved a
    batch's loss by 16% where ``1 - P`` was near 1e-8.

    Example:
        >>> import torch
        >>> weights = MACLWeights()(torch.tensor([1e-12, 0.5]))
        >>> [f"{w:.6g}" for w in weights.tolist()]
        ['1e+12', '2.54149']
    """

    def __init__(self, eps: float = 0.0) -> None:
        super().__init__()
        if not float(eps) >= 0:
            raise ValueError(f"eps (MACL's 1/(1 - P + eps)) must be >= 0, got {eps!r}")
        self.eps = float(eps)

    def forward(self, terms: Tensor) -> Tensor:
        """Weights ``(P,)`` of the terms ``t`` ``(P,)``, detached. Where ``1 - P`` underflows (``t`` rounds
        to 0) it is taken as the dtype's smallest normal number, so the weight stays finite."""
        one_minus_p = (-torch.expm1(-terms.detach())).clamp(min=torch.finfo(terms.dtype).tiny)
        return 1.0 / (one_minus_p + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


def as_reweighting(reweight: MACLWeights | str | None) -> MACLWeights | None:
    """The coupled terms' weighting from a part, ``"macl"`` (``MACLWeights()``) or None."""
    if reweight is None or isinstance(reweight, MACLWeights):
        return reweight
    if reweight == "macl":
        return MACLWeights()
    raise ValueError(f"reweight must be None or 'macl' (or a MACLWeights part), got {reweight!r}")
