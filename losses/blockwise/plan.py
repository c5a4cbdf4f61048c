"""Index plans: a layout's anchors, candidates, positives and negatives as index arithmetic.

The dense path materialises ``(R, C)`` boolean masks (:class:`~losses.parts.layouts.ContrastTable`).
The blockwise path walks anchor rows in blocks and needs, for a block, only which candidate column is
the row's own embedding, which is its positive and which label each row and column carries. For every
supported layout these are affine in the row index, so a plan describes them with a few integers:

* a :class:`RowGroup` is a run of anchor rows ``q_j = X[start + j]`` of one input tensor ``X``;
* its candidate columns are the concatenation of :class:`Segment` s (row ranges of input tensors);
* row ``j``'s own column is ``self_col + j``, its single positive ``pos_col + j`` and its hard negative
  ``offset_col + j`` (each ``None`` when absent);
* label layouts give ``labels`` of the rows and of each segment's columns instead of ``pos_col``; their
  rows and columns are sorted by class (a permutation with autograd), so that a row's positives are one
  contiguous column range per view and no ``(b, C)`` mask is needed. Under ``torch.distributed`` the
  local rows and the global columns are sorted separately and ``self_index`` / ``pos_index`` list the
  columns explicitly.

Input tensors are listed once in :attr:`Plan.tensors` (one process: the anchors *are* the
candidates), so the engine returns one gradient per distinct tensor. Layouts the plan does not know
(custom subclasses, ``positive_mask``, a queue without batch negatives) give a reason string and the
loss uses the dense path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmcl.losses.parts.layouts import (
    EXTRA_VIEW,
    U_VIEW,
    V_VIEW,
    Batch,
    CrossViewLayout,
    LabelLayout,
    Layout,
    QueueLayout,
    TwoViewLayout,
    WithinViewLayout,
)


@dataclass
class Segment:
    """Candidate columns: rows ``[start, stop)`` of input tensor ``tensor``, all of one ``view``."""

    tensor: int
    start: int
    stop: int
    view: int
    labels: Tensor | None = None  # (stop - start,) class ids of these candidates (label layouts)

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class RowGroup:
    """A run of anchor rows with affine positive/self columns; see the module docstring."""

    tensor: int
    start: int
    stop: int
    segments: list[Segment]
    direction: int  # direction group of the reduction
    first_row: int  # index of the group's first row in the table order of the dense path
    instance_start: int  # global instance index of row 0 (rows are consecutive instances)
    view: int  # view of the anchors (DHEL: only U_VIEW rows have a positive)
    self_col: int | None = None
    pos_col: int | None = None
    self_index: Tensor | None = None  # (rows,) explicit own columns (rows and columns sorted differently)
    pos_index: Tensor | None = None  # (rows,) explicit positive columns
    row_order: Tensor | None = None  # (rows,) row index in the dense table's order (sorted groups)
    offset_col: int | None = None
    labels: Tensor | None = None  # (rows,) class ids: positives are the same-class columns
    negatives: str = "others"  # "others": every column but self and positives; "other_labels": other classes
    pair_positive: bool = True  # the row has the pair positive (u_i, v_i), used by decoupled objectives

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def columns(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def has_self(self) -> bool:
        return self.self_col is not None or self.self_index is not None

    @property
    def has_single_positive(self) -> bool:
        return self.pos_col is not None or self.pos_index is not None

    def self_columns(self, j0: int, r: Tensor) -> Tensor:
        """(n, 1) own columns of rows ``j0 + r``."""
        if self.self_index is not None:
            return self.self_index[j0 : j0 + r.numel(), None]
        return (self.self_col + j0 + r)[:, None]

    def positive_columns(self, j0: int, r: Tensor) -> Tensor:
        """(n, 1) single-positive columns of rows ``j0 + r``."""
        if self.pos_index is not None:
            return self.pos_index[j0 : j0 + r.numel(), None]
        return (self.pos_col + j0 + r)[:, None]

    def column_labels(self) -> Tensor:
        return torch.cat([s.labels for s in self.segments])


@dataclass
class Plan:
    tensors: list[Tensor]
    groups: list[RowGroup]
    n_directions: int
    nominal_negatives: int
    n_rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_rows = sum(g.rows for g in self.groups)


class _Tensors:
    """Distinct input tensors by identity: one process passes the same tensor as anchors and candidates."""

    def __init__(self) -> None:
        self.items: list[Tensor] = []

    def index(self, x: Tensor) -> int:
        for k, item in enumerate(self.items):
            if item is x:
                return k
        self.items.append(x)
        return len(self.items) - 1


def _stacked(tensors: _Tensors, batch: Batch) -> tuple[int, int, int, int]:
    """Indices of the stacked local anchors ``[u; v]`` and the stacked candidates ``[U; V]``, and the
    local and global batch sizes."""
    B, G = batch.u.shape[0], batch.U.shape[0]
    anchors = torch.cat([batch.u, batch.v])
    candidates = anchors if batch.U is batch.u and batch.V is batch.v else torch.cat([batch.U, batch.V])
    return tensors.index(anchors), tensors.index(candidates), B, G


def _sorted_by_class(batch: Batch) -> tuple[Batch, Tensor, Tensor | None]:
    """The batch with local rows and global columns sorted by label (stable), the local order and, under
    ``torch.distributed``, each sorted local row's column in the sorted global batch."""
    labels = batch.labels
    B, s = batch.u.shape[0], batch.start
    global_order = torch.argsort(labels, stable=True)
    U, V = batch.U[global_order], batch.V[global_order]
    if batch.U is batch.u:
        return Batch(U, V, U, V, 0, labels[global_order]), global_order, None
    local_order = torch.argsort(labels[s : s + B], stable=True)
    rank_in_sorted = torch.empty_like(global_order)
    rank_in_sorted[global_order] = torch.arange(global_order.numel(), device=labels.device)
    own = rank_in_sorted[s + local_order]
    sorted_batch = Batch(batch.u[local_order], batch.v[local_order], U, V, 0, labels[global_order])
    sorted_batch.local_labels = labels[s + local_order]
    return sorted_batch, local_order, own


def _two_view_groups(batch, tensors, views, labels, pos_single, negatives) -> list[RowGroup]:
    a, c, B, G = _stacked(tensors, batch)
    s = batch.start
    col_labels = [None, None] if labels is None else [labels, labels]
    segments = [Segment(c, 0, G, U_VIEW, col_labels[0]), Segment(c, G, 2 * G, V_VIEW, col_labels[1])]
    row_labels = None if labels is None else labels[s : s + B]
    groups = []
    for k in range(views):
        groups.append(
            RowGroup(
                tensor=a,
                start=k * B,
                stop=(k + 1) * B,
                segments=segments,
                direction=k,
                first_row=k * B,
                instance_start=s,
                view=(U_VIEW, V_VIEW)[k],
                self_col=k * G + s,
                pos_col=(1 - k) * G + s if pos_single else None,
                labels=row_labels,
                negatives=negatives,
            )
        )
    return groups


def _label_groups(layout: LabelLayout, batch: Batch, tensors: _Tensors) -> list[RowGroup]:
    views = 2 if layout.anchors == "all" else 1
    single = layout.positives == "augmentation" or batch.labels is None
    if batch.labels is None:
        return _two_view_groups(batch, tensors, views, None, single, layout.negatives)
    B, G = batch.u.shape[0], batch.U.shape[0]
    sorted_batch, local_order, own = _sorted_by_class(batch)
    groups = _two_view_groups(sorted_batch, tensors, views, sorted_batch.labels, single, layout.negatives)
    for k, g in enumerate(groups):
        g.instance_start = batch.start
        g.row_order = k * B + local_order
        if own is not None:
            g.labels = sorted_batch.local_labels
            g.self_col, g.self_index = None, k * G + own
            if single:
                g.pos_col, g.pos_index = None, (1 - k) * G + own
    return groups


def build_plan(layout: Layout, batch: Batch) -> Plan | str:
    """The plan of ``layout`` on ``batch``, or the reason it has none (the loss then runs densely)."""
    tensors = _Tensors()
    G = batch.U.shape[0]
    if type(layout) is TwoViewLayout:
        groups = _two_view_groups(batch, tensors, 2, None, True, "others")
        return Plan(tensors.items, groups, 2, 2 * G - 2)
    if type(layout) is LabelLayout:
        if batch.positive_mask is not None:
            return "positive_mask (an instance-level (N, N) mask) is only supported by the dense path"
        if layout.negatives == "other_labels" and batch.labels is None:
            return "label-aware negatives need labels"
        groups = _label_groups(layout, batch, tensors)
        for g in groups:
            g.direction = 0  # one direction group: SupCon and SCL average over all anchors
        return Plan(tensors.items, groups, 1, 2 * G - 2)
    if type(layout) is CrossViewLayout:
        return _cross_view_plan(layout, batch, tensors)
    if type(layout) is WithinViewLayout:
        groups = []
        for k, (local, full) in enumerate([(batch.u, batch.U), (batch.v, batch.V)][: 1 + layout.include_second_view]):
            view = (U_VIEW, V_VIEW)[k]
            groups.append(
                RowGroup(
                    tensor=tensors.index(local),
                    start=0,
                    stop=local.shape[0],
                    segments=[Segment(tensors.index(full), 0, G, view)],
                    direction=k,
                    first_row=k * local.shape[0],
                    instance_start=batch.start,
                    view=view,
                    self_col=batch.start,
                    pair_positive=k == 0,
                )
            )
        return Plan(tensors.items, groups, len(groups), 2 * G - 2)
    if type(layout) is QueueLayout:
        if not layout.batch_negatives:
            return "QueueLayout(batch_negatives=False) is only supported by the dense path"
        if batch.u.shape[1] != layout.queue.shape[1]:
            return "queue dimension mismatch (the dense path raises the error)"
        keys = torch.cat([batch.V, layout.queue[: int(layout.filled)].to(batch.V.dtype)])
        group = RowGroup(
            tensor=tensors.index(batch.u),
            start=0,
            stop=batch.u.shape[0],
            segments=[Segment(tensors.index(keys), 0, keys.shape[0], V_VIEW)],
            direction=0,
            first_row=0,
            instance_start=batch.start,
            view=U_VIEW,
            pos_col=batch.start,
        )
        if layout.training:
            layout._enqueue(batch.V.detach())
        return Plan(tensors.items, [group], 1, 2 * G - 2)
    return f"{type(layout).__name__} has no index plan"


def _cross_view_plan(layout: CrossViewLayout, batch: Batch, tensors: _Tensors) -> Plan:
    G = batch.U.shape[0]
    extra = batch.negatives
    directions = {"u->v": [(batch.u, batch.V, U_VIEW)], "v->u": [(batch.v, batch.U, V_VIEW)]}.get(
        layout.direction, [(batch.u, batch.V, U_VIEW), (batch.v, batch.U, V_VIEW)]
    )
    groups = []
    for k, (local, target, view) in enumerate(directions):
        segments = [Segment(tensors.index(target), 0, G, V_VIEW if view == U_VIEW else U_VIEW)]
        if extra is not None:
            segments.append(Segment(tensors.index(extra), 0, extra.shape[0], EXTRA_VIEW))
        use_offset = extra is not None and layout.hard_negative_weight != 0.0
        groups.append(
            RowGroup(
                tensor=tensors.index(local),
                start=0,
                stop=local.shape[0],
                segments=segments,
                direction=k,
                first_row=k * local.shape[0],
                instance_start=batch.start,
                view=view,
                pos_col=batch.start,
                offset_col=G + batch.start if use_offset else None,
            )
        )
    return Plan(tensors.items, groups, len(groups), 2 * G - 2)
