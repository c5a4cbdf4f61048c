"""Margin losses: angular, subtractive and multiplicative margins on the positive logit.

Reference: Rho, Kim, Park, Park, Park, "Understanding Contrastive Learning Through the Lens of
Margins", arXiv:2306.11526 (no official code; the form below is derived, see the spec 3.13).

.. math::
    \\theta_{ip} = \\arccos\\operatorname{clamp}(s_{ip}, -1+\\epsilon, 1-\\epsilon),\\quad
    \\psi = \\cos(m_1\\theta_{ip} + m_2) - m_3,\\quad
    L_i = -\\frac{\\psi}{\\tau} + \\log\\Big(e^{\\psi/\\tau} + \\sum_{n} e^{s_{in}/\\tau}\\Big)

``mode="margin"`` (V0) uses ``psi`` in the loss. ``mode="gradient_only"`` keeps NT-Xent's value and
applies one or more elemental effects to the gradient: positive emphasis (``positive_weight``, V1),
angle-dependent scaling (``angle_margin``, ``angle_normalise``, V2) and logit-dependent scaling
(``logit_margin``, ``logit_angle_margin``, V3). ``m1 = 1, m2 = m3 = 0`` is NT-Xent.

``V`` views (``mode="margin"``, NT-Xent layout; docs/multiview.md): ``psi`` on every positive logit, every
other row in each denominator. ``mode="gradient_only"`` refuses them (one positive per anchor).

Data: ``V >= 2`` views ``(N, d)``. Minimum batch: 2 pairs. Layout: NT-Xent by default, or
``"cross_view"``/``"queue"`` (pairs).

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss = losses.build("margin", m2=0.1, m3=0.1, temperature=0.5)(torch.randn(8, 16), torch.randn(8, 16))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.checks import check_choice
from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import Layout, TwoViewLayout, as_layout
from mmcl.losses.parts.margin import MarginGradientScaling, PositiveMargin
from mmcl.losses.parts.temperature import TemperatureRule
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "margin",
    paper="Margins, Rho et al. 2023 (arXiv:2306.11526)",
    inputs="pairs or V views",
    search_space={"temperature": {"log": [0.05, 1.0]}, "m2": [0.0, 0.5], "m3": [0.0, 0.5]},
)
class MarginLoss(ContrastiveLoss):
    """Margins on the positive logit (module docstring): ``psi = cos(m1 theta + m2) - m3``.

    Args:
        m1: multiplicative angular margin (1: none).
        m2: additive angular margin, in radians.
        m3: subtractive cosine margin.
        mode: ``"margin"``: ``psi`` in the loss; ``"gradient_only"``: NT-Xent's value, margin effects on the
            gradient only (the options below).
        positive_weight: (gradient_only) constant ``w >= 1`` on the positive-cosine gradient (V1).
        angle_margin: (gradient_only) virtual angular margin: the positive gradient times
            ``sin(theta + m) / sin(theta)`` (V2).
        angle_normalise: (gradient_only) divide those factors by their batch mean (V2 apart from V1).
        logit_margin: (gradient_only) virtual subtractive margin of the detached row factor (V3).
        logit_angle_margin: (gradient_only) virtual angular margin of that row factor (V3).
        clamp_eps: cosines are clamped to ``[-1 + eps, 1 - eps]`` before ``arccos`` (None: 1e-4, 1e-7 in float64).
        easy_margin_guard: ArcFace's fallback where ``m1 theta + m2`` passes pi.
    """

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.5,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.0,
        mode: str = "margin",
        positive_weight: float = 1.0,
        angle_margin: float = 0.0,
        angle_normalise: bool = False,
        logit_margin: float = 0.0,
        logit_angle_margin: float = 0.0,
        clamp_eps: float | None = None,
        easy_margin_guard: bool = False,
        layout: Layout | str | dict | None = None,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        check_choice("mode", mode, ("margin", "gradient_only"))
        margin = PositiveMargin(m1, m2, m3, clamp_eps, easy_margin_guard)
        scaling = MarginGradientScaling(
            positive_weight, angle_margin, angle_normalise, logit_margin, logit_angle_margin, clamp_eps
        )
        if mode == "margin" and (positive_weight != 1.0 or angle_margin or logit_margin or logit_angle_margin):
            raise ValueError("positive_weight, angle_margin and logit margins belong to mode='gradient_only'")
        if mode == "gradient_only" and not margin.is_identity:
            raise ValueError(
                "mode='gradient_only' keeps NT-Xent's value: set m1=1, m2=m3=0 and use the gradient options"
            )
        super().__init__(
            as_layout(layout, TwoViewLayout),
            temperature,
            margin=margin if mode == "margin" else None,
            gradient_scaling=scaling if mode == "gradient_only" else None,
            **execution,
        )
