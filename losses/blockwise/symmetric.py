"""Self-similarity tables: each tile of NT-Xent's ``Z Z^T`` computed for its rows and its columns at once.

When one process scores the stacked views against themselves (``Z = [u; v]``, ``2B x d``: NT-Xent, MACL,
DySTreSS, SupCon without labels, DCL, the debiased loss, HCL, the margin losses), the logit table
``S = Z Z^T / tau`` is symmetric and the loss's gradient is

.. math::
    \\frac{\\partial L}{\\partial Z} = \\tfrac{1}{\\tau} (G + G^\\top) Z, \\qquad G = \\frac{\\partial L}{\\partial S}.

Every supported form writes ``G`` through ``e = exp(S - M)`` and per-row coefficients, so that the
symmetric part ``G + G^T`` is again a function of one tile:

* fused softmax (``c_i`` the row's coefficient, ``p(i) = i +- B`` its positive):
  ``G_ij = c_i (e_ij / total_i - [j = p(i)])``, so ``(G + G^T)_ij = e_ij (a_i + a_j)`` with
  ``a = c / total``, plus the positive targets ``-(c_i + c_p(i))`` as a row-wise term; with DySTreSS's
  per-entry temperatures (``l_ij = s_ij / tau(s_ij)``, symmetric too, the temperature detached) both
  are divided by ``tau(s_ij)``;
* negatives in one sum (``beta = 0``): ``e_ij (a_i + a_j)`` with ``a = g / sum e`` (``g = d loss / d log M``
  from the kernel's pair stage, whose positive gradients are again a row-wise term);
* HCL's tilt (``beta = 1``): ``G_ij = g_i (2 e_ij^2 / sum e^2 - e_ij / sum e)``, so
  ``(G + G^T)_ij = e_ij (e_ij (a_i + a_j) - b_i - b_j)``; ``e_ij^2 (a_i + a_j)`` with detached weights.

Only the tiles ``I <= J`` are visited, in two passes: (1) the sums of ``e`` (and ``e^2``) along a tile's
rows (for rows ``I``) and columns (for rows ``J``), own and positive entries left out, and with
diagnostics the hardest negatives; (2) the tile of ``G + G^T``, then ``dZ_I += W Z_J`` and
``dZ_J += W^T Z_I``. Matrix products: half the table twice for the logits and once for each of the two
gradient products, about 2/3 of the row-block path's (:mod:`mmcl.losses.blockwise.function`).

Rows and columns need the same shift, so ``M = max_i |z_i|^2 / tau`` (no logit exceeds it; with
per-entry temperatures, their lower bound) serves the whole table; no entry underflows when ``2M``
(``4M`` when ``e`` is squared) stays below :data:`MAX_LOG_RANGE` of the dtype's exponent range (float32
with unit vectors: ``tau >= 0.025``, or ``0.051`` for HCL). Otherwise, and for every other table, the
row-block path runs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mmcl.losses.blockwise.kernel import Kernel
from mmcl.losses.blockwise.plan import Plan

NEG_INF = float("-inf")
#: Share of ``-log(finfo.tiny)`` that ``2M`` may use (float32: 78.6, float64: 637).
MAX_LOG_RANGE = 0.9


def self_similar_tensor(plan: Plan, kernel: Kernel) -> int | None:
    """Index of ``Z`` when the plan's table is ``Z Z^T / tau`` with ``Z = [u; v]`` of one process, a scalar
    temperature, one positive per row (the other view) and every other column a negative, and the loss
    is the fused softmax or has untilted (``beta = 0``) or HCL-tilted (``beta = 1``) negatives in one sum;
    None otherwise."""
    if len(plan.groups) != 2:
        return None
    weighting = kernel.loss.negative_weighting
    if not kernel.fused and (kernel.rule is not None or kernel.beta not in (0.0, 1.0) or weighting.split_views):
        return None
    z = plan.groups[0].tensor
    B = plan.groups[0].rows
    if plan.tensors[z].shape[0] != 2 * B:
        return None
    for k, g in enumerate(plan.groups):
        segments = [(s.tensor, s.start, s.stop) for s in g.segments]
        if (
            g.tensor != z
            or (g.start, g.stop) != (k * B, (k + 1) * B)
            or segments != [(z, 0, B), (z, B, 2 * B)]
            or (g.self_col, g.pos_cols) != (k * B, ((1 - k) * B,))
            or g.self_index is not None
            or g.pos_index is not None
            or g.row_order is not None
            or g.offset_col is not None
            or g.labels is not None
            or g.negatives != "others"
        ):
            return None
    return z


def one_shift(z: Tensor, kernel: Kernel) -> float | None:
    """The shift ``M = max_i |z_i|^2 / tau`` (per-entry temperatures: their lower bound), above every logit,
    or None when ``exp(S - M)`` (squared for the tilt) could underflow."""
    floor = kernel.tau_value if kernel.rule is None else kernel.rule.current_tau_min()
    shift = float((z.detach() * z.detach()).sum(1).max()) / floor
    power = 2 if not kernel.fused and kernel.beta == 1.0 else 1
    return shift if 2 * power * shift <= MAX_LOG_RANGE * -math.log(torch.finfo(z.dtype).tiny) else None


class SymmetricRunner:
    """Drop-in for :class:`~losses.blockwise.function.BlockRunner` on a self-similarity table; ``shift`` from
    :func:`one_shift` on the same ``Z``."""

    def __init__(self, kernel: Kernel, z_index: int, tile: int, shift: float) -> None:
        self.kernel, self.z_index, self.tile, self.shift = kernel, z_index, tile, shift

    def run(self, tensors: tuple[Tensor, ...], need: tuple[bool, ...]) -> tuple[Tensor, list[Tensor | None]]:
        kernel = self.kernel
        kernel.need_grad = any(need)
        diagnostics, rule = kernel.diagnostics, kernel.rule
        Z = tensors[self.z_index]
        R, B = Z.shape[0], Z.shape[0] // 2
        squares = not kernel.fused and kernel.beta == 1.0
        # Scalar temperature: folded into the anchors. Per-entry temperatures: S holds cosines, divided below.
        scale = 1.0 / kernel.tau_value if rule is None else 1.0
        with torch.autocast(Z.device.type, enabled=False):
            Zs = Z * scale
            partner = torch.cat([Z[B:], Z[:B]])
            pos_cos = (Z * partner).sum(1)
            pos_tau = kernel.tau if rule is None else rule.tau_of(pos_cos)
            shift = self.shift
            tiles = [(i, min(i + self.tile, R)) for i in range(0, R, self.tile)]
            pairs = [(I, J) for k, I in enumerate(tiles) for J in tiles[k:]]
            side = min(self.tile, R)
            buffer = Z.new_empty(side * side)
            temperatures = Z.new_empty(side * side) if rule is not None else None

            def exp_tile(I, J, mask_positives: bool, stats: dict | None = None) -> tuple[Tensor, Tensor | None]:
                """``exp(l_IJ - M)`` in the buffer (own and, if asked, positive entries 0) and the tile's
                temperatures; ``stats`` collects the hardest negatives and the temperature statistics."""
                (i0, i1), (j0, j1) = I, J
                S = buffer[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
                torch.mm(Zs[i0:i1], Z[j0:j1].T, out=S)
                T = None
                if rule is not None:
                    T = rule.tau_of(S, out=temperatures[: S.numel()].view(S.shape))
                    if stats is not None:
                        _temperature_stats(stats, T, i0 - j0, 1 if I == J else 2)
                # Entry (r, c) is (i0 + r, j0 + c): own column on the diagonal i0 - j0, positives B away.
                for offset in (0, B, -B) if mask_positives else (0,):
                    S.diagonal(i0 - j0 + offset).fill_(NEG_INF)
                if T is not None:
                    if stats is not None:
                        _row_and_column_max(stats["hardest_cos"], S, I, J)
                    S.div_(T)
                if stats is not None:
                    _row_and_column_max(stats["hardest"], S, I, J)
                return S.sub_(shift).exp_(), T

            # Pass 1: sums of e (and e^2) over each row's negatives, from both sides of each tile.
            sums = Z.new_zeros(R)
            square_sums = Z.new_zeros(R) if squares else None
            stats = None
            if diagnostics:
                keys = ("hardest", "hardest_cos") if rule is not None else ("hardest",)
                stats = {key: torch.full_like(sums, NEG_INF) for key in keys}
            for I, J in pairs:
                E, _ = exp_tile(I, J, mask_positives=True, stats=stats)
                _add_both_sides(sums, E.sum(1), E.sum(0), I, J)
                if squares:
                    norms = (torch.linalg.vector_norm(E, dim=d).square() for d in (1, 0))
                    _add_both_sides(square_sums, *norms, I, J)
            rows = slice(0, R)
            if kernel.fused:
                value, coef, pair_grad, best_pos = self._fused_rows(rows, sums, pos_cos / pos_tau, shift)
                pair_grad = pair_grad / pos_tau if rule is not None else pair_grad
                weights, offsets = coef, None
            else:
                value, weights, offsets, pair_grad, best_pos = self._mass_rows(rows, sums, square_sums, pos_cos, shift)
            if diagnostics:
                hardest = stats["hardest"]
                hardest_cos = stats["hardest_cos"] if rule is not None else hardest * kernel.tau_value
                kernel._row_stats(rows, hardest_cos, hardest, best_pos)
                if rule is not None:
                    kernel.stats.add("tau_sum", stats["tau_sum"])
                    kernel.stats.add("tau_count", torch.tensor(R * (R - 1), device=Z.device))
                    kernel.stats.low("tau_min", stats["tau_min"])
                    kernel.stats.high("tau_max", stats["tau_max"])
            if not kernel.need_grad:
                return value, [None] * len(tensors)
            # Pass 2: the tiles of G + G^T; dZ = (G + G^T) Z + the positives' row-wise terms (in units of S).
            grad = partner * (pair_grad + torch.cat([pair_grad[B:], pair_grad[:B]]))[:, None]
            scratch = Z.new_empty(buffer.numel())
            for I, J in pairs:
                (i0, i1), (j0, j1) = I, J
                E, T = exp_tile(I, J, mask_positives=not kernel.fused)
                W = scratch[: E.numel()].view(E.shape)
                torch.add(weights[i0:i1, None], weights[None, j0:j1], out=W)
                if offsets is not None:  # e (e (a_i + a_j) - b_i - b_j)
                    W.mul_(E).sub_(offsets[i0:i1, None]).sub_(offsets[None, j0:j1])
                elif squares:  # detached tilt: e^2 (a_i + a_j)
                    W.mul_(E)
                E.mul_(W)
                if T is not None:  # l = s / tau(s) with the temperature detached: d l / d s = 1 / tau
                    E.div_(T)
                grad[i0:i1].addmm_(E, Z[j0:j1])
                if I != J:
                    grad[j0:j1].addmm_(E.T, Z[i0:i1])
            grad.mul_(scale)
        return value, [grad if k == self.z_index and need[k] else None for k in range(len(tensors))]

    def _fused_rows(self, rows: slice, negatives: Tensor, pos_logit: Tensor, shift: float):
        """Softmax over every column but the own: ``G_ij = a_i e_ij - c_i [j = p(i)]`` with ``a_i = c_i /
        total_i`` (``c_i`` the row's coefficient times MACL's weight)."""
        shifts = torch.full_like(pos_logit, shift)
        value, a, pos_grad = self.kernel.column_positive_rows(rows, negatives, pos_logit[:, None], shifts)
        # The tiles apply a e to the positive entry too, so its target is the rest: pos_grad - a e_p.
        target = pos_grad[:, 0] - a * torch.exp(pos_logit - shift)
        return value, a, target, pos_logit

    def _mass_rows(self, rows: slice, sums: Tensor, square_sums: Tensor | None, pos_cos: Tensor, shift: float):
        """Negatives in one (optionally tilted) sum, then the kernel's pair stage; the tile weights of
        :meth:`Kernel._mass_gradient` (``e`` times ``a_i + a_j``, minus ``b_i + b_j`` for the tilt)."""
        kernel = self.kernel
        R = sums.shape[0]
        M = torch.full_like(sums, shift)
        if square_sums is None:
            log_mass, inv_mass, inv_tilt = kernel.view_mass(rows, M, sums, sums, None)
        else:
            log_mass, inv_mass, inv_tilt = kernel.view_mass(rows, M, square_sums, sums, square_sums.sqrt())
        pair_rows = torch.arange(R, device=sums.device)
        value, grad_mass, grad_pair, best_pos = kernel.mass_rows(rows, R, log_mass, pair_rows, pos_cos, kernel.tau)
        if not kernel.need_grad:
            return value, None, None, None, best_pos
        # d loss / d cos of the pairs, in the logit units of the tiles (the runner divides by tau at the end)
        pair_grad = grad_pair * kernel.tau_value if grad_pair is not None else torch.zeros_like(sums)
        if square_sums is None or kernel.loss.negative_weighting.detach_weights:
            return value, grad_mass * inv_mass, None, pair_grad, best_pos
        return value, 2.0 * grad_mass * inv_mass, grad_mass * inv_tilt, pair_grad, best_pos


def _add_both_sides(out: Tensor, row_values: Tensor, col_values: Tensor, I, J) -> None:
    """Row sums of tile ``(I, J)`` go to rows ``I``; its column sums, to rows ``J`` (once on the diagonal)."""
    out[I[0] : I[1]] += row_values
    if I != J:
        out[J[0] : J[1]] += col_values


def _row_and_column_max(out: Tensor, S: Tensor, I, J) -> None:
    """Row maxima of tile ``(I, J)`` into rows ``I``; its column maxima, into rows ``J``."""
    torch.maximum(out[I[0] : I[1]], S.amax(1), out=out[I[0] : I[1]])
    if I != J:
        torch.maximum(out[J[0] : J[1]], S.amax(0), out=out[J[0] : J[1]])


def _temperature_stats(stats: dict, T: Tensor, own_diagonal: int, weight: int) -> None:
    """Sum, minimum and maximum of a tile's temperatures over every entry but the own ones (each entry
    counts for its row and, off the diagonal tiles, for its column too); the own entries are hidden in
    place and restored."""
    own = T.diagonal(own_diagonal)
    saved = own.clone()
    total = weight * (T.sum() - saved.sum())
    own.fill_(math.inf)
    low = T.amin()
    own.fill_(NEG_INF)
    high = T.amax()
    own.copy_(saved)
    if "tau_sum" not in stats:
        stats.update(tau_sum=total, tau_min=low, tau_max=high)
        return
    stats["tau_sum"] = stats["tau_sum"] + total
    stats["tau_min"] = torch.minimum(stats["tau_min"], low)
    stats["tau_max"] = torch.maximum(stats["tau_max"], high)
