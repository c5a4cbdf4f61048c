"""MACL: model-aware contrastive learning.

Reference: Huang et al., "Model-Aware Contrastive Learning: Towards Escaping the Dilemmas", ICML 2023,
arXiv:2207.07874 (code: chenhaoxing/MACL; port: lightly's ``MACLLoss``).

.. math::
    A = \\operatorname{mean}_i \\operatorname{sg}(u_i\\cdot v_i),\\quad \\tau = \\tau_0(1 + \\alpha(A - A_0)),\\quad
    P_i = \\operatorname{softmax}([pos_i, neg_{i1}, \\dots] / \\tau)_0,\\quad
    L = \\operatorname{mean}_i\\Big[-\\operatorname{sg}\\Big(\\frac{1}{1 - P_i + \\epsilon}\\Big)\\log P_i\\Big]

The temperature rises as positives align; the detached reweighting undoes InfoNCE's gradient
factor ``1 - P_i`` (per row, the positive gradient is exactly ``-1/tau``). ``1 - P_i`` is computed as
``-expm1(log P_i)`` from the row's InfoNCE term, exact even when ``P_i`` is within 1e-10 of 1;
``eps = 0`` (default) is the official code, ``eps = 1e-8`` lightly's port (spec 3.14). Values are above 1 per row
and not comparable with InfoNCE values. A non-positive ``tau`` is clamped to ``tau_floor`` and reported
(``tau_clamped``), or raises with ``on_nonpositive_tau="raise"``.

``V`` views (NT-Xent layout, docs/multiview.md): one term per (anchor, positive) with every other row in
its denominator, so ``1 - P_ap`` includes the row's other positives (the official function given
``pos = s_ap`` and every other row as ``neg``); ``A`` is the mean over every pair of views.

Data: ``V >= 2`` views ``(N, d)``. Minimum batch: 2 pairs. Layout: NT-Xent (lightly's port, default),
``{"name": "cross_view", "direction": "u->v"}`` (the early official classes) or ``"queue"`` (MoCo).

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss_fn = losses.build("macl", temperature=0.1, alpha=0.5, A0=0.0)
    >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
    >>> float(loss_fn.diagnostics["tau"]) > 0
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import Layout, TwoViewLayout, as_layout
from mmcl.losses.parts.temperature import AdaptiveTemperature
from mmcl.losses.parts.weights import MACLWeights
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "macl",
    paper="MACL, Huang et al. 2023 (arXiv:2207.07874)",
    inputs="pairs or V views",
    search_space={"temperature": {"log": [0.02, 1.0]}, "alpha": [0.0, 1.0], "A0": [0.0, 0.5]},
)
class MACLLoss(ContrastiveLoss):
    """MACL (module docstring).

    Args:
        temperature: ``tau_0``, the base of the alignment-adaptive temperature.
        alpha: how strongly the temperature follows the batch's alignment ``A``: ``tau_0 (1 + alpha (A - A0))``.
        A0: the alignment at which the temperature is ``tau_0`` (linear form).
        temperature_form: ``"linear"``, or ``"exponential"``: ``tau_0 alpha^A`` (MACLa).
        reweight: weigh each term by the detached ``1 / (1 - P + eps)`` (MACL's reweighting).
        eps: the ``eps`` of that weight (0: the official code; 1e-8: lightly's port).
        batch_stat_scope: the alignment ``A`` over this process's batch (``"local"``) or the gathered one
            (``"global"``).
        on_nonpositive_tau: ``"clamp"`` a non-positive temperature to ``tau_floor`` (reported as ``tau_clamped``),
            or ``"raise"``.
        tau_floor: that floor (None: ``1e-3 tau_0``).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        alpha: float = 0.5,
        A0: float = 0.0,
        temperature_form: str = "linear",
        reweight: bool = True,
        eps: float = 0.0,
        batch_stat_scope: str = "local",
        on_nonpositive_tau: str = "clamp",
        tau_floor: float | None = None,
        layout: Layout | str | dict | None = None,
        direction_reduction: str = "mean",
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            as_layout(layout, TwoViewLayout),
            AdaptiveTemperature(
                temperature, alpha, A0, temperature_form, batch_stat_scope, on_nonpositive_tau, tau_floor
            ),
            reweight=MACLWeights(eps) if reweight else None,
            direction_reduction=direction_reduction,
            **execution,
        )
