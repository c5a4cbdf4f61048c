"""Batch layouts: which rows are anchors, which candidates are their positives and negatives.

A layout turns the (normalised, possibly gathered) embeddings of a batch into a
:class:`ContrastTable`: the cosine matrix between the local anchor rows and the candidate columns,
a positive mask and a disjoint negative mask (entries in neither, such as self-similarity, are
excluded), plus per-row and per-candidate tags used by the later stages.

Shapes, with ``B`` local pairs, ``G`` pairs in the global batch (``G = B`` on one process):

=======================  ======================  ==========================================
layout                   anchors ``R``           candidates ``C``
=======================  ======================  ==========================================
:class:`TwoViewLayout`   ``2B`` (both views)     ``2G``: ``[U; V]``
:class:`CrossViewLayout` ``B`` or ``2B``         ``[V]`` / ``[U; V]`` (+ ``G`` hard negatives)
:class:`LabelLayout`     ``2B`` or ``B``         ``2G``: ``[U; V]``
:class:`WithinViewLayout` ``B`` or ``2B``        ``2G``: ``[U; V]``
:class:`QueueLayout`     ``B``                   ``G + K`` (keys, then the queue)
=======================  ======================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmcl.losses.checks import check_choice, construct

U_VIEW, V_VIEW, EXTRA_VIEW = 0, 1, 2


@dataclass
class Batch:
    """Normalised embeddings of one call: local rows and the global batch they belong to."""

    u: Tensor  # (B, d) local first view
    v: Tensor  # (B, d) local second view
    U: Tensor  # (G, d) global first view (gathered with gradient; ``u`` itself on one process)
    V: Tensor  # (G, d)
    start: int  # index of the first local instance in the global batch
    labels: Tensor | None = None  # (G,) global labels, same order as U and V
    negatives: Tensor | None = None  # (G, d) global extra negatives
    positive_mask: Tensor | None = None  # (G, G) bool, instance-level positives (SupCon's ``mask``)

    @property
    def local(self) -> slice:
        return slice(self.start, self.start + self.u.shape[0])

    @property
    def pair_cos(self) -> Tensor:
        """Detached cosine of every positive pair of the global batch, ``u_i . v_i``, shape (G,)."""
        return (self.U * self.V).sum(-1).detach()


@dataclass
class ContrastTable:
    sim: Tensor  # (R, C) cosines of anchors against candidates
    pos: Tensor  # (R, C) bool positive entries
    neg: Tensor  # (R, C) bool negative entries, disjoint from ``pos``
    direction: Tensor  # (R,) long direction group of each anchor row (reduced by mean or sum)
    n_directions: int
    row_instance: Tensor  # (R,) long global instance index of each anchor row
    cand_view: Tensor  # (C,) long view of each candidate: U_VIEW, V_VIEW or EXTRA_VIEW
    nominal_negatives: int  # 2G - 2, the negative count of the NT-Xent layout (H-SCL's fixed N)
    offset: Tensor | None = None  # (R, C) additive logit offsets


def _arange(n: int, like: Tensor) -> Tensor:
    return torch.arange(n, device=like.device)


def _one_hot_mask(rows: int, cols: int, col_index: Tensor) -> Tensor:
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=col_index.device)
    mask[_arange(rows, col_index), col_index] = True
    return mask


class Layout(nn.Module):
    """Base class. Subclasses set what inputs they accept and implement :meth:`forward`."""

    accepts_labels = False
    requires_labels = False
    accepts_negatives = False

    def forward(self, batch: Batch) -> ContrastTable:  # pragma: no cover - interface
        raise NotImplementedError


class TwoViewLayout(Layout):
    """NT-Xent layout: all ``2B`` rows are anchors; positive ``pos(k)``; negatives every other row."""

    def forward(self, batch: Batch) -> ContrastTable:
        B, G = batch.u.shape[0], batch.U.shape[0]
        local = _arange(B, batch.u) + batch.start
        anchors = torch.cat([batch.u, batch.v])
        candidates = torch.cat([batch.U, batch.V])
        self_col = torch.cat([local, local + G])
        pos_col = torch.cat([local + G, local])
        pos = _one_hot_mask(2 * B, 2 * G, pos_col)
        neg = ~(pos | _one_hot_mask(2 * B, 2 * G, self_col))
        return ContrastTable(
            sim=anchors @ candidates.T,
            pos=pos,
            neg=neg,
            direction=torch.cat([torch.zeros_like(local), torch.ones_like(local)]),
            n_directions=2,
            row_instance=torch.cat([local, local]),
            cand_view=torch.cat(
                [torch.full_like(_arange(G, local), U_VIEW), torch.full_like(_arange(G, local), V_VIEW)]
            ),
            nominal_negatives=2 * G - 2,
        )


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


class LabelLayout(Layout):
    """Supervised layout over the stacked batch ``[U; V]`` with positives from labels.

    Args:
        anchors: ``"all"`` (both views, SupCon's ``contrast_mode="all"``) or ``"one"`` (first view only).
        positives: ``"labels"`` (every other row of the same class) or ``"augmentation"`` (the partner only).
        negatives: ``"others"`` (every non-self, non-positive row: SupCon's denominator) or
            ``"other_labels"`` (rows of a different class: SCL/H-SCL).
    Without labels (and without ``positive_mask``) the positives are the augmentation partners.
    """

    accepts_labels = True

    def __init__(self, anchors: str = "all", positives: str = "labels", negatives: str = "others") -> None:
        super().__init__()
        self.anchors = check_choice("contrast_mode", anchors, ("all", "one"))
        self.positives = check_choice("positives", positives, ("labels", "augmentation"))
        self.negatives = check_choice("negatives", negatives, ("others", "other_labels"))
        self.requires_labels = negatives == "other_labels"

    def forward(self, batch: Batch) -> ContrastTable:
        B, G = batch.u.shape[0], batch.U.shape[0]
        local = _arange(B, batch.u) + batch.start
        candidates = torch.cat([batch.U, batch.V])
        views = 2 if self.anchors == "all" else 1
        anchors = torch.cat([batch.u, batch.v][:views])
        row_instance = local.repeat(views)
        cand_instance = _arange(G, local).repeat(2)
        self_col = torch.cat([local, local + G][:views])
        partner_col = torch.cat([local + G, local][:views])
        R, C = anchors.shape[0], 2 * G
        not_self = ~_one_hot_mask(R, C, self_col)
        partner = _one_hot_mask(R, C, partner_col)
        same_class = None
        if batch.positive_mask is not None:
            same_class = batch.positive_mask[row_instance][:, cand_instance] | (row_instance[:, None] == cand_instance)
        elif batch.labels is not None:
            same_class = batch.labels[row_instance][:, None] == batch.labels[cand_instance][None, :]
        if self.positives == "labels" and same_class is not None:
            pos = same_class & not_self
        else:
            pos = partner
        if self.negatives == "others":
            neg = not_self & ~pos
        else:
            neg = ~same_class
        return ContrastTable(
            sim=anchors @ candidates.T,
            pos=pos,
            neg=neg,
            direction=torch.zeros_like(row_instance),
            n_directions=1,
            row_instance=row_instance,
            cand_view=torch.cat([torch.full((G,), U_VIEW), torch.full((G,), V_VIEW)]).to(local.device),
            nominal_negatives=2 * G - 2,
        )


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
        if self.training:
            self._enqueue(batch.V.detach())
        return table

    @torch.no_grad()
    def _enqueue(self, keys: Tensor) -> None:
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
