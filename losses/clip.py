"""CLIP's contrastive loss: symmetric InfoNCE between two modalities with a learned temperature.

Reference: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
arXiv:2103.00020 (Figure 3's pseudocode); open_clip's ``ClipLoss`` and ``logit_scale`` (mlfoundations/open_clip).

With ``u_i = tower_a(x_i)``, ``v_i = tower_b(y_i)`` normalised and ``t`` the learned log logit scale
(:class:`~mmcl.losses.parts.LearnableTemperature`, ``tau = e^{-t}``, initialised at 0.07, clamped to
``[0.01, 1]``):

.. math::
    L = \\tfrac12 \\Big(\\frac1B\\sum_i -\\log \\frac{e^{u_i\\cdot v_i/\\tau}}{\\sum_j e^{u_i\\cdot v_j/\\tau}}
      + \\frac1B\\sum_i -\\log \\frac{e^{v_i\\cdot u_i/\\tau}}{\\sum_j e^{v_i\\cdot u_j/\\tau}}\\Big)

``negatives`` chooses which rows compete with the positive, i.e. the layout of the table:

* ``"cross"`` (CLIP): only the other modality's rows, :class:`~mmcl.losses.parts.CrossViewLayout` (the formula
  above; ``info_nce`` with a learned temperature);
* ``"within"``: only the same modality's rows, :class:`~mmcl.losses.parts.WithinViewLayout` in DHEL's decoupled
  form (alignment ``-u_i . v_i / tau`` plus each modality's energy ``lse_{j != i} u_i . u_j / tau``);
* ``"both"``: every other row of the stacked ``[u; v]``, :class:`~mmcl.losses.parts.TwoViewLayout` (NT-Xent's
  ``2B - 2`` negatives).

``temperature`` takes any rule (a number fixes it, as ``info_nce`` does); the default ``"learnable"`` is the learned
one (``{"rule": "learnable", "init": 0.07, "max_logit_scale": 100}`` sets its options). The
engine puts the loss's parameters in the optimiser (without weight decay), averages their gradients over
processes, clamps them after each step, checkpoints them and logs ``tau`` (docs/paired.md).

Data: pairs ``(z_a, z_b)`` from two towers (``modality: paired``); more views are refused. Minimum batch: 2 pairs.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss_fn = losses.build("clip")
    >>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))
    >>> round(float(loss_fn.diagnostics["tau"]), 3), type(loss_fn.layout).__name__
    (0.07, 'CrossViewLayout')
    >>> type(losses.build("clip", negatives="within", temperature=0.1).layout).__name__
    'WithinViewLayout'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.checks import check_choice
from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import CrossViewLayout, TwoViewLayout, WithinViewLayout
from mmcl.losses.parts.temperature import TemperatureRule
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions

NEGATIVES = ("cross", "within", "both")


@register_loss("clip", paper="CLIP, Radford et al. 2021 (arXiv:2103.00020); open_clip", inputs="pairs", search_space={})
class CLIPLoss(ContrastiveLoss):
    """Symmetric InfoNCE with a learned temperature (module docstring).

    Args:
        temperature: ``"learnable"``: :class:`~mmcl.losses.parts.LearnableTemperature` with its defaults (from 0.07,
            open_clip's); or any rule (a number fixes it).
        negatives: the rows that compete with the positive: ``"cross"`` (the other modality's, CLIP), ``"within"``
            (the same modality's, DHEL's form) or ``"both"`` (every other row, NT-Xent's).
    """

    pairs_only = "it contrasts one tower's rows with the other's (a pair of modalities)"

    def __init__(
        self,
        temperature: float | str | dict | TemperatureRule = "learnable",
        negatives: str = "cross",
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        negatives = check_choice("negatives", negatives, NEGATIVES)
        if negatives == "cross":
            super().__init__(CrossViewLayout("symmetric"), temperature, **execution)
        elif negatives == "within":
            super().__init__(
                WithinViewLayout(), temperature, objective="decoupled", direction_reduction="sum", **execution
            )
        else:
            super().__init__(TwoViewLayout(), temperature, **execution)
        self.negatives = negatives

    def _view_limit(self) -> tuple[int | None, str | None]:
        return 2, f"{self.name} is defined for two views: {self.pairs_only}"
