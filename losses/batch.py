"""What a layout reads and what it returns: the normalised views of a call, and the contrast table.

A call holds ``V >= 2`` views of the same ``B`` local instances (``G`` in the global batch), view-major:
row ``i`` of every view is instance ``i``. Two views are the classic pair ``(u, v)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Candidate tag of extra negatives and queued keys (views are tagged 0 .. V - 1).
EXTRA_VIEW = -1
U_VIEW, V_VIEW = 0, 1


@dataclass
class Batch:
    """Normalised embeddings of one call: the local views and the global batch they belong to."""

    views: list[Tensor]  # V local views, each (B, d)
    gathered: list[Tensor]  # V global views, each (G, d) (gathered with gradient; the local ones on one process)
    start: int  # index of the first local instance in the global batch
    labels: Tensor | None = None  # (G,) global labels, same order as the views
    negatives: Tensor | None = None  # (G, d) global extra negatives
    positive_mask: Tensor | None = None  # (G, G) bool, instance-level positives (SupCon's ``mask``)
    global_views: int | None = None  # multi-crop: only views 0 .. global_views - 1 are candidates

    @property
    def u(self) -> Tensor:
        return self.views[0]

    @property
    def v(self) -> Tensor:
        return self.views[1]

    @property
    def U(self) -> Tensor:
        return self.gathered[0]

    @property
    def V(self) -> Tensor:
        return self.gathered[1]

    @property
    def n_views(self) -> int:
        return len(self.views)

    @property
    def candidate_views(self) -> int:
        """How many views are candidates: all, or the global ones of a multi-crop call."""
        return self.global_views if self.global_views is not None else self.n_views

    @property
    def local(self) -> slice:
        return slice(self.start, self.start + self.u.shape[0])

    @property
    def pair_cos(self) -> Tensor:
        """Detached cosines of the positive pairs of the global batch: ``u_i . v_i`` (G,) for two views;
        for ``V`` views every pair of views ``a < b`` of each instance, (G, V (V - 1) / 2)."""
        if self.n_views == 2:
            return (self.U * self.V).sum(-1).detach()
        Z = self.gathered
        pairs = [(Z[a] * Z[b]).sum(-1) for a in range(len(Z)) for b in range(a + 1, len(Z))]
        return torch.stack(pairs, 1).detach()


@dataclass
class ContrastTable:
    sim: Tensor  # (R, C) cosines of anchors against candidates
    pos: Tensor  # (R, C) bool positive entries
    neg: Tensor  # (R, C) bool negative entries, disjoint from ``pos``
    direction: Tensor  # (R,) long direction group of each anchor row (reduced by mean or sum)
    n_directions: int
    row_instance: Tensor  # (R,) long global instance index of each anchor row
    cand_view: Tensor  # (C,) long view of each candidate (EXTRA_VIEW for extra negatives and queued keys)
    nominal_negatives: int  # the NT-Xent layout's negative count, 2G - 2 for two views (H-SCL's fixed N)
    offset: Tensor | None = None  # (R, C) additive logit offsets
    # Every positive of a row sits in each of its terms' denominators (several views of one instance):
    # ``t_ap = -l_ap + log(sum_{p'} e^{l_ap'} + M_a)``, the NT-Xent denominator of every row but the anchor.
    positives_in_denominator: bool = False
