"""Blockwise path of the loss core: the similarity table computed and consumed in blocks of anchor rows.

The dense path (:meth:`mmcl.losses.ContrastiveLoss.compute`) builds the ``(R, C)`` cosine table of the
``R`` anchors against the ``C`` candidates, boolean masks of the same size and several logit
matrices, and lets autograd keep them for the backward pass. The blockwise path computes the same
loss, gradients and diagnostics walking blocks of ``b`` anchor rows: for each block it forms
``S = q K^T / tau`` (``b x C``), the row losses and, right away, ``G = d loss / d S``, and
accumulates ``dq = G K / tau`` and ``dK += G^T q / tau``. Peak memory is ``O((R + C) d + b C)``,
linear in the batch for a fixed block, and each block is consumed right after it is formed, with no
second pass over the table in the backward.

When one process scores the stacked views against themselves (NT-Xent, MACL, DySTreSS, SupCon without
labels, DCL, the debiased loss, HCL with ``beta`` 0 or 1, the margin losses) the table is symmetric, and
:mod:`mmcl.losses.blockwise.symmetric` visits only its upper-triangular tiles, each for its rows and its
columns: about 2/3 of the matrix products.

Shapes: ``R`` anchor rows (``2B`` for NT-Xent, ``VB`` with ``V`` views), ``C`` candidates (``2G``, ``VG``),
``d`` the embedding dimension, ``b`` the block rows (``block_size``; by default ``engine.BLOCK_ENTRIES / C``, at most
``engine.MAX_BLOCK_ROWS``).

Use: every softmax-family loss takes ``blockwise`` (``None``: automatic, when the table has at least
``mmcl.losses.blockwise.engine.MIN_ENTRIES`` entries; ``True``: always; ``False``: never) and ``block_size``
(rows per block).
Results equal the dense path's to rounding (tested to 1e-6 in float64 with ragged blocks).

Dense only (the loss falls back, and warns once when ``blockwise=True``): layouts without a
:meth:`~losses.parts.layouts.Layout.block_plan` (and ``positive_mask``, ``QueueLayout(batch_negatives=False)``,
whose plans say so) and temperature rules without a blockwise form (``DynamicTemperature(detach_temperature=
False)``), split negative sums with a tilt or the nominal count, a tilt together with hard-negative logit
offsets, SupCon's ``positives_in_denominator`` with parts other than plain negatives, the decoupled
objective with ``reduction="pairs"`` or label positives, the coupled objective on the within-view layout
and gradient scaling with several positives per anchor. Any number of views (docs/multiview.md): each
view's rows are a group whose positive columns are given by index.

Limits: the gradient is formed in the forward pass, so double backward (``create_graph=True``) raises;
under ``torch.no_grad()`` (or when no input requires grad) no gradient is formed.
"""

from mmcl.losses.blockwise.engine import compute, select, unsupported
from mmcl.losses.blockwise.function import DOUBLE_BACKWARD

__all__ = ["DOUBLE_BACKWARD", "compute", "select", "unsupported"]
