"""Index plans: a layout's anchors, candidates, positives and negatives as index arithmetic.

The dense path materialises ``(R, C)`` boolean masks (:class:`~losses.batch.ContrastTable`). The
blockwise path walks anchor rows in blocks and needs, for a block, only which candidate column is the
row's own embedding, which are its positives and which label each row and column carries. For every
layout with a blockwise form these are affine in the row index, so a plan describes them with a few
integers:

* a :class:`RowGroup` is a run of anchor rows ``q_j = X[start + j]`` of one input tensor ``X`` (one view);
* its candidate columns are the concatenation of :class:`Segment` s (row ranges of input tensors);
* row ``j``'s own column is ``self_col + j``, its positives ``c + j`` for each ``c`` in ``pos_cols`` (one
  per other view of its instance) and its hard negative ``offset_col + j`` (each absent when ``None``
  or empty);
* label layouts give ``labels`` of the rows and of each segment's columns instead of ``pos_cols``; their
  rows and columns are sorted by class (a permutation with autograd), so that a row's positives are one
  contiguous column range per view and no ``(b, C)`` mask is needed. Under ``torch.distributed`` the
  local rows and the global columns are sorted separately and ``self_index`` / ``pos_index`` list the
  columns explicitly.

Each layout builds its own plan (:meth:`~losses.parts.layouts.Layout.block_plan`) from the helpers here;
a layout without one returns the reason and the loss uses the dense path. Input tensors are listed once
in :attr:`Plan.tensors` (one process: the anchors *are* the candidates), so the engine returns one
gradient per distinct tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmcl.losses.batch import Batch


@dataclass(eq=False)  # identity: fields hold tensors
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


@dataclass(eq=False)  # identity: fields hold tensors
class RowGroup:
    """A run of anchor rows of one view with affine own and positive columns; see the module docstring."""

    tensor: int
    start: int
    stop: int
    segments: list[Segment]
    direction: int  # direction group of the reduction
    first_row: int  # index of the group's first row in the table order of the dense path
    instance_start: int  # global instance index of row 0 (rows are consecutive instances)
    view: int  # view of the anchors
    positive_views: tuple[int, ...] = ()  # views of the row's own instance that are its positives (pairs)
    self_col: int | None = None
    pos_cols: tuple[int, ...] = ()  # row j's positives are the columns c + j
    self_index: Tensor | None = None  # (rows,) explicit own columns (rows and columns sorted differently)
    pos_index: Tensor | None = None  # (rows, K) explicit positive columns
    row_order: Tensor | None = None  # (rows,) row index in the dense table's order (sorted groups)
    offset_col: int | None = None
    offset: float = 0.0  # added to the logit of row j's column offset_col + j (a hard negative's log alpha)
    labels: Tensor | None = None  # (rows,) class ids: positives are the same-class columns
    negatives: str = "others"  # "others": every column but self and positives; "other_labels": other classes

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
    def has_positive_columns(self) -> bool:
        """The positives are given column by column (``pos_cols`` / ``pos_index``), not by labels."""
        return bool(self.pos_cols) or self.pos_index is not None

    @property
    def n_positive_columns(self) -> int:
        return self.pos_index.shape[1] if self.pos_index is not None else len(self.pos_cols)

    @property
    def pair_positive(self) -> bool:
        """The rows have same-instance positives (the other views), read by the decoupled objective."""
        return bool(self.positive_views)

    @property
    def label_positives(self) -> bool:
        return self.labels is not None and not self.has_positive_columns

    def self_columns(self, j0: int, r: Tensor) -> Tensor:
        """(n, 1) own columns of rows ``j0 + r``."""
        if self.self_index is not None:
            return self.self_index[j0 : j0 + r.numel(), None]
        return (self.self_col + j0 + r)[:, None]

    def positive_columns(self, j0: int, r: Tensor) -> Tensor:
        """(n, K) positive columns of rows ``j0 + r``."""
        if self.pos_index is not None:
            return self.pos_index[j0 : j0 + r.numel()]
        return torch.tensor(self.pos_cols, device=r.device)[None, :] + (j0 + r)[:, None]

    def column_labels(self) -> Tensor:
        return torch.cat([s.labels for s in self.segments])


@dataclass(eq=False)  # identity: fields hold tensors
class Plan:
    tensors: list[Tensor]
    groups: list[RowGroup]
    n_directions: int
    nominal_negatives: int
    positives_in_denominator: bool = False  # the table's: each term's denominator holds every positive
    n_rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_rows = sum(g.rows for g in self.groups)

    @property
    def label_positives(self) -> bool:
        return any(g.label_positives for g in self.groups)

    @property
    def has_offsets(self) -> bool:
        return any(g.offset_col is not None for g in self.groups)

    @property
    def positives_outside_columns(self) -> bool:
        """Some rows' positives are not candidates (DHEL's within-view table)."""
        return any(g.pair_positive and not g.has_positive_columns and g.labels is None for g in self.groups)


class TensorIndex:
    """Distinct input tensors by identity: one process passes the same tensor as anchors and candidates."""

    def __init__(self) -> None:
        self.items: list[Tensor] = []

    def index(self, x: Tensor) -> int:
        for k, item in enumerate(self.items):
            if item is x:
                return k
        self.items.append(x)
        return len(self.items) - 1


def stacked_groups(
    batch: Batch,
    tensors: TensorIndex,
    anchor_views: int,
    labels: Tensor | None = None,
    column_positives: bool = True,
    negatives: str = "others",
) -> list[RowGroup]:
    """The stacked-views table: rows ``[z^1; ..; z^V]`` (the first ``anchor_views`` views as anchors),
    columns the candidate views ``[Z^1; ..; Z^Vc]``; one group per anchor view, direction = view.

    ``column_positives``: the positives are the other candidate views of the row's instance (else
    ``labels`` give them); ``labels`` (G,) class ids of the global batch in column order.
    """
    B, G, s = batch.u.shape[0], batch.U.shape[0], batch.start
    Vc = batch.candidate_views
    local = batch.views
    anchors = torch.cat(local)
    one_process = all(x is y for x, y in zip(batch.gathered, local))
    candidates = anchors if one_process and Vc == batch.n_views else torch.cat(batch.gathered[:Vc])
    a, c = tensors.index(anchors), tensors.index(candidates)
    segments = [Segment(c, k * G, (k + 1) * G, k, labels) for k in range(Vc)]
    groups = []
    for k in range(anchor_views):
        others = tuple(view for view in range(Vc) if view != k)
        groups.append(
            RowGroup(
                tensor=a,
                start=k * B,
                stop=(k + 1) * B,
                segments=segments,
                direction=k,
                first_row=k * B,
                instance_start=s,
                view=k,
                positive_views=others,
                self_col=k * G + s if k < Vc else None,
                pos_cols=tuple(view * G + s for view in others) if column_positives else (),
                labels=None if labels is None else labels[s : s + B],
                negatives=negatives,
            )
        )
    return groups


def sorted_by_class(batch: Batch) -> tuple[Batch, Tensor, Tensor | None, Tensor]:
    """The batch with local rows and global columns sorted by label (stable), the local order, under
    ``torch.distributed`` each sorted local row's column in the sorted global batch (else None), and the
    sorted local rows' labels."""
    labels = batch.labels
    B, s = batch.u.shape[0], batch.start
    global_order = torch.argsort(labels, stable=True)
    gathered = [Z[global_order] for Z in batch.gathered]
    sorted_labels = labels[global_order]
    if all(x is y for x, y in zip(batch.gathered, batch.views)):
        sorted_batch = Batch(gathered, gathered, 0, sorted_labels, global_views=batch.global_views)
        return sorted_batch, global_order, None, sorted_labels
    local_order = torch.argsort(labels[s : s + B], stable=True)
    rank_in_sorted = torch.empty_like(global_order)
    rank_in_sorted[global_order] = torch.arange(global_order.numel(), device=labels.device)
    own = rank_in_sorted[s + local_order]
    views = [x[local_order] for x in batch.views]
    sorted_batch = Batch(views, gathered, 0, sorted_labels, global_views=batch.global_views)
    return sorted_batch, local_order, own, labels[s + local_order]


def label_groups(batch: Batch, tensors: TensorIndex, anchor_views: int, augmentation: bool, negatives: str):
    """Groups of a label layout with labels: rows and columns sorted by class, positives the same-class
    columns (or, with ``augmentation``, the other views of the row's instance)."""
    B, G = batch.u.shape[0], batch.U.shape[0]
    sorted_batch, local_order, own, local_labels = sorted_by_class(batch)
    groups = stacked_groups(sorted_batch, tensors, anchor_views, sorted_batch.labels, augmentation, negatives)
    for k, g in enumerate(groups):
        g.instance_start = batch.start
        g.row_order = k * B + local_order
        if own is not None:
            g.labels = local_labels
            g.self_col, g.self_index = None, (k * G + own if k < batch.candidate_views else None)
            if augmentation:
                g.pos_cols, g.pos_index = (), torch.stack([view * G + own for view in g.positive_views], 1)
    return groups
