"""The per-block math of the blockwise path: a block's loss and its gradient with respect to its logits.

For a block of anchor rows ``q_j`` against every candidate column ``k_c`` the engine
(:mod:`mmcl.losses.blockwise.function`) hands over ``S = q K^T / tau`` (a scalar temperature is folded
into the anchors) or ``S = q K^T`` (per-entry temperatures). The kernel turns ``S`` in place into
``G = d loss / d S`` right after the forward pass, before the next block is formed; the engine then
accumulates ``dq = G K`` and ``dK += G^T q``. Two forms:

**Fused softmax** (NT-Xent, InfoNCE, SupCon, MACL, DySTreSS, with any number of views): with the
allowed set ``A(j)`` = every column but the anchor itself, the terms are ``t_jp = lse_{A(j)} l - l_p``,
the row loss ``mean_{p in P(j)} w_jp t_jp`` and

.. math::
    \\frac{\\partial L}{\\partial \\ell_{jc}} = \\frac{c_j}{|P(j)|} \\Big(W_j \\operatorname{softmax}_{A(j)}(\\ell_j)_c
    - w_{jc} [c \\in P(j)]\\Big), \\qquad W_j = \\sum_{p \\in P(j)} w_{jp}

(``c_j`` the row's reduction weight, ``w_jp`` MACL's detached ``1/(1 - P_jp + eps)`` or 1). One max, one
exp, one sum and one scale pass over the block. The positives' exponentials are kept apart from the
negatives' sum, so ``t_jp = log(1 + (O_jp + M_j) / e^{l_jp})`` (``O`` the other positives) is exact when
``P_jp`` is near 1.

**General** (tilted, debiased, decoupled, margins, label-aware negatives, split sums, hard-negative
offsets): the negatives' log mass and its direction ``D = d log M_j / d l_j`` (the tilted softmax
``(1+beta) q - beta w`` with weights in the graph, or ``q`` with detached weights) are formed on the
block; the per-pair part (debiasing, margins, MACL weights, gradient-only rescales) runs through
:meth:`ContrastiveLoss.pair_terms` on vectors of the block's pairs with autograd, which gives
``d loss / d log M_j`` and ``d loss / d s_jp``; then ``G = D * dL/dlogM + (pair gradients at the
positive entries)``.

No ``(R, C)`` mask is ever built: self and positive columns are found by index arithmetic, label
masks exist for one block at a time. Diagnostics are accumulated from detached values in the same
passes; sums over negative cosines use ``q . sum_c k_c`` (one matrix-vector product per block).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from mmcl.losses.blockwise.plan import Plan, RowGroup
from mmcl.losses.rows import RowCounts, Stats

NEG_INF = float("-inf")


@dataclass
class GroupState:
    """Per-group values the blocks share: label structure and column sums for diagnostics.

    Label groups are sorted by class (see :mod:`mmcl.losses.blockwise.plan`): ``class_ranges[y]`` lists the
    column ranges of class ``y`` (one per view) and ``row_runs`` the runs of rows of one class as
    ``(first row, stop row, class)``.
    """

    group: RowGroup
    columns: int
    view_ranges: list[tuple[int, int]]  # column ranges of each candidate view (split negative sums)
    row_labels: Tensor | None = None  # (rows,) class ids mapped to 0..k-1
    col_labels: Tensor | None = None  # (C,)
    class_ranges: list[list[tuple[int, int]]] | None = None
    row_runs: list[tuple[int, int, int]] | None = None
    col_sum: Tensor | None = None  # (d,) sum of the candidate rows (diagnostics)
    class_sum: Tensor | None = None  # (k, d) per-class sums of the candidate rows (diagnostics)

    def class_blocks(self, j0: int, n: int) -> list[tuple[int, int, list[tuple[int, int]]]]:
        """Rows ``j0 .. j0 + n`` as block-local runs ``(r0, r1, positive column ranges)`` of one class."""
        out = []
        for a, b, y in self.row_runs:
            lo, hi = max(a, j0), min(b, j0 + n)
            if lo < hi:
                out.append((lo - j0, hi - j0, self.class_ranges[y]))
        return out


def _complement(ranges: list[tuple[int, int]], C: int) -> list[tuple[int, int]]:
    """Column ranges of ``[0, C)`` outside the sorted, disjoint ``ranges``."""
    out, at = [], 0
    for a, b in ranges:
        if a > at:
            out.append((at, a))
        at = b
    if at < C:
        out.append((at, C))
    return out


def _reduce_ranges(S: Tensor, blocks, op: str, complement: bool = False) -> Tensor:
    """Per-row ``op`` (``"sum"``, ``"amax"``, ``"amin"``) of ``S`` over each run's column ranges (or their
    complement); empty sets give 0, -inf and +inf."""
    fill = {"sum": 0.0, "amax": NEG_INF, "amin": math.inf}[op]
    out = torch.full((S.shape[0],), fill, dtype=S.dtype, device=S.device)
    for r0, r1, ranges in blocks:
        for a, b in _complement(ranges, S.shape[1]) if complement else ranges:
            part = getattr(S[r0:r1, a:b], op)(1)
            if op == "sum":
                out[r0:r1] += part
            elif op == "amax":
                out[r0:r1] = torch.maximum(out[r0:r1], part)
            else:
                out[r0:r1] = torch.minimum(out[r0:r1], part)
    return out


def _fill_ranges(S: Tensor, blocks, value: float) -> None:
    for r0, r1, ranges in blocks:
        for a, b in ranges:
            S[r0:r1, a:b] = value


def _range_pairs(blocks, self_idx: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """(rows, columns) of every (row, positive) entry of the runs, the rows' own columns (if any) left out."""
    rows, cols = [], []
    for r0, r1, ranges in blocks:
        for a, b in ranges:
            rr = torch.arange(r0, r1, device=device)[:, None].expand(r1 - r0, b - a)
            cc = torch.arange(a, b, device=device)[None, :].expand(r1 - r0, b - a)
            rows.append(rr.reshape(-1))
            cols.append(cc.reshape(-1))
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    rows, cols = torch.cat(rows), torch.cat(cols)
    if self_idx is None:
        return rows, cols
    keep = cols != self_idx.squeeze(1)[rows]
    return rows[keep], cols[keep]


class Kernel:
    """Loss, gradient and diagnostics of one block of rows; see the module docstring.

    Args:
        loss: the :class:`~losses.core.ContrastiveLoss` whose parts define the math.
        plan: the table's plan (its nominal negative count; whether a row's positives share its denominators).
        tau: scalar temperature (0-dim), or None when the loss's rule gives per-entry temperatures.
        row_coef: (R,) reduction weight of each anchor row (0 for left-out rows); for the pair
            reduction, the weight of each of the row's pairs.
        valid: (R,) rows that enter the loss.
        counts: the rows' positive and negative counts (``n_a`` of the debiased estimator, diagnostics).
        fused: use the fused softmax form.
        diagnostics: accumulate diagnostics in :attr:`stats`.

    The engine sets :attr:`pos_factor` ((R,) gradient-scaling factor of each row's single positive) and
    :attr:`pair_cos` (per group, the rows' same-instance positive cosines).
    """

    def __init__(self, loss, plan: Plan, tau, row_coef, valid, counts: RowCounts, fused, diagnostics) -> None:
        self.loss = loss
        self.tau = tau
        self.tau_value = float(tau) if tau is not None else None
        self.rule = loss.temperature if tau is None else None
        self.row_coef = row_coef
        self.valid = valid
        self.n_pos = counts.n_pos
        self.n_neg = counts.n_neg
        self.nominal = plan.nominal_negatives
        self.shared_positives = plan.positives_in_denominator
        self.pos_factor: Tensor | None = None
        self.pair_cos: list[Tensor] = []
        self.fused = fused
        self.diagnostics = diagnostics
        self.coupled = loss.objective == "coupled"
        self.beta = loss.negative_weighting.current_beta
        self.floor_logit = None
        if loss.negative_weighting.debiases:
            self.floor_logit = loss.temperature.floor_logit(tau if tau is not None else row_coef.new_ones(()))
        self.valid_coef = torch.where(valid, row_coef, 0)
        self.all_valid = bool(valid.all())
        self.need_grad = False
        self.stats = Stats()
        for key in ("hardest_cos", "hardest_logit", "best_pos"):
            self.stats.rows[key] = torch.full_like(row_coef, math.nan)
        self._t_buffer: Tensor | None = None
        self._w_buffer: Tensor | None = None

    @property
    def prescale(self) -> float | None:
        """``1 / tau`` folded into the anchors, or None when temperatures are per entry."""
        return None if self.tau_value is None else 1.0 / self.tau_value

    def _scratch(self, name: str, like: Tensor) -> Tensor:
        buffer = getattr(self, name)
        if buffer is None or buffer.numel() < like.numel() or buffer.dtype != like.dtype:
            buffer = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
            setattr(self, name, buffer)
        return buffer[: like.numel()].view(like.shape)

    # ---------------------------------------------------------------------------------------------
    def block(self, st: GroupState, j0: int, S: Tensor, q: Tensor) -> tuple[Tensor, float]:
        """Loss of rows ``j0 .. j0 + len(S)`` of the group; with :attr:`need_grad`, ``S`` becomes
        ``d loss / d S``. Returns the loss and the factor the engine applies to ``G K``."""
        g = st.group
        n = S.shape[0]
        rows = slice(g.first_row + j0, g.first_row + j0 + n)
        r = torch.arange(n, device=S.device)
        self_idx = g.self_columns(j0, r) if g.has_self else None
        T = self.rule.tau_of(S, out=self._scratch("_t_buffer", S)) if self.rule is not None else None
        if self.diagnostics and T is not None:
            self._tau_stats_used(st, j0, S, T, self_idx, r)
        if self.fused:
            return self._fused(st, j0, S, T, r, self_idx, rows)
        return self._general(st, j0, S, T, r, self_idx, rows)

    # ---------------------------------------------------------------------------------------------
    def _fused(self, st, j0, S, T, r, self_idx, rows) -> tuple[Tensor, float]:
        if st.group.has_positive_columns:
            return self._fused_columns(st, j0, S, T, r, self_idx, rows)
        return self._fused_labels(st, j0, S, T, self_idx, rows)

    def _fused_columns(self, st, j0, S, T, r, self_idx, rows) -> tuple[Tensor, float]:
        """Rows whose ``K`` positives are given column by column (the other views of the instance)."""
        p_idx = st.group.positive_columns(j0, r)
        if self_idx is not None:
            S.scatter_(1, self_idx, NEG_INF)
        if T is not None:
            if self.diagnostics:
                hardest_cos = self._amax_without(S, p_idx)
            S.div_(T)
        pos_logit = S.gather(1, p_idx)  # (n, K)
        hardest = S.scatter_(1, p_idx, NEG_INF).amax(1)  # the negatives alone from here on
        shift = torch.maximum(hardest, pos_logit.amax(1))
        negatives = S.sub_(shift[:, None]).exp_().sum(1)
        value, scale, pos_grad = self.column_positive_rows(rows, negatives, pos_logit, shift)
        if self.diagnostics:
            hardest_cos = hardest * self.tau_value if T is None else hardest_cos
            self._row_stats(rows, hardest_cos, hardest, pos_logit.amax(1))
        if not self.need_grad:
            return value, 1.0
        S.mul_(scale[:, None]).scatter_(1, p_idx, pos_grad)
        return value, self._finish_gradient(S, T)

    def column_positive_rows(self, rows: slice, negatives: Tensor, pos_logit: Tensor, shift: Tensor):
        """Rows with ``K`` positives each in every one of their denominators, from the sum of the negatives'
        ``e = exp(l - shift)`` (n,) and the positive logits (n, K): the loss, the factor ``a`` of the
        negatives' gradient ``a e`` and the positives' gradients (n, K). Terms ``t_k = log(1 + rest_k /
        e^{l_k})`` with ``rest_k`` the negatives and the other positives, each weighted by ``w_k`` (MACL's
        detached weight, or 1) and averaged over the row's positives (anchor reduction). Records the
        positive-probability and MACL diagnostics."""
        coef = self.valid_coef[rows]
        K = pos_logit.shape[1]
        pos_exp = torch.exp(pos_logit - shift[:, None])
        rest = negatives[:, None].expand(-1, K)
        if K > 1:  # the other positives, summed without cancellation
            others = ~torch.eye(K, dtype=torch.bool, device=pos_exp.device)
            rest = rest + (pos_exp[:, None, :] * others).sum(-1)
        terms = torch.logaddexp(torch.zeros_like(pos_logit), rest.log() - (pos_logit - shift[:, None]))
        weights = self.loss.reweight(terms) if self.loss.reweight is not None else torch.ones_like(terms)
        share = 1.0 / K if self.loss.reduction == "anchors" else 1.0
        value = self._weighted_sum((weights * terms).sum(1) * share, rows)
        if self.diagnostics:
            self.stats.add("pos_prob", torch.exp(-terms).sum())
            if self.loss.reweight is not None:
                self.stats.add("row_weight_mean", weights.sum())
                self.stats.high("row_weight_max", weights.max())
        # d/dl_c of mean_k w_k t_k: (W e_c - w_c [c in P] total) / total, W = sum_k w_k, for the positives
        # written with rest_k = total - e_k so that one positive (W = w_k) needs no subtraction.
        total = negatives + pos_exp.sum(1)
        row = coef * share / total
        W = weights.sum(1, keepdim=True)
        pos_grad = row[:, None] * ((W - weights) * pos_exp - weights * rest)
        return value, row * W.squeeze(1), pos_grad

    def _fused_labels(self, st, j0, S, T, self_idx, rows) -> tuple[Tensor, float]:
        """Rows whose positives are the same-class columns (rows and columns sorted by class)."""
        stats, diag = self.stats, self.diagnostics
        blocks = st.class_blocks(j0, S.shape[0])
        n_pos = self.n_pos[rows]
        hide = (lambda value: S.scatter_(1, self_idx, value)) if self_idx is not None else (lambda value: S)
        if T is not None:
            if diag:
                pos_cos_sum, pos_cos_min, hardest_cos = self._label_cosine_stats(S, blocks, hide)
            hide(0.0).div_(T)
        hide(0.0)
        pos_sum = _reduce_ranges(S, blocks, "sum")
        if diag and T is None:
            pos_cos_sum = pos_sum * self.tau_value
            pos_cos_min = _reduce_ranges(hide(math.inf), blocks, "amin") * self.tau_value
        hide(NEG_INF)
        if diag:
            best_pos = _reduce_ranges(S, blocks, "amax")
            hardest = _reduce_ranges(S, blocks, "amax", complement=True)
            shift = torch.maximum(hardest, best_pos)
        else:
            shift = S.amax(1)
        S.sub_(shift[:, None]).exp_()
        total = S.sum(1)
        lse = total.log() + shift
        coef = self.valid_coef[rows]
        has_pos = n_pos > 0
        row_loss = torch.where(has_pos, lse - pos_sum / n_pos.clamp(min=1), 0)
        value = self._weighted_sum(row_loss, rows)
        if diag:
            stats.add("pos_prob", (_reduce_ranges(S, blocks, "sum") / total).sum())
            stats.add("pos_cos", pos_cos_sum.sum())
            if bool(has_pos.any()):
                stats.low("pos_cos_min", pos_cos_min[has_pos].min())
            if T is None:
                hardest_cos = hardest * self.tau_value
            self._row_stats(rows, hardest_cos, hardest, best_pos)
        if not self.need_grad:
            return value, 1.0
        S.mul_((torch.where(has_pos, coef, 0) / total)[:, None])
        share = (coef / n_pos.clamp(min=1))[:, None]
        for r0, r1, ranges in blocks:
            for a, b in ranges:
                S[r0:r1, a:b] -= share[r0:r1]
        hide(0.0)  # the own column lies in the class range but is no positive
        return value, self._finish_gradient(S, T)

    # ---------------------------------------------------------------------------------------------
    def _general(self, st, j0, S, T, r, self_idx, rows) -> tuple[Tensor, float]:
        g, stats, diag = st.group, self.stats, self.diagnostics
        n = S.shape[0]
        single = g.has_positive_columns
        blocks = st.class_blocks(j0, n) if st.class_ranges is not None else None
        # The block's (anchor, positive) pairs, row by row, read before their entries leave the negatives.
        if single:
            p_idx = g.positive_columns(j0, r)
            pair_rows, pair_cols = r.repeat_interleave(p_idx.shape[1]), p_idx.reshape(-1)
        elif blocks is not None:
            pair_rows, pair_cols = _range_pairs(blocks, self_idx, S.device)
        else:
            pair_rows = pair_cols = None
        pair_value = S[pair_rows, pair_cols] if pair_rows is not None else None
        pair_tau = T[pair_rows, pair_cols] if (T is not None and pair_rows is not None) else self.tau
        # Negatives: label-aware (every other class) when there are labels, else all but self and positive.
        if blocks is not None and (not single or g.negatives == "other_labels"):
            _fill_ranges(S, blocks, NEG_INF)
        else:
            if self_idx is not None:
                S.scatter_(1, self_idx, NEG_INF)
            if single:
                S.scatter_(1, p_idx, NEG_INF)
        if T is not None:
            if diag:
                hardest_cos = S.amax(1)
            S.div_(T)
            pair_cos = pair_value
        else:
            pair_cos = pair_value * self.tau_value if pair_value is not None else None
            if diag and g.offset_col is not None:
                hardest_cos = S.amax(1) * self.tau_value
        if g.offset_col is not None:
            S[r, g.offset_col + j0 + r] += g.offset
        log_mass, hardest, gradient = self._log_mass(st, S, rows)
        if diag and T is None and g.offset_col is None:
            hardest_cos = hardest * self.tau_value
        value, grad_mass, grad_pair, best_pos = self.mass_rows(rows, n, log_mass, pair_rows, pair_cos, pair_tau)
        if diag:
            if pair_rows is not None and not single:
                stats.add("pos_cos", pair_cos.sum())
                if pair_cos.numel():
                    stats.low("pos_cos_min", pair_cos.min())
            self._row_stats(rows, hardest_cos, hardest, best_pos)
        if not self.need_grad:
            return value, 1.0
        gradient(grad_mass)
        scale = self._finish_gradient(S, T)
        if pair_rows is not None and self.coupled:
            to_entry = grad_pair if T is not None else grad_pair * self.tau_value
            S.index_put_((pair_rows, pair_cols), to_entry, accumulate=True)
        return value, scale

    def mass_rows(self, rows: slice, n: int, log_mass: Tensor, pair_rows, pair_cos, pair_tau):
        """From each row's negative log mass to the loss: the coupled objective's per-pair stage, or the
        decoupled objective's sum. Returns the value, ``d loss / d log M`` (n,), ``d loss / d s_p`` per pair
        (coupled) and the best positive logit of each row (coupled, for diagnostics)."""
        if not self.coupled:
            usable = self.valid[rows] & torch.isfinite(log_mass)
            value = (torch.where(usable, log_mass, 0) * self.row_coef[rows]).sum()
            if self.diagnostics:
                self.stats.add("energy_term", value)
            return value, self.valid_coef[rows], None, None
        value, grad_mass, grad_pair, pos_logit = self._pairs(pair_rows, pair_cos, pair_tau, log_mass, rows, n)
        best_pos = None
        if self.diagnostics:
            best_pos = torch.full((n,), NEG_INF, dtype=log_mass.dtype, device=log_mass.device)
            best_pos = best_pos.scatter_reduce(0, pair_rows, pos_logit, "amax")
        return value, grad_mass, grad_pair, best_pos

    def _log_mass(self, st: GroupState, S: Tensor, rows: slice) -> tuple[Tensor, Tensor, Callable[[Tensor], None]]:
        """``log M_j`` of each row (``-inf`` without negatives) from the negatives' logits in ``S`` (other
        entries ``-inf``), the hardest negative logit of each row, and ``gradient(g)``, which turns ``S``
        into ``g_j * d log M_j / d l_j`` (``g = d loss / d log M``, known only after the pair stage)."""
        beta = self.beta
        ranges = st.view_ranges if self.loss.negative_weighting.split_views else [(0, S.shape[1])]
        log_mass = torch.zeros(S.shape[0], dtype=S.dtype, device=S.device)
        hardest = torch.full_like(log_mass, NEG_INF)
        finishers = []
        for c0, c1 in ranges:
            part = S[:, c0:c1] if len(ranges) > 1 else S
            top = part.amax(1)
            hardest = torch.maximum(hardest, top)
            shift = torch.where(torch.isfinite(top), top, 0)
            part.sub_(shift[:, None])
            if beta == 0.0:
                tilt = part.exp_()
                tilt_total = mass = tilt.sum(1)
                tilt_norm = None
            elif beta == 1.0:  # HCL's default: the tilt weights are the exponentials themselves
                tilt = part.exp_()
                tilt_total, tilt_norm = tilt.sum(1), torch.linalg.vector_norm(tilt, dim=1)
                mass = tilt_norm.square()
            else:
                tilt = torch.mul(part, beta, out=self._scratch("_w_buffer", part)).exp_()
                part.exp_().mul_(tilt)
                mass, tilt_total = part.sum(1), tilt.sum(1)
                tilt_norm = torch.linalg.vector_norm(tilt, dim=1) if self.diagnostics else None
            view_mass, inv_mass, inv_tilt = self.view_mass(rows, shift, mass, tilt_total, tilt_norm)
            finishers.append(self._mass_gradient(part, tilt, inv_mass, inv_tilt))
            if len(ranges) > 1:
                view_mass = torch.where(torch.isfinite(top), view_mass, 0)
            log_mass = log_mass + view_mass

        def gradient(grad_mass: Tensor) -> None:
            for finish in finishers:
                finish(grad_mass)

        return log_mass, hardest, gradient

    def view_mass(self, rows: slice, shift, mass: Tensor, tilt_total: Tensor, tilt_norm: Tensor | None):
        """One view's ``log M_j`` from sums over the negatives of ``e = exp(l - shift)``: ``mass = sum e`` for
        plain negatives (``beta = 0``, ``tilt_total`` the same), else ``mass = sum e^(1 + beta)``,
        ``tilt_total = sum e^beta`` and its 2-norm (importance-sampling diagnostics). Returns ``log M`` and
        the reciprocal sums the gradient uses."""
        weighting = self.loss.negative_weighting
        if self.beta == 0.0:
            view_mass = mass.log() + shift
            if weighting.count == "nominal":
                view_mass = view_mass + math.log(self.nominal) - self.n_neg[rows].clamp(min=1).to(mass.dtype).log()
            inv_mass = 1.0 / torch.where(mass > 0, mass, 1)
            return view_mass, inv_mass, inv_mass
        present = tilt_total > 0
        if weighting.count == "nominal":
            log_n = math.log(self.nominal)
        else:
            log_n = self.n_neg[rows].to(mass.dtype).log()
        view_mass = torch.where(present, log_n + mass.log() - tilt_total.log() + shift, NEG_INF)
        if self.diagnostics and bool(present.any()):
            self.stats.add("is_ess", (tilt_total / tilt_norm).square()[present].sum())
            self.stats.add("is_ess_rows", present.sum())
        return view_mass, 1.0 / torch.where(present, mass, 1), 1.0 / torch.where(present, tilt_total, 1)

    def _mass_gradient(self, part, tilt, inv_mass, inv_tilt) -> Callable[[Tensor], None]:
        """``g * d log M / d l`` in place of ``part``: ``e / sum e`` (``beta = 0``), ``(1 + beta) e w / M - beta
        w / W`` with ``w = e^beta``, ``W = sum w``, or ``e w / M`` with detached weights; ``part`` holds
        ``e w`` (``e`` when ``beta`` is 0 or 1, with ``tilt`` the same tensor)."""
        beta, detached = self.beta, self.loss.negative_weighting.detach_weights

        def finish(grad_mass: Tensor) -> None:
            a = (grad_mass * inv_mass)[:, None]
            if beta == 0.0:
                part.mul_(a)
            elif detached:
                (part.square_() if beta == 1.0 else part).mul_(a)
            elif beta == 1.0:  # e (2a e - b): one pass for the bracket, one for the product
                bracket = self._scratch("_w_buffer", part)
                torch.addcmul(-(grad_mass * inv_tilt)[:, None], part, 2.0 * a, out=bracket)
                part.mul_(bracket)
            else:
                part.mul_((1.0 + beta) * a).sub_(tilt.mul_((beta * grad_mass * inv_tilt)[:, None]))

        return finish

    def _pairs(self, pair_rows, pair_cos, pair_tau, log_mass, rows, n):
        """The per-pair stage with autograd on vectors: value, d/d log M (n,), d/d s_p (P,), pair logits."""
        loss, stats = self.loss, self.stats
        need = self.need_grad
        factor = self.pos_factor[rows][pair_rows] if self.pos_factor is not None else None
        count = None
        if loss.negative_weighting.debiases:
            count = (
                torch.full_like(pair_cos, float(self.nominal))
                if loss.negative_weighting.count == "nominal"
                else self.n_neg[rows][pair_rows].to(pair_cos.dtype)
            )
        with torch.enable_grad() if need else nullcontext():
            cos_leaf = pair_cos.detach().requires_grad_(need)
            mass_leaf = log_mass.detach().requires_grad_(need)
            cos_st, pos_logit = loss.positive_logit(cos_leaf, pair_tau, factor)
            shared = (pair_rows, n) if self.shared_positives else None
            terms, pos_prob, extra = loss.pair_terms(
                pos_logit, cos_st, pair_tau, mass_leaf[pair_rows], count, self.floor_logit, shared=shared
            )
            valid = self.valid[rows]
            if loss.reduction == "pairs":
                value = (torch.where(valid[pair_rows], terms, 0) * self.row_coef[rows][pair_rows]).sum()
            else:
                row_loss = loss.row_mean(terms, pair_rows, n)
                value = (torch.where(valid, row_loss, 0) * self.row_coef[rows]).sum()
            grad_mass = grad_pair = None
            if need:
                grad_pair, grad_mass = torch.autograd.grad(value, [cos_leaf, mass_leaf])
        if self.diagnostics:
            stats.add("pos_prob", pos_prob.sum())
            stats.pair_extras(extra, pos_prob.numel())
        return value.detach(), grad_mass, grad_pair, pos_logit.detach()

    # ---------------------------------------------------------------------------------------------
    def _finish_gradient(self, S: Tensor, T: Tensor | None) -> float:
        """Turn ``d loss / d logits`` into ``d loss / d S``; returns the factor of ``G K``."""
        if T is not None:
            S.div_(T)  # logits s / tau(sg(s)): d l / d s = 1 / tau
            return 1.0
        return self.prescale

    def _row_stats(self, rows: slice, hardest_cos: Tensor, hardest_logit: Tensor, best_pos: Tensor | None) -> None:
        """Per-row diagnostics, reduced once by the engine: hardest negative cosine and logit, best positive
        logit (contrastive accuracy)."""
        self.stats.rows["hardest_cos"][rows] = hardest_cos
        self.stats.rows["hardest_logit"][rows] = hardest_logit
        if best_pos is not None:
            self.stats.rows["best_pos"][rows] = best_pos

    def _weighted_sum(self, row_values: Tensor, rows: slice) -> Tensor:
        """``sum_j c_j v_j`` over the valid rows (a left-out row's value may be infinite)."""
        if self.all_valid:
            return (row_values * self.row_coef[rows]).sum()
        return (torch.where(self.valid[rows], row_values, 0) * self.row_coef[rows]).sum()

    @staticmethod
    def _amax_without(S: Tensor, columns: Tensor) -> Tensor:
        """Row maxima of ``S`` with ``columns`` (n, 1) left out (restored afterwards)."""
        saved = S.gather(1, columns)
        hardest = S.scatter_(1, columns, NEG_INF).amax(1)
        S.scatter_(1, columns, saved)
        return hardest

    @staticmethod
    def _label_cosine_stats(S: Tensor, blocks, hide: Callable[[float], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Cosine-space sum and minimum of each row's positives and its hardest negative cosine, read before
        per-entry temperatures divide ``S``; ``hide(value)`` writes ``value`` into the own entries."""
        pos_sum = _reduce_ranges(hide(0.0), blocks, "sum")
        pos_min = _reduce_ranges(hide(math.inf), blocks, "amin")
        hardest = _reduce_ranges(S, blocks, "amax", complement=True)
        return pos_sum, pos_min, hardest

    def _tau_stats_used(self, st: GroupState, j0: int, S: Tensor, T: Tensor, self_idx, r) -> None:
        """Mean, min and max of the per-entry temperatures of the entries the loss uses (positives and
        negatives): every column but the row's own, except for label-aware negatives (other classes plus
        the positives)."""
        g = st.group
        if st.class_ranges is not None and g.negatives == "other_labels":
            blocks = st.class_blocks(j0, S.shape[0])
            used = torch.ones_like(S, dtype=torch.bool)
            for r0, r1, ranges in blocks:
                for a, b in ranges:
                    used[r0:r1, a:b] = False
            if g.has_positive_columns:
                used.scatter_(1, g.positive_columns(j0, r), True)
            else:
                pair_rows, pair_cols = _range_pairs(blocks, self_idx, S.device)
                used[pair_rows, pair_cols] = True
            self._tau_stats_masked(T, used)
            return
        if self_idx is None:
            self.stats.tau_values(T)
            return
        excluded = T.gather(1, self_idx)
        self.stats.add("tau_sum", T.sum() - excluded.sum())
        self.stats.add("tau_count", torch.tensor(T.shape[0] * (T.shape[1] - 1), device=T.device))
        # The own entries hidden in place (no copy of the block), then restored.
        self.stats.low("tau_min", T.scatter_(1, self_idx, math.inf).amin())
        self.stats.high("tau_max", T.scatter_(1, self_idx, NEG_INF).amax())
        T.scatter_(1, self_idx, excluded)

    def _tau_stats_masked(self, T: Tensor, mask: Tensor) -> None:
        if not bool(mask.any()):
            return
        self.stats.add("tau_sum", torch.where(mask, T, 0).sum())
        self.stats.add("tau_count", mask.sum())
        self.stats.low("tau_min", T.masked_fill(~mask, math.inf).amin())
        self.stats.high("tau_max", T.masked_fill(~mask, NEG_INF).amax())
