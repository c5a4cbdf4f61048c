"""Self-similarity tables: each tile of NT-Xent's ``Z Z^T`` computed for its rows and its columns at once.

When one process scores the stacked views against themselves (NT-Xent, MACL, SupCon without labels:
``Z = [u; v]``, ``2B x d``), the logit table ``S = Z Z^T / tau`` is symmetric and the loss's gradient is

.. math::
    \\frac{\\partial L}{\\partial Z} = \\tfrac{1}{\\tau} (G + G^\\top) Z, \\qquad
    G_{ij} = c_i \\big(\\operatorname{softmax}_{j \\ne i}(S_i)_j - [j = p(i)]\\big)

(``c_i`` the row's coefficient, ``p(i) = i \\pm B`` its positive). With ``E = exp(S - M)`` and
``alpha_i = c_i / sum_{j != i} E_ij``, the softmax part of ``G + G^T`` is ``E * (alpha_i + alpha_j)``,
again symmetric, so only the tiles ``I <= J`` of the table are visited, in two passes:

1. denominators: ``E_IJ`` summed along its rows (rows ``I``) and its columns (rows ``J``), with the own
   and positive entries left out (the positive's mass comes from the row-wise dot products); with
   diagnostics, the hardest negative of each row from the same tile.
2. gradient: ``W = E_IJ * (alpha_I + alpha_J^T)``, ``dZ_I += W Z_J``, ``dZ_J += W^T Z_I``; the positive
   targets ``-(c_i + c_{p(i)}) z_{p(i)}`` are a row-wise term.

Matrix products: half the table twice for the logits and once for each of the two gradient products,
about 2/3 of the row-block path's (:mod:`losses.blockwise.function`) and of the dense backward's.
Both passes need the same shift for rows and columns, so ``M = max_i |z_i|^2 / tau`` (no logit
exceeds it) for the whole table; no entry underflows when ``2M`` stays below :data:`MAX_LOG_RANGE`
of the dtype's exponent range (float32 with unit vectors: ``tau >= 0.025``). Otherwise, and for
every other table, the row-block path runs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from losses.blockwise.kernel import Kernel
from losses.blockwise.plan import Plan

NEG_INF = float("-inf")
#: Share of ``-log(finfo.tiny)`` that ``2M`` may use (float32: 78.6, float64: 637).
MAX_LOG_RANGE = 0.9


def self_similar_tensor(plan: Plan, kernel: Kernel) -> int | None:
    """Index of ``Z`` when the plan's table is the fused single-positive ``Z Z^T / tau`` with
    ``Z = [u; v]`` of one process and a scalar temperature; None otherwise."""
    if not kernel.fused or kernel.tau_value is None or len(plan.groups) != 2:
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
            or (g.self_col, g.pos_col) != (k * B, (1 - k) * B)
            or g.self_index is not None
            or g.pos_index is not None
            or g.row_order is not None
            or g.offset_col is not None
            or g.labels is not None
        ):
            return None
    return z


def fits_one_shift(z: Tensor, tau: float) -> bool:
    """Whether ``exp(S - M)`` with one shift ``M = max |z_i|^2 / tau`` cannot underflow."""
    shift = float((z.detach() * z.detach()).sum(1).max()) / tau
    return 2 * shift <= MAX_LOG_RANGE * -math.log(torch.finfo(z.dtype).tiny)


class SymmetricRunner:
    """Drop-in for :class:`~losses.blockwise.function.BlockRunner` on a self-similarity table."""

    def __init__(self, plan: Plan, kernel: Kernel, z_index: int, tile: int) -> None:
        self.plan, self.kernel, self.z_index, self.tile = plan, kernel, z_index, tile

    def run(self, tensors: tuple[Tensor, ...], need: tuple[bool, ...]) -> tuple[Tensor, list[Tensor | None]]:
        kernel = self.kernel
        kernel.need_grad = any(need)
        Z = tensors[self.z_index]
        R, B = Z.shape[0], Z.shape[0] // 2
        inv_tau = 1.0 / kernel.tau_value
        with torch.autocast(Z.device.type, enabled=False):
            Zs = Z * inv_tau
            partner = torch.cat([Z[B:], Z[:B]])
            pos_logit = (Zs * partner).sum(1)
            shift = float((Z * Z).sum(1).max()) * inv_tau
            tiles = [(i, min(i + self.tile, R)) for i in range(0, R, self.tile)]
            pairs = [(I, J) for k, I in enumerate(tiles) for J in tiles[k:]]
            buffer = Z.new_empty(min(self.tile, R) ** 2)

            def exp_tile(I, J, mask_positives: bool) -> Tensor:
                (i0, i1), (j0, j1) = I, J
                S = buffer[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
                torch.mm(Zs[i0:i1], Z[j0:j1].T, out=S)
                # Entry (r, c) is (i0 + r, j0 + c): own column on the diagonal i0 - j0, positives B away.
                for offset in (0, B, -B) if mask_positives else (0,):
                    S.diagonal(i0 - j0 + offset).fill_(NEG_INF)
                return S

            negatives = Z.new_zeros(R)
            hardest = torch.full_like(negatives, NEG_INF)
            for I, J in pairs:
                S = exp_tile(I, J, mask_positives=True)
                if kernel.diagnostics:
                    _maximum_(hardest[I[0] : I[1]], S.amax(1))
                    if I != J:
                        _maximum_(hardest[J[0] : J[1]], S.amax(0))
                S.sub_(shift).exp_()
                negatives[I[0] : I[1]] += S.sum(1)
                if I != J:
                    negatives[J[0] : J[1]] += S.sum(0)
            total = negatives + torch.exp(pos_logit - shift)
            rows = slice(0, R)
            value, coef = kernel.single_positive_rows(rows, total.log() + shift, pos_logit)
            if kernel.diagnostics:
                kernel._row_stats(rows, hardest * kernel.tau_value, hardest, pos_logit)
            if not kernel.need_grad:
                return value, [None] * len(tensors)
            alpha = coef / total
            pair_coef = coef + torch.cat([coef[B:], coef[:B]])
            grad = partner * -pair_coef[:, None]
            weights = Z.new_empty(buffer.numel())
            for I, J in pairs:
                (i0, i1), (j0, j1) = I, J
                S = exp_tile(I, J, mask_positives=False).sub_(shift).exp_()
                W = weights[: S.numel()].view(S.shape)
                torch.add(alpha[i0:i1, None], alpha[None, j0:j1], out=W)
                S.mul_(W)
                grad[i0:i1].addmm_(S, Z[j0:j1])
                if I != J:
                    grad[j0:j1].addmm_(S.T, Z[i0:i1])
            grad.mul_(inv_tau)
        return value, [grad if k == self.z_index and need[k] else None for k in range(len(tensors))]


def _maximum_(out: Tensor, values: Tensor) -> None:
    torch.maximum(out, values, out=out)
