"""From a :class:`~losses.core.ContrastiveLoss` and a batch to the blockwise computation and back.

The layout describes its table as a plan (:meth:`~losses.parts.layouts.Layout.block_plan`) and the
temperature rule says its form (``per_entry``, :meth:`~losses.parts.temperature.TemperatureRule.
blockwise_unsupported`): the engine reads only the plan and the parts' protocols, never their types.

Everything that is not per block is done here, in ``O((R + C) d)``: the temperature (MACL's from the
detached alignment), row counts from index arithmetic and label counts (never from masks), then the row
validity, reduction weights and diagnostics of :mod:`mmcl.losses.rows` (the dense path's definitions),
DCLW weights, gradient-scaling factors and the decoupled objectives' positive term (with autograd,
outside the Function: it is a row-wise dot product).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from mmcl.losses.batch import Batch
from mmcl.losses.blockwise import symmetric
from mmcl.losses.blockwise.function import BlockRunner, BlockwiseLoss
from mmcl.losses.blockwise.kernel import GroupState, Kernel
from mmcl.losses.blockwise.plan import Plan, RowGroup
from mmcl.losses.rows import RowCounts, diagnostics

# Automatic selection: the blockwise path is used when the (anchors x candidates) table would have at
# least this many entries. Below it both paths take well under a millisecond.
MIN_ENTRIES = 1 << 16
# Default block: as many rows as fit in BLOCK_ENTRIES table entries (64 MiB of float32), at most
# MAX_BLOCK_ROWS. Each block rewrites the whole candidate gradient (C x d) once, so blocks of fewer than a
# few hundred rows are slow for large d (measured at N = 4096, d = 768: 1.54x the matmul floor with 128
# rows, 1.02x with 1024); the cap keeps small batches in several blocks.
BLOCK_ENTRIES = 1 << 24
MAX_BLOCK_ROWS = 1 << 10
MIN_BLOCK_ROWS = 8
# Tile side of the self-similarity path (:mod:`mmcl.losses.blockwise.symmetric`): 2^20-entry square tiles.
TILE_ROWS = 1 << 10


def table_entries(batch: Batch) -> int:
    """Upper bound on the entries of the dense table, ``V B x Vc G`` (no allocation)."""
    return batch.n_views * batch.u.shape[0] * batch.candidate_views * batch.U.shape[0]


def unsupported(loss, plan: Plan | str) -> str | None:
    """Why ``loss`` cannot take the blockwise path with ``plan`` (None when it can). No side effects."""
    if isinstance(plan, str):
        return plan
    reason = loss.temperature.blockwise_unsupported()
    if reason is not None:
        return reason
    weighting = loss.negative_weighting
    beta = weighting.current_beta
    if weighting.split_views and (beta != 0.0 or weighting.count == "nominal"):
        return "split negative sums with a tilt or the nominal count are only supported by the dense path"
    if beta != 0.0 and plan.has_offsets:
        return "a tilt (beta > 0) with hard-negative logit offsets is only supported by the dense path"
    if loss.positives_in_denominator and not fusable(loss, plan):
        return "positives_in_denominator with parts other than plain negatives is only supported by the dense path"
    if loss.objective == "decoupled" and loss.reduction == "pairs":
        return "the decoupled objective with reduction='pairs' is only supported by the dense path"
    if loss.objective == "decoupled" and plan.label_positives:
        return "the decoupled objective with label positives is only supported by the dense path"
    if loss.objective == "coupled" and plan.positives_outside_columns:
        return "the coupled objective on the within-view layout is only supported by the dense path"
    if loss.gradient_scaling is not None and plan.label_positives:
        return "gradient scaling with several positives per anchor is only supported by the dense path"
    return None


def fusable(loss, plan: Plan) -> bool:
    """Whether the fused softmax form computes this loss (see :mod:`mmcl.losses.blockwise.kernel`): plain
    negatives, one denominator per row (every column but the own), the row loss the mean of its terms."""
    weighting = loss.negative_weighting
    plain = (
        loss.objective == "coupled"
        and weighting.current_beta == 0.0
        and not weighting.debiases
        and not weighting.split_views
        and weighting.count == "actual"
        and (loss.margin is None or loss.margin.is_identity)
        and loss.gradient_scaling is None
    )
    if not plain or plan.has_offsets or plan.positives_outside_columns:
        return False
    if any(g.negatives != "others" for g in plan.groups):
        return False
    if plan.label_positives:
        return loss.positives_in_denominator and loss.reduction == "anchors"
    several = any(g.n_positive_columns > 1 for g in plan.groups)
    return not several or loss.positives_in_denominator or plan.positives_in_denominator


def select(loss, batch: Batch) -> Plan | None:
    """The plan when this call of ``loss`` takes the blockwise path: ``loss.blockwise`` is True, or None and
    the table has at least :data:`MIN_ENTRIES` entries; and the configuration is supported (with
    ``blockwise=True``, an unsupported one warns once per loss object)."""
    if loss.blockwise is False or (loss.blockwise is None and table_entries(batch) < MIN_ENTRIES):
        return None
    plan = loss.layout.block_plan(batch)
    reason = unsupported(loss, plan)
    if reason is not None and loss.blockwise and not getattr(loss, "_warned_blockwise", False):
        warnings.warn(f"{loss.name}: blockwise=True but {reason}; using the dense path", stacklevel=5)
        loss._warned_blockwise = True
    return plan if reason is None else None


def compute(loss, batch: Batch, plan: Plan) -> Tensor:
    """The loss of ``batch`` through the blockwise path (``plan`` from :func:`select`)."""
    dtype, device = batch.u.dtype, batch.u.device
    rows = PlanRows.of(plan, batch)
    valid = rows.counts.valid(loss)
    rule = loss.temperature
    scoped_cos, _ = loss.scoped_pair_cos(batch, rule.batch_stat_scope)
    tau = None if rule.per_entry else rule(torch.zeros((), dtype=dtype, device=device), scoped_cos)
    coef = rows.counts.coefficients(loss, valid).to(dtype)
    # With autograd only where the positives' cosines enter the loss outside the Function.
    with torch.set_grad_enabled(torch.is_grad_enabled() and (loss.objective == "decoupled")):
        pair_cos = positive_cosines(plan, batch)
    kernel = Kernel(loss, plan, tau, coef, valid, rows.counts, fusable(loss, plan), loss.compute_diagnostics)
    kernel.pair_cos = [c.detach() for c in pair_cos]
    if loss.gradient_scaling is not None:
        kernel.pos_factor = _positive_factors(loss, pair_cos)
    extra: dict[str, Tensor] = {}
    value = 0.0
    if loss.objective == "decoupled":
        value = _decoupled_positive_term(loss, batch, plan, pair_cos, kernel, extra)
    states = [_group_state(g, plan, rows, kernel.diagnostics) for g in plan.groups]
    z_index = symmetric.self_similar_tensor(plan, kernel)
    shift = symmetric.one_shift(plan.tensors[z_index], kernel) if z_index is not None else None
    if shift is not None:
        runner = symmetric.SymmetricRunner(kernel, z_index, loss.block_size or TILE_ROWS, shift)
    else:
        fit = BLOCK_ENTRIES // max(s.columns for s in states)
        block_rows = loss.block_size or max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, fit))
        runner = BlockRunner(plan, kernel, states, block_rows)
    value = value + BlockwiseLoss.apply(runner, *plan.tensors)
    loss.layout.update(batch)
    if kernel.diagnostics:
        _plan_statistics(kernel, plan, states, rows)
        loss.diagnostics = diagnostics(loss, rows.counts, valid, kernel.stats, extra, dtype)
    return loss.loss_scale * value


@dataclass
class PlanRows:
    """Per-row counts of a plan's table, in its row order, from index arithmetic and label counts."""

    counts: RowCounts
    classes: Tensor | None  # sorted class ids (labels map to 0 .. k-1), when a group has labels

    @classmethod
    def of(cls, plan: Plan, batch: Batch) -> PlanRows:
        device = batch.u.device
        classes = None
        if batch.labels is not None and any(g.labels is not None for g in plan.groups):
            classes = torch.unique(batch.labels)
        n_pos, n_neg, direction, order = [], [], [], []
        for g in plan.groups:
            same = _same_class_count(g, classes) if g.labels is not None and classes is not None else None
            if g.has_positive_columns:
                pos = in_columns = torch.full((g.rows,), g.n_positive_columns, dtype=torch.long, device=device)
            elif same is not None:
                pos = in_columns = same - int(g.has_self)
            else:  # positives outside the columns (the within-view table), or none
                pos = torch.full((g.rows,), int(g.pair_positive), dtype=torch.long, device=device)
                in_columns = 0
            neg = g.columns - same if g.negatives == "other_labels" else g.columns - int(g.has_self) - in_columns
            n_pos.append(pos)
            n_neg.append(torch.as_tensor(neg, device=device).expand(g.rows))
            direction.append(torch.full((g.rows,), g.direction, dtype=torch.long, device=device))
            order.append(g.row_order if g.row_order is not None else torch.arange(g.rows, device=device) + g.first_row)
        counts = RowCounts(
            torch.cat(n_pos), torch.cat(n_neg), torch.cat(direction), plan.n_directions, torch.cat(order)
        )
        return cls(counts, classes)

    def group_ids(self, g: RowGroup) -> tuple[Tensor, Tensor]:
        """Class ids (0..k-1) of the group's rows and columns."""
        return _class_ids(g, self.classes)


def _class_ids(g: RowGroup, classes: Tensor) -> tuple[Tensor, Tensor]:
    return torch.searchsorted(classes, g.labels), torch.searchsorted(classes, g.column_labels())


def _same_class_count(g: RowGroup, classes: Tensor) -> Tensor:
    """Number of candidate columns of each row's class (its own column and other views included)."""
    rows, cols = _class_ids(g, classes)
    return torch.bincount(cols, minlength=classes.numel())[rows]


def positive_cosines(plan: Plan, batch: Batch) -> list[Tensor]:
    """Per group, the cosines ``(rows, K)`` of each row with its same-instance positives: the positive columns'
    candidates (any row order, any process), or the other views of a table whose positives are not
    candidates. Label positives are not listed (``K = 0``)."""
    out = []
    for g in plan.groups:
        q = plan.tensors[g.tensor][g.start : g.stop]
        if g.pos_index is not None:
            keys = [_candidate_rows(plan, g, g.pos_index[:, k]) for k in range(g.n_positive_columns)]
        elif g.pos_cols:  # row j's positive is column c + j: a slice of one segment
            keys = [_candidate_rows(plan, g, slice(c, c + g.rows)) for c in g.pos_cols]
        elif g.pair_positive and g.labels is None:
            q, keys = batch.views[g.view], [batch.views[b] for b in g.positive_views]
        else:
            keys = []
        out.append(torch.stack([(q * k).sum(-1) for k in keys], 1) if keys else q.new_zeros(g.rows, 0))
    return out


def _candidate_rows(plan: Plan, g: RowGroup, columns: Tensor | slice) -> Tensor:
    """The candidate embeddings of ``columns`` (indices or a slice, all within one segment, as every row's
    k-th positive column is)."""
    first, at = int(columns.start if isinstance(columns, slice) else columns[0]), 0
    for s in g.segments:
        if at <= first < at + s.size:
            rows = plan.tensors[s.tensor]
            if isinstance(columns, slice):
                return rows[s.start + columns.start - at : s.start + columns.stop - at]
            return rows[s.start + columns - at]
        at += s.size
    raise IndexError(f"column {first} is outside the group's {at} columns")


def _positive_factors(loss, pair_cos: list[Tensor]) -> Tensor:
    """Gradient-scaling factors of every row's (single) positive, once for the batch: with
    ``angle_normalise`` they are divided by their batch mean. Rows without a positive get 1."""
    cos = torch.cat([c.detach() for c in pair_cos if c.shape[1]])[:, 0]
    factor = loss.gradient_scaling.positive_factor(cos)
    has = torch.cat([torch.full((c.shape[0],), c.shape[1] > 0, device=cos.device) for c in pair_cos])
    out = torch.ones(has.shape, dtype=cos.dtype, device=cos.device)
    out[has] = factor
    return out


def _decoupled_positive_term(loss, batch, plan, pair_cos: list[Tensor], kernel: Kernel, extra) -> Tensor:
    """``sum_a c_a mean_p (-w_a psi(s_ap) / tau_ap)`` over the rows with same-instance positives, with autograd:
    row-wise dot products, so it stays outside the Function. Also the positives' diagnostics the kernel
    cannot see."""
    rule, value = kernel.rule, 0.0
    weights = None
    if loss.positive_weights is not None:
        scoped, offset = loss.scoped_pair_cos(batch, loss.positive_weights.batch_stat_scope)
        instances = torch.cat([torch.arange(g.rows, device=scoped.device) + g.instance_start for g in plan.groups])
        weights = loss.positive_weights(scoped)[instances - offset]
        extra["pos_weight_min"], extra["pos_weight_max"] = weights.min(), weights.max()
    for g, cos in zip(plan.groups, pair_cos):
        if not cos.shape[1]:
            continue
        rows = slice(g.first_row, g.first_row + g.rows)
        pos_tau = kernel.tau if rule is None else rule.tau_of(cos.detach())
        factor = kernel.pos_factor[rows, None] if kernel.pos_factor is not None else None
        _, logit = loss.positive_logit(cos, pos_tau, factor)
        weight = weights[rows, None] if weights is not None else 1.0
        terms = (-weight * logit).mean(1)
        value = value + (torch.where(kernel.valid[rows], terms, 0) * kernel.row_coef[rows]).sum()
        if kernel.diagnostics:
            kernel.stats.rows["best_pos"][rows] = logit.detach().amax(1)
            if rule is not None and not g.has_positive_columns:
                kernel.stats.tau_values(pos_tau.flatten())  # positives the kernel never sees
    extra["align_term"] = value.detach() if isinstance(value, Tensor) else torch.tensor(0.0)
    return value


def _group_state(g: RowGroup, plan: Plan, rows: PlanRows, diagnostics: bool) -> GroupState:
    ranges, col = [], 0
    for s in g.segments:
        ranges.append((col, col + s.size))
        col += s.size
    state = GroupState(group=g, columns=col, view_ranges=ranges)
    if g.labels is not None and rows.classes is not None:
        state.row_labels, state.col_labels = rows.group_ids(g)
        k = rows.classes.numel()
        # Sorted by class: each class is one column range per segment and the rows come in class runs.
        per_class: list[list[tuple[int, int]]] = [[] for _ in range(k)]
        for (c0, _), s in zip(ranges, g.segments):
            counts = torch.bincount(torch.searchsorted(rows.classes, s.labels), minlength=k).tolist()
            at = c0
            for y, count in enumerate(counts):
                if count:
                    per_class[y].append((at, at + count))
                at += count
        state.class_ranges = per_class
        values, counts = torch.unique_consecutive(state.row_labels, return_counts=True)
        stops = counts.cumsum(0).tolist()
        state.row_runs = [(b - c, b, y) for b, c, y in zip(stops, counts.tolist(), values.tolist())]
    if diagnostics:
        keys = [plan.tensors[s.tensor][s.start : s.stop].detach() for s in g.segments]
        state.col_sum = sum(k.sum(0) for k in keys)
        if state.col_labels is not None:
            d = keys[0].shape[1]
            state.class_sum = (
                keys[0].new_zeros(rows.classes.numel(), d).index_add_(0, state.col_labels, torch.cat(keys))
            )
    return state


def _plan_statistics(kernel: Kernel, plan: Plan, states: list[GroupState], rows: PlanRows) -> None:
    """The statistics the blocks leave out: the same-instance positives' cosines (row-wise dot products)
    and the sum of the negative cosines (from column sums)."""
    stats = kernel.stats
    for g, cos in zip(plan.groups, kernel.pair_cos):
        if cos.shape[1] and (g.has_positive_columns or g.labels is None):
            stats.add("pos_cos", cos.sum())
            stats.low("pos_cos_min", cos.min())
    stats.add("neg_cos", sum(_negative_cosine_sum(plan, s, cos) for s, cos in zip(states, kernel.pair_cos)))


def _negative_cosine_sum(plan: Plan, state: GroupState, pair_cos: Tensor) -> Tensor:
    """Sum of a group's negative cosines without the table: ``q . sum_c k_c`` minus the excluded entries
    (the class's columns, or the own and the positive columns, whose cosines are ``pair_cos``)."""
    g = state.group
    q = plan.tensors[g.tensor][g.start : g.stop].detach()
    total = q @ state.col_sum
    if state.class_sum is not None and (not g.has_positive_columns or g.negatives == "other_labels"):
        total = total - (q * state.class_sum[state.row_labels]).sum(1)
    else:
        if g.has_self:
            total = total - (q * q).sum(1)
        if g.has_positive_columns:
            total = total - pair_cos.sum(1)
    return total.sum()
