"""Batch layouts: which rows are anchors, which candidates are their positives and negatives.

A layout turns the (normalised, possibly gathered) views of a batch into a :class:`ContrastTable`: the
cosine matrix between the local anchor rows and the candidate columns, a positive mask and a disjoint
negative mask (entries in neither, such as self-similarity, are excluded), plus per-row and
per-candidate tags used by the later stages. It also describes the same table to the blockwise path
(:meth:`Layout.block_plan`, index arithmetic instead of masks), so a new layout is one class.

Shapes, with ``B`` local instances, ``G`` in the global batch (``G = B`` on one process), ``V`` views
(``Vc`` of them candidates: all, or the ``global_views`` of a multi-crop call):

==========================  ====================  ==============================================  =========
layout                      anchors ``R``         candidates ``C``                                views
==========================  ====================  ==============================================  =========
:class:`TwoViewLayout`      ``VB`` (every view)   ``Vc G``: ``[Z^1; ..; Z^Vc]``                   any
:class:`LabelLayout`        ``VB`` or ``B``       ``Vc G``: ``[Z^1; ..; Z^Vc]``                   any
:class:`CrossViewLayout`    ``B`` or ``2B``       ``[V]`` / ``[U; V]`` (+ ``G`` hard negatives)   2
:class:`WithinViewLayout`   ``B`` or ``2B``       ``2G``: ``[U; V]``                              2
:class:`QueueLayout`        ``B``                 ``G + K`` (keys, then the queue)                2
==========================  ====================  ==============================================  =========
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmcl.losses.batch import EXTRA_VIEW, U_VIEW, V_VIEW, Batch, ContrastTable
from mmcl.losses.blockwise.plan import Plan, RowGroup, Segment, TensorIndex, label_groups, stacked_groups
from mmcl.losses.checks import check_choice, construct

__all__ = ["EXTRA_VIEW", "LAYOUTS", "U_VIEW", "V_VIEW", "Batch", "ContrastTable", "Layout", "as_layout"]


def _arange(n: int, like: Tensor) -> Tensor:
    return torch.arange(n, device=like.device)


def _one_hot_mask(rows: int, cols: int, col_index: Tensor) -> Tensor:
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=col_index.device)
    mask[_arange(rows, col_index), col_index] = True
    return mask


class Layout(nn.Module):
    """Base class. Subclasses set what inputs they accept, implement :meth:`forward` and, for the blockwise
    path, :meth:`block_plan`; a layout with state after a call (a queue) implements :meth:`update`."""

    accepts_labels = False
    requires_labels = False
    accepts_negatives = False
    #: How many views the layout defines its table for: 2 (a pair) or None (any number, stacked view-major,
    #: including a multi-crop call's ``global_views``).
    max_views: int | None = 2

    def forward(self, batch: Batch) -> ContrastTable:  # pragma: no cover - interface
        raise NotImplementedError

    def block_plan(self, batch: Batch) -> Plan | str:
        """The table as index arithmetic (:mod:`mmcl.losses.blockwise.plan`), or why there is none (the
        loss then takes the dense path). No side effects: the engine calls :meth:`update` after using it."""
        return f"{type(self).__name__} has no index plan"

    def update(self, batch: Batch) -> None:
        """The layout's state after a call on ``batch`` (nothing by default)."""


def _stacked_masks(batch: Batch, anchor_views: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Anchors ``[z^1; ..]`` (the first ``anchor_views`` local views) and candidates ``[Z^1; ..; Z^Vc]``: the
    anchors' instance and view ids, the candidates' view ids, and the masks of each anchor's own entry and
    of its instance's other candidate views (by index, without comparing ``R x C`` ids)."""
    B, G, Vc = batch.u.shape[0], batch.U.shape[0], batch.candidate_views
    local = _arange(B, batch.u) + batch.start
    row_instance = local.repeat(anchor_views)
    row_view = torch.arange(anchor_views, device=local.device).repeat_interleave(B)
    cand_view = torch.arange(Vc, device=local.device).repeat_interleave(G)
    R, C = anchor_views * B, Vc * G
    rows = _arange(R, local)
    own = torch.zeros(R, C, dtype=torch.bool, device=local.device)
    has_own = row_view < Vc
    own[rows[has_own], (row_view * G + row_instance)[has_own]] = True
    partners = torch.zeros_like(own)
    for view in range(Vc):
        other = row_view != view
        partners[rows[other], view * G + row_instance[other]] = True
    return row_instance, row_view, cand_view, own, partners


def _candidates(batch: Batch) -> Tensor:
    return torch.cat(batch.gathered[: batch.candidate_views])


class TwoViewLayout(Layout):
    """NT-Xent layout: every row of every view is an anchor; its positives are the other views of its
    instance, its negatives every row of another instance; each term's denominator holds every row but
    the anchor (SupCon's ``A(i)``). With two views: positive ``pos(k)``, ``2G - 2`` negatives.

    With ``V`` views (``Vc`` candidates): ``V B`` anchors against ``Vc G`` candidates, ``Vc - 1`` positives
    per row (``Vc`` for a local crop's row, which is no candidate) and ``Vc (G - 1)`` negatives; one
    direction group per view.
    """

    max_views = None

    def forward(self, batch: Batch) -> ContrastTable:
        V, Vc = batch.n_views, batch.candidate_views
        row_instance, row_view, cand_view, own, pos = _stacked_masks(batch, V)
        most_positives = Vc if V > Vc else Vc - 1
        return ContrastTable(
            sim=torch.cat(batch.views) @ _candidates(batch).T,
            pos=pos,
            neg=~(pos | own),
            direction=row_view,
            n_directions=V,
            row_instance=row_instance,
            cand_view=cand_view,
            nominal_negatives=Vc * (batch.U.shape[0] - 1),
            positives_in_denominator=most_positives > 1,
        )

    def block_plan(self, batch: Batch) -> Plan:
        tensors = TensorIndex()
        groups = stacked_groups(batch, tensors, batch.n_views)
        Vc = batch.candidate_views
        most_positives = Vc if batch.n_views > Vc else Vc - 1
        return Plan(tensors.items, groups, batch.n_views, Vc * (batch.U.shape[0] - 1), most_positives > 1)


class CrossViewLayout(Layout):
    """Cross-view (CPC/CLIP) layout: anchor ``u_i`` against every ``v_j``; positive ``j = i``.

    Args:
        direction: ``"u->v"`` (rows ``u_i``), ``"v->u"`` (rows ``v_i``) or ``"symmetric"`` (both).
        hard_negative_weight: ``log alpha``, added to the logit of each anchor's own extra negative
            (supervised SimCSE's ``--hard_negative_weight``). Extra negatives, when given, are negatives
            of every row.
    """

    accepts_negatives = True
    DIRECTIONS = ("u->v", "v->u", "symmetric")

    def __init__(self, direction: str = "u->v", hard_negative_weight: float = 0.0) -> None:
        super().__init__()
        self.direction = check_choice("direction", direction, self.DIRECTIONS)
        self.hard_negative_weight = float(hard_negative_weight)

    def forward(self, batch: Batch) -> ContrastTable:
        B, G = batch.u.shape[0], batch.U.shape[0]
        local = _arange(B, batch.u) + batch.start
        blocks = (
            [batch.U, batch.V] if self.direction == "symmetric" else [batch.V if self.direction == "u->v" else batch.U]
        )
        views = [U_VIEW, V_VIEW] if self.direction == "symmetric" else [V_VIEW if self.direction == "u->v" else U_VIEW]
        extra = batch.negatives
        candidates = torch.cat(blocks + ([extra] if extra is not None else []))
        cand_view = torch.cat(
            [torch.full((G,), view, device=local.device) for view in views]
            + ([torch.full((extra.shape[0],), EXTRA_VIEW, device=local.device)] if extra is not None else [])
        )
        row_dirs = {"u->v": [("u", V_VIEW)], "v->u": [("v", U_VIEW)], "symmetric": [("u", V_VIEW), ("v", U_VIEW)]}
        anchors, allowed, pos_cols, own_negative_cols = [], [], [], []
        for anchor_view, target_view in row_dirs[self.direction]:
            anchors.append(batch.u if anchor_view == "u" else batch.v)
            block_start = views.index(target_view) * G
            allowed.append((cand_view == target_view) | (cand_view == EXTRA_VIEW))
            pos_cols.append(local + block_start)
            own_negative_cols.append(local + len(views) * G)
        R, C = B * len(anchors), candidates.shape[0]
        pos = _one_hot_mask(R, C, torch.cat(pos_cols))
        neg = torch.cat([a.expand(B, C) for a in allowed]) & ~pos
        offset = None
        if extra is not None and self.hard_negative_weight != 0.0:
            offset = torch.zeros(R, C, dtype=candidates.dtype, device=candidates.device)
            offset[_arange(R, local), torch.cat(own_negative_cols)] = self.hard_negative_weight
        return ContrastTable(
            sim=torch.cat(anchors) @ candidates.T,
            pos=pos,
            neg=neg,
            direction=torch.cat([torch.full_like(local, k) for k in range(len(anchors))]),
            n_directions=len(anchors),
            row_instance=local.repeat(len(anchors)),
            cand_view=cand_view,
            nominal_negatives=2 * G - 2,
            offset=offset,
        )

    def block_plan(self, batch: Batch) -> Plan:
        tensors = TensorIndex()
        G, extra = batch.U.shape[0], batch.negatives
        directions = {"u->v": [(batch.u, batch.V, U_VIEW)], "v->u": [(batch.v, batch.U, V_VIEW)]}.get(
            self.direction, [(batch.u, batch.V, U_VIEW), (batch.v, batch.U, V_VIEW)]
        )
        use_offset = extra is not None and self.hard_negative_weight != 0.0
        groups = []
        for k, (local, target, view) in enumerate(directions):
            other = V_VIEW if view == U_VIEW else U_VIEW
            segments = [Segment(tensors.index(target), 0, G, other)]
            if extra is not None:
                segments.append(Segment(tensors.index(extra), 0, extra.shape[0], EXTRA_VIEW))
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
                    positive_views=(other,),
                    pos_cols=(batch.start,),
                    offset_col=G + batch.start if use_offset else None,
                    offset=self.hard_negative_weight,
                )
            )
        return Plan(tensors.items, groups, len(groups), 2 * G - 2)


class LabelLayout(Layout):
    """Supervised layout over the stacked views ``[Z^1; ..; Z^Vc]`` with positives from labels.

    Args:
        anchors: ``"all"`` (every view, SupCon's ``contrast_mode="all"``) or ``"one"`` (the first view only).
        positives: ``"labels"`` (every other row of the same class) or ``"augmentation"`` (the other views
            of the row's instance only).
        negatives: ``"others"`` (every non-self, non-positive row: SupCon's denominator) or
            ``"other_labels"`` (rows of a different class: SCL/H-SCL).
    Without labels (and without ``positive_mask``) the positives are the other views of the instance.
    Any number of views (SupContrast's features ``[bsz, n_views, d]``).
    """

    accepts_labels = True
    max_views = None

    def __init__(self, anchors: str = "all", positives: str = "labels", negatives: str = "others") -> None:
        super().__init__()
        self.anchors = check_choice("contrast_mode", anchors, ("all", "one"))
        self.positives = check_choice("positives", positives, ("labels", "augmentation"))
        self.negatives = check_choice("negatives", negatives, ("others", "other_labels"))
        self.requires_labels = negatives == "other_labels"

    def anchor_views(self, batch: Batch) -> int:
        return batch.n_views if self.anchors == "all" else 1

    def forward(self, batch: Batch) -> ContrastTable:
        views = self.anchor_views(batch)
        row_instance, _, cand_view, own, partner = _stacked_masks(batch, views)
        cand_instance = _arange(batch.U.shape[0], row_instance).repeat(batch.candidate_views)
        same_class = None
        if batch.positive_mask is not None:
            same_class = batch.positive_mask[row_instance][:, cand_instance] | (row_instance[:, None] == cand_instance)
        elif batch.labels is not None:
            same_class = batch.labels[row_instance][:, None] == batch.labels[cand_instance][None, :]
        if self.positives == "labels" and same_class is not None:
            pos = same_class & ~own
        else:
            pos = partner
        neg = ~own & ~pos if self.negatives == "others" else ~same_class
        return ContrastTable(
            sim=torch.cat(batch.views[:views]) @ _candidates(batch).T,
            pos=pos,
            neg=neg,
            direction=torch.zeros_like(row_instance),
            n_directions=1,
            row_instance=row_instance,
            cand_view=cand_view,
            nominal_negatives=batch.candidate_views * (batch.U.shape[0] - 1),
        )

    def block_plan(self, batch: Batch) -> Plan | str:
        if batch.positive_mask is not None:
            return "positive_mask (an instance-level (N, N) mask) is only supported by the dense path"
        if self.negatives == "other_labels" and batch.labels is None:
            return "label-aware negatives need labels"
        tensors = TensorIndex()
        views = self.anchor_views(batch)
        if batch.labels is None:
            groups = stacked_groups(batch, tensors, views, negatives=self.negatives)
        else:
            groups = label_groups(batch, tensors, views, self.positives == "augmentation", self.negatives)
        for g in groups:
            g.direction = 0  # one direction group: SupCon and SCL average over all anchors
        return Plan(tensors.items, groups, 1, batch.candidate_views * (batch.U.shape[0] - 1))


class WithinViewLayout(Layout):
    """DHEL layout: anchor ``u_i`` has positive ``v_i`` and only same-view negatives ``u_j``.

    With ``include_second_view`` a second group of rows ``v_i`` carries the second view's energy
    (negatives ``v_j``, no positive); the loss adds the two groups (direction reduction ``"sum"``).
    """

    def __init__(self, include_second_view: bool = True) -> None:
        super().__init__()
        self.include_second_view = bool(include_second_view)

    def forward(self, batch: Batch) -> ContrastTable:
        B, G = batch.u.shape[0], batch.U.shape[0]
        local = _arange(B, batch.u) + batch.start
        groups = 2 if self.include_second_view else 1
        anchors = torch.cat([batch.u, batch.v][:groups])
        candidates = torch.cat([batch.U, batch.V])
        cand_view = torch.cat([torch.full((G,), U_VIEW), torch.full((G,), V_VIEW)]).to(local.device)
        R, C = anchors.shape[0], 2 * G
        row_view = torch.cat([torch.full_like(local, U_VIEW), torch.full_like(local, V_VIEW)][:groups])
        self_col = torch.cat([local, local + G][:groups])
        pos = _one_hot_mask(R, C, torch.cat([local + G, local])[:R]) & (row_view == U_VIEW)[:, None]
        neg = (row_view[:, None] == cand_view[None, :]) & ~_one_hot_mask(R, C, self_col)
        return ContrastTable(
            sim=anchors @ candidates.T,
            pos=pos,
            neg=neg,
            direction=row_view,
            n_directions=groups,
            row_instance=local.repeat(groups),
            cand_view=cand_view,
            nominal_negatives=2 * G - 2,
        )

    def block_plan(self, batch: Batch) -> Plan:
        tensors, G = TensorIndex(), batch.U.shape[0]
        groups = []
        for k, (local, full) in enumerate([(batch.u, batch.U), (batch.v, batch.V)][: 1 + self.include_second_view]):
            groups.append(
                RowGroup(
                    tensor=tensors.index(local),
                    start=0,
                    stop=local.shape[0],
                    segments=[Segment(tensors.index(full), 0, G, k)],
                    direction=k,
                    first_row=k * local.shape[0],
                    instance_start=batch.start,
                    view=k,
                    positive_views=(V_VIEW,) if k == U_VIEW else (),
                    self_col=batch.start,
                )
            )
        return Plan(tensors.items, groups, len(groups), 2 * G - 2)


class QueueLayout(Layout):
    """MoCo-style layout: query ``u_i`` against its key ``v_i`` and a FIFO queue of past keys.

    The queue holds detached keys of earlier batches (gathered from every process); it is filled
    from empty, so the first calls use fewer negatives, and updated after each training-mode call.
    With ``batch_negatives=False`` (MoCo proper) the very first call has no negatives and raises.

    Args:
        size: number of queued keys ``K``.
        dim: embedding dimension ``d``.
        batch_negatives: also use the other keys of the current batch as negatives (default).
    """

    def __init__(self, size: int = 4096, dim: int = 128, batch_negatives: bool = True) -> None:
        super().__init__()
        if int(size) < 1 or int(dim) < 1:
            raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}")
        self.batch_negatives = bool(batch_negatives)
        self.register_buffer("queue", torch.zeros(int(size), int(dim)))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def forward(self, batch: Batch) -> ContrastTable:
        B, G, d = batch.u.shape[0], batch.U.shape[0], batch.u.shape[1]
        if d != self.queue.shape[1]:
            raise ValueError(f"QueueLayout was built with dim={self.queue.shape[1]} but embeddings have d={d}")
        local = _arange(B, batch.u) + batch.start
        queued = self.queue[: int(self.filled)].to(batch.V.dtype)
        candidates = torch.cat([batch.V, queued])
        C = candidates.shape[0]
        pos = _one_hot_mask(B, C, local)
        in_queue = _arange(C, local) >= G
        neg = (in_queue | torch.tensor(self.batch_negatives, device=local.device))[None, :].expand(B, C) & ~pos
        table = ContrastTable(
            sim=batch.u @ candidates.T,
            pos=pos,
            neg=neg,
            direction=torch.zeros_like(local),
            n_directions=1,
            row_instance=local,
            cand_view=torch.where(in_queue, EXTRA_VIEW, V_VIEW),
            nominal_negatives=2 * G - 2,
        )
        self.update(batch)
        return table

    def block_plan(self, batch: Batch) -> Plan | str:
        if not self.batch_negatives:
            return "QueueLayout(batch_negatives=False) is only supported by the dense path"
        if batch.u.shape[1] != self.queue.shape[1]:
            return "the queue's dimension differs from the embeddings' (the dense path raises the error)"
        tensors = TensorIndex()
        keys = torch.cat([batch.V, self.queue[: int(self.filled)].to(batch.V.dtype)])
        group = RowGroup(
            tensor=tensors.index(batch.u),
            start=0,
            stop=batch.u.shape[0],
            segments=[Segment(tensors.index(keys), 0, keys.shape[0], V_VIEW)],
            direction=0,
            first_row=0,
            instance_start=batch.start,
            view=U_VIEW,
            positive_views=(V_VIEW,),
            pos_cols=(batch.start,),
        )
        return Plan(tensors.items, [group], 1, 2 * batch.U.shape[0] - 2)

    @torch.no_grad()
    def update(self, batch: Batch) -> None:
        """In training mode, the keys of this call join the queue (the oldest leave)."""
        if not self.training:
            return
        keys = batch.V.detach()
        size = self.queue.shape[0]
        keys = keys[-size:]
        index = (self.pointer + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[index] = keys.to(self.queue.dtype)
        self.pointer.copy_((self.pointer + keys.shape[0]) % size)
        self.filled.copy_(torch.clamp(self.filled + keys.shape[0], max=size))


def as_layout(layout: Layout | str | dict | None, default: type[Layout] = None) -> Layout:
    """A layout from an object, a registered name, or a ``{"name": ..., **options}`` dict (configs)."""
    if layout is None:
        return default()
    if isinstance(layout, Layout):
        return layout
    options = dict(layout) if isinstance(layout, dict) else {"name": layout}
    name = options.pop("name", None)
    if name not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)} (or a Layout object), got {name!r}")
    return construct("layout", LAYOUTS[name], options)


LAYOUTS = {
    "two_view": TwoViewLayout,
    "cross_view": CrossViewLayout,
    "labels": LabelLayout,
    "within_view": WithinViewLayout,
    "queue": QueueLayout,
}
