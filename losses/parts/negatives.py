"""Negative weighting and aggregation: the negative mass ``M_a`` of each anchor row.

.. math::
    M_a = n_a \\sum_{n \\in N(a)} \\hat w_{an} e^{\\ell_{an}}, \\qquad
    \\hat w_{an} = \\frac{e^{\\beta \\ell^0_{an}}}{\\sum_{m \\in N(a)} e^{\\beta \\ell^0_{am}}}

computed in log space, ``log M_a = log n_a + lse(beta*l0 + l) - lse(beta*l0)``, so ``beta = 200`` at
``tau = 0.5`` stays finite. ``beta = 0`` gives the plain sum. ``l0 = s/tau`` is the logit before margins
and offsets.

Options: exponential tilt ``beta`` (HCL, H-SCL) with weights kept in the graph (the official codes) or
detached; debiasing with class prior ``tau_plus`` and its floor (Chuang et al.; applied per positive by
the coupled objective); ``count``: ``n_a`` is the actual negative count or the nominal ``2B - 2``
(H-SCL's code); ``split_views``: one log-sum-exp per candidate view, added (lightly's DCL).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mmcl.losses.checks import check_choice


def masked_logsumexp(x: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """``log sum_{mask} exp(x)`` along ``dim``; ``-inf`` (with zero, not NaN, gradients) where the mask is empty."""
    x = x.masked_fill(~mask, float("-inf"))
    shift = x.amax(dim=dim, keepdim=True).detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    total = torch.exp(x - shift).sum(dim=dim)
    empty = total == 0
    out = torch.log(torch.where(empty, torch.ones_like(total), total)) + shift.squeeze(dim)
    return torch.where(empty, torch.full_like(out, float("-inf")), out)


def other_positives_log_mass(pos_logit: Tensor, rows: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """For each (anchor, positive) pair ``(a, p)`` (vectors ``(P,)``, ``rows`` the anchor of each), the log
    mass of the anchor's other positives, ``log sum_{p' != p} e^{l_ap'}`` (``-inf`` where ``p`` is the only
    one), and the anchor's positive count. Exact and with gradients to every positive: the ``K`` positives
    of each row are packed into ``(n_rows, K)`` and each left out in turn (``K`` is small: a row's other
    views)."""
    P = pos_logit.shape[0]
    counts = torch.bincount(rows, minlength=n_rows)
    K = int(counts.max()) if P else 0
    order = torch.argsort(rows, stable=True)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(rows)
    slot[order] = torch.arange(P, device=rows.device) - first[rows[order]]
    packed = pos_logit.new_full((n_rows, K), float("-inf")).index_put((rows, slot), pos_logit)
    present = torch.zeros(n_rows, K, dtype=torch.bool, device=rows.device).index_put(
        (rows, slot), torch.ones_like(rows, dtype=torch.bool)
    )
    others = present[:, None, :] & ~torch.eye(K, dtype=torch.bool, device=rows.device)
    left_out = masked_logsumexp(packed[:, None, :].expand(n_rows, K, K), others)  # (n_rows, K)
    return left_out[rows, slot], counts[rows].to(pos_logit.dtype)


class NegativeWeighting(nn.Module):
    def __init__(
        self,
        beta: float = 0.0,
        detach_weights: bool = False,
        tau_plus: float = 0.0,
        floor: bool = True,
        count: str = "actual",
        split_views: bool = False,
        beta_schedule: str = "constant",
    ) -> None:
        super().__init__()
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0 <= tau_plus < 1:
            raise ValueError(f"tau_plus (class prior) must be in [0, 1), got {tau_plus}")
        self.beta = float(beta)
        self.detach_weights = bool(detach_weights)
        self.tau_plus = float(tau_plus)
        self.floor = bool(floor)
        self.count = check_choice("negative count", count, ("actual", "nominal"))
        self.split_views = bool(split_views)
        self.beta_schedule = check_choice("beta_schedule", beta_schedule, ("constant", "anneal_down"))
        self.progress = 0.0

    @property
    def current_beta(self) -> float:
        if self.beta_schedule == "constant":
            return self.beta
        # joshr17/HCL --anneal down: beta steps through linspace(beta, 0, 9), one step per ninth of training.
        step = min(int(math.floor(self.progress * 9)), 9)
        return self.beta * (1 - max(step - 1, 0) / 8)

    @property
    def debiases(self) -> bool:
        return self.tau_plus > 0

    def row_count(self, neg: Tensor, nominal: int) -> Tensor:
        """``n_a`` of each row: the actual negative count, or the nominal ``2B - 2``."""
        if self.count == "nominal":
            return torch.full((neg.shape[0],), float(nominal), device=neg.device)
        return neg.sum(-1).to(torch.get_default_dtype())

    def log_mass(
        self, logits: Tensor, base_logits: Tensor, neg: Tensor, nominal: int, cand_view: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``log M_a`` of each row (``-inf`` for a row without negatives); with ``split_views`` the sum
        over candidate views of each view's log mass (a view without negatives adds nothing)."""
        groups = (
            [neg & (cand_view == view)[None, :] for view in cand_view.unique().tolist()] if self.split_views else [neg]
        )
        beta = self.current_beta
        diagnostics: dict[str, Tensor] = {}
        total = torch.zeros(neg.shape[0], dtype=logits.dtype, device=logits.device)
        for mask in groups:
            count = mask.sum(-1).to(logits.dtype)
            if beta == 0.0:
                log_mass = masked_logsumexp(logits, mask)
                if self.count == "nominal":
                    log_mass = log_mass + math.log(nominal) - torch.log(count.clamp(min=1))
            else:
                tilt = beta * base_logits
                log_weights = tilt - masked_logsumexp(tilt, mask)[:, None]
                if self.detach_weights:
                    log_weights = log_weights.detach()
                log_n = torch.full_like(count, math.log(nominal)) if self.count == "nominal" else torch.log(count)
                log_mass = log_n + masked_logsumexp(log_weights + logits, mask)
                weights = torch.exp(log_weights.detach().masked_fill(~mask, float("-inf")))
                present = mask.any(-1)
                if bool(present.any()):
                    diagnostics["is_ess_mean"] = (1.0 / (weights[present] ** 2).sum(-1)).mean()
            if self.split_views:
                log_mass = torch.where(mask.any(-1), log_mass, torch.zeros_like(log_mass))
            total = total + log_mass
        return total, diagnostics

    def debias(self, pos_logit: Tensor, log_mass: Tensor, n: Tensor, floor_logit: Tensor) -> tuple[Tensor, Tensor]:
        """Per positive pair, ``log max((M - tau+ n e^{l_ap}) / (1 - tau+), n e^{floor})``, shifted so it is exact.

        Returns the log of the debiased mass and a bool tensor marking pairs whose floor is active.
        """
        n = n.to(pos_logit.dtype)
        floor_log = torch.log(n) + floor_logit
        shift = torch.maximum(torch.maximum(pos_logit, log_mass), floor_log).detach()
        estimate = (torch.exp(log_mass - shift) - self.tau_plus * n * torch.exp(pos_logit - shift)) / (
            1 - self.tau_plus
        )
        floor_value = torch.exp(floor_log - shift)
        if self.floor:
            active = estimate < floor_value
            mass = torch.maximum(estimate, floor_value)
        else:
            active = torch.zeros_like(estimate, dtype=torch.bool)
            if bool((estimate <= 0).any()):
                raise ValueError(
                    "debiased negative mass (M - tau_plus*n*e^pos)/(1 - tau_plus) is <= 0 for some anchor; "
                    "lower tau_plus or keep floor=True"
                )
            mass = estimate
        return torch.log(mass) + shift, active

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, detach_weights={self.detach_weights}, tau_plus={self.tau_plus}, floor={self.floor}, "
            f"count={self.count!r}, split_views={self.split_views}"
        )
