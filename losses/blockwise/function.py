"""The autograd Function of the blockwise path: walk anchor rows in blocks, gradient formed in the forward.

For a block of rows ``q`` (``b x d``) of a :class:`~losses.blockwise.plan.RowGroup`:

.. math::
    S = \\tfrac{1}{\\tau} q K^\\top \\ (b \\times C), \\qquad
    G = \\frac{\\partial L}{\\partial S} \\ \\text{(the kernel, in place)}, \\qquad
    dq \\mathrel{+}= \\tfrac{1}{\\tau} G K, \\qquad dK \\mathrel{+}= G^\\top \\tfrac{q}{\\tau}

so the forward pass does the three matrix products of a dense forward and backward, each block is
consumed right after it is formed, and the memory beyond the ``O((R + C) d)`` inputs and gradients is one
``b x C`` buffer (two with per-entry temperatures or a tilt): linear in the batch for a fixed ``b``.
The backward pass only multiplies the stored gradients by the incoming scalar.

Gradients are formed only for inputs that need them, and not at all under ``torch.no_grad()``.
Double backward (``create_graph=True``) is not supported and raises; build the loss with
``blockwise=False`` for higher-order gradients. Autocast is disabled inside (the loss core computes
in float32 or better).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmcl.losses.blockwise.kernel import GroupState, Kernel
from mmcl.losses.blockwise.plan import Plan

DOUBLE_BACKWARD = (
    "the blockwise loss path does not support double backward (create_graph=True): its gradient is formed "
    "in the forward pass; build the loss with blockwise=False for higher-order gradients"
)


class BlockRunner:
    """Walks a plan's row groups in blocks of ``block_rows`` and calls the kernel on each block."""

    def __init__(self, plan: Plan, kernel: Kernel, states: list[GroupState], block_rows: int) -> None:
        self.plan, self.kernel, self.states, self.block_rows = plan, kernel, states, block_rows

    def run(self, tensors: tuple[Tensor, ...], need: tuple[bool, ...]) -> tuple[Tensor, list[Tensor | None]]:
        kernel = self.kernel
        kernel.need_grad = any(need)
        grads = [torch.zeros_like(t) if need[k] else None for k, t in enumerate(tensors)]
        total = tensors[0].new_zeros(())
        scale = kernel.prescale
        with torch.autocast(tensors[0].device.type, enabled=False):
            for group, state in zip(self.plan.groups, self.states):
                runs = _runs(group.segments)
                keys = [tensors[t][a:b] for t, a, b, _, _ in runs]
                anchors = tensors[group.tensor]
                rows = max(1, min(self.block_rows, group.rows))
                buffer = anchors.new_empty(rows * state.columns)
                for j0 in range(0, group.rows, rows):
                    n = min(rows, group.rows - j0)
                    q = anchors[group.start + j0 : group.start + j0 + n]
                    qs = q * scale if scale is not None else q
                    S = buffer[: n * state.columns].view(n, state.columns)
                    if len(runs) == 1:
                        torch.mm(qs, keys[0].T, out=S)
                    else:
                        for key, (_, _, _, c0, c1) in zip(keys, runs):
                            S[:, c0:c1].copy_(qs @ key.T)
                    value, g_scale = kernel.block(state, j0, S, q)
                    total += value
                    if not kernel.need_grad:
                        continue
                    dq = grads[group.tensor]
                    for key, (t, a, b, c0, c1) in zip(keys, runs):
                        block = S[:, c0:c1] if len(runs) > 1 else S
                        if dq is not None:
                            dq[group.start + j0 : group.start + j0 + n].addmm_(block, key, alpha=g_scale)
                        if grads[t] is not None:
                            grads[t][a:b].addmm_(block.T, qs)
        return total, grads


def _runs(segments) -> list[tuple[int, int, int, int, int]]:
    """Segments merged into runs of consecutive rows of one tensor: (tensor, start, stop, col0, col1)."""
    runs: list[list[int]] = []
    col = 0
    for s in segments:
        if runs and runs[-1][0] == s.tensor and runs[-1][2] == s.start:
            runs[-1][2] = s.stop
            runs[-1][4] += s.size
        else:
            runs.append([s.tensor, s.start, s.stop, col, col + s.size])
        col += s.size
    return [tuple(r) for r in runs]


class BlockwiseLoss(torch.autograd.Function):
    """``apply(runner, *tensors)``: the loss of the plan; gradients formed in the forward pass."""

    @staticmethod
    def forward(ctx, runner: BlockRunner, *tensors: Tensor) -> Tensor:
        value, grads = runner.run(tensors, tuple(ctx.needs_input_grad[1:]))
        ctx.save_for_backward(*grads)
        return value

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(DOUBLE_BACKWARD)
        return (None, *(None if g is None else g * grad_output for g in ctx.saved_tensors))
