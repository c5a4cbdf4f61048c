"""Margins on the positive logit, and the gradient-only effects they are made of.

After Rho et al., "Understanding Contrastive Learning Through the Lens of Margins" (arXiv:2306.11526).
Only positives get a margin; negatives keep ``s``.

.. math::
    \\psi(s) = \\cos(m_1 \\theta + m_2) - m_3, \\qquad
    \\theta = \\arccos \\operatorname{clamp}(s, -1+\\epsilon, 1-\\epsilon)

``m1`` is SphereFace's multiplicative angular margin, ``m2`` ArcFace's additive angular margin (the
paper's "angular" margin) and ``m3`` CosFace's additive cosine margin (the paper's "subtractive"
margin). With a margin, each row's gradient relative to InfoNCE at the same point is

* negatives: ``r_i`` times InfoNCE's, ``r_i = (1 - P^m_ip) / (1 - P^0_ip)`` (logit-dependent scaling);
* positive: ``r_i * g(theta_ip)`` times InfoNCE's, ``g(theta) = m1 sin(m1 theta + m2) / sin theta``
  (angle-dependent scaling).

:class:`MarginGradientScaling` produces each effect alone while keeping InfoNCE's forward value:
positive emphasis (``positive_weight``), angle-dependent scaling (``angle_margin``) and logit-dependent
scaling (``logit_margin``/``logit_angle_margin``); with ``angle_margin = m2`` and the logit margins equal
to ``(m2, m3)`` their composition reproduces the margin gradient exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmcl.losses.checks import check_positive


def _clamp_eps(dtype: torch.dtype, eps: float | None) -> float:
    if eps is not None:
        return eps
    return 1e-7 if dtype == torch.float64 else 1e-4


def angle(cos: Tensor, eps: float | None = None) -> Tensor:
    eps = _clamp_eps(cos.dtype, eps)
    return torch.acos(cos.clamp(-1 + eps, 1 - eps))


class PositiveMargin(nn.Module):
    """``psi(s) = cos(m1*theta + m2) - m3`` on positive cosines (V0, the full margin)."""

    def __init__(
        self,
        m1: float = 1.0,
        m2: float = 0.0,
        m3: float = 0.0,
        clamp_eps: float | None = None,
        easy_margin_guard: bool = False,
    ) -> None:
        super().__init__()
        self.m1 = check_positive("m1", m1)
        self.m2, self.m3 = float(m2), float(m3)
        self.clamp_eps = clamp_eps
        self.easy_margin_guard = bool(easy_margin_guard)

    @property
    def is_identity(self) -> bool:
        return self.m1 == 1.0 and self.m2 == 0.0 and self.m3 == 0.0

    def forward(self, pos_cos: Tensor) -> Tensor:
        if self.is_identity:
            return pos_cos
        theta = angle(pos_cos, self.clamp_eps)
        psi = torch.cos(self.m1 * theta + self.m2) - self.m3
        if self.easy_margin_guard:
            # ArcFace's fallback where m1*theta + m2 passes pi and cos stops decreasing.
            fallback = torch.cos(theta) - self.m2 * math.sin(self.m2) - self.m3
            psi = torch.where(self.m1 * theta + self.m2 > math.pi, fallback, psi)
        return psi

    def angle_factor(self, pos_cos: Tensor) -> Tensor:
        """``g(theta) = m1 sin(m1 theta + m2) / sin theta``, the margin's positive-gradient factor."""
        theta = angle(pos_cos.detach(), self.clamp_eps)
        return self.m1 * torch.sin(self.m1 * theta + self.m2) / torch.sin(theta)

    def extra_repr(self) -> str:
        return f"m1={self.m1}, m2={self.m2}, m3={self.m3}"


def straight_through_scale(x: Tensor, factor: Tensor | float) -> Tensor:
    """``factor*x - (factor-1)*sg(x)``: the value of ``x``, the gradient multiplied by ``factor``."""
    return factor * x - (factor - 1) * x.detach()


class MarginGradientScaling(nn.Module):
    """Margin effects on the gradient only; the forward value stays InfoNCE's.

    Args:
        positive_weight: V1, constant ``w >= 1`` multiplying the positive-cosine gradient.
        angle_margin: V2, virtual angular margin ``m_a``; the positive-cosine gradient is multiplied
            by ``sin(theta + m_a) / sin(theta)`` (detached).
        angle_normalise: V2, divide those factors by their batch mean (separates V2 from V1).
        logit_margin, logit_angle_margin: V3, virtual subtractive and angular margins of ``psi`` in
            the detached row factor ``r_i = (1 - P^psi_ip) / (1 - P^0_ip)``, applied as a
            forward-preserving rescale of the whole row.
    """

    def __init__(
        self,
        positive_weight: float = 1.0,
        angle_margin: float = 0.0,
        angle_normalise: bool = False,
        logit_margin: float = 0.0,
        logit_angle_margin: float = 0.0,
        clamp_eps: float | None = None,
    ) -> None:
        super().__init__()
        self.positive_weight = check_positive("positive_weight", positive_weight)
        self.angle_margin = float(angle_margin)
        self.angle_normalise = bool(angle_normalise)
        self.virtual_margin = PositiveMargin(1.0, logit_angle_margin, logit_margin, clamp_eps)
        self.clamp_eps = clamp_eps

    def positive_factor(self, pos_cos: Tensor) -> Tensor | float:
        factor: Tensor | float = self.positive_weight
        if self.angle_margin != 0.0:
            theta = angle(pos_cos.detach(), self.clamp_eps)
            w = torch.sin(theta + self.angle_margin) / torch.sin(theta)
            factor = factor * (w / w.mean() if self.angle_normalise else w)
        return factor

    @property
    def rescales_rows(self) -> bool:
        return not self.virtual_margin.is_identity
