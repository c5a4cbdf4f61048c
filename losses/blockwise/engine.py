"""From a :class:`~losses.core.ContrastiveLoss` and a batch to the blockwise computation and back.

Everything that is not per block is done here, in ``O((R + C) d)``: the temperature (MACL's from the
detached alignment), row validity, negative counts and reduction weights (from label counts, never
from masks), DCLW weights, gradient-scaling factors, the decoupled objectives' positive term (with
autograd, outside the Function: it is a row-wise dot product) and the final diagnostics.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from mmcl.losses import distributed
from mmcl.losses.blockwise import symmetric
from mmcl.losses.blockwise.function import BlockRunner, BlockwiseLoss
from mmcl.losses.blockwise.kernel import GroupState, Kernel
from mmcl.losses.blockwise.plan import Plan, RowGroup, build_plan
from mmcl.losses.parts.layouts import (
    Batch,
    CrossViewLayout,
    LabelLayout,
    QueueLayout,
    TwoViewLayout,
    WithinViewLayout,
)
from mmcl.losses.parts.temperature import AdaptiveTemperature, DynamicTemperature, FixedTemperature

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
    """Upper bound on the entries of the dense table, ``2B x 2G`` (no allocation)."""
    return 4 * batch.u.shape[0] * batch.U.shape[0]


def unsupported(loss, batch: Batch) -> str | None:
    """Why ``loss`` cannot take the blockwise path on ``batch`` (None when it can). No side effects."""
    layout, weighting = loss.layout, loss.negative_weighting
    if type(layout) not in (TwoViewLayout, CrossViewLayout, LabelLayout, WithinViewLayout, QueueLayout):
        return f"layout {type(layout).__name__} has no index plan"
    if type(layout) is LabelLayout and batch.positive_mask is not None:
        return "positive_mask (an instance-level (N, N) mask) is only supported by the dense path"
    if type(layout) is QueueLayout and not layout.batch_negatives:
        return "QueueLayout(batch_negatives=False) is only supported by the dense path"
    if type(layout) is QueueLayout and batch.u.shape[1] != layout.queue.shape[1]:
        return "the queue's dimension differs from the embeddings' (the dense path raises the error)"
    rule = loss.temperature
    if type(rule) not in (FixedTemperature, AdaptiveTemperature, DynamicTemperature):
        return f"temperature rule {type(rule).__name__} is not supported"
    if isinstance(rule, DynamicTemperature) and not rule.detach_temperature:
        return "DynamicTemperature(detach_temperature=False) is only supported by the dense path"
    beta = weighting.current_beta
    offset = type(layout) is CrossViewLayout and batch.negatives is not None and layout.hard_negative_weight != 0.0
    if weighting.split_views and (beta != 0.0 or weighting.count == "nominal"):
        return "split negative sums with a tilt or the nominal count are only supported by the dense path"
    if beta != 0.0 and offset:
        return "a tilt (beta > 0) with hard-negative logit offsets is only supported by the dense path"
    label_positives = type(layout) is LabelLayout and layout.positives == "labels" and batch.labels is not None
    if loss.positives_in_denominator and not _fusable(loss, layout, batch, label_positives):
        return "positives_in_denominator with parts other than plain negatives is only supported by the dense path"
    if loss.objective == "decoupled" and loss.reduction == "pairs":
        return "the decoupled objective with reduction='pairs' is only supported by the dense path"
    if loss.objective == "coupled" and type(layout) is WithinViewLayout:
        return "the coupled objective on the within-view layout is only supported by the dense path"
    if loss.gradient_scaling is not None and label_positives:
        return "gradient scaling with several positives per anchor is only supported by the dense path"
    return None


def _fusable(loss, layout, batch, label_positives: bool) -> bool:
    """Whether the fused softmax form computes this loss (see :mod:`mmcl.losses.blockwise.kernel`)."""
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
    if not plain:
        return False
    if type(layout) is CrossViewLayout and batch.negatives is not None and layout.hard_negative_weight != 0.0:
        return False
    if type(layout) is LabelLayout and layout.negatives != "others":
        return False
    if label_positives:
        return loss.positives_in_denominator and loss.reduction == "anchors"
    return type(layout) is not WithinViewLayout


def select(loss, batch: Batch) -> bool:
    """Whether this call of ``loss`` takes the blockwise path: ``loss.blockwise`` is True, or None and the
    table has at least :data:`MIN_ENTRIES` entries; and the configuration is supported (with
    ``blockwise=True``, an unsupported one warns once per loss object)."""
    if loss.blockwise is False or (loss.blockwise is None and table_entries(batch) < MIN_ENTRIES):
        return False
    reason = unsupported(loss, batch)
    if reason is not None and loss.blockwise and not getattr(loss, "_warned_blockwise", False):
        warnings.warn(f"{loss.name}: blockwise=True but {reason}; using the dense path", stacklevel=4)
        loss._warned_blockwise = True
    return reason is None


def compute(loss, batch: Batch) -> Tensor:
    """The loss of ``batch`` through the blockwise path (the caller checked :func:`unsupported`)."""
    label_positives = (
        type(loss.layout) is LabelLayout and loss.layout.positives == "labels" and batch.labels is not None
    )
    fused = _fusable(loss, loss.layout, batch, label_positives)
    plan = build_plan(loss.layout, batch)
    dtype, device = batch.u.dtype, batch.u.device
    rows = _RowInfo(loss, plan, batch)
    rows.check_negatives()
    rule = loss.temperature
    scoped_cos, _ = loss._pair_cos(batch, rule.batch_stat_scope)
    if isinstance(rule, DynamicTemperature):
        tau, dynamic = None, rule
    else:
        tau, dynamic = rule(torch.zeros((), dtype=dtype, device=device), scoped_cos), None
    coef = rows.coefficients().to(dtype)
    diagnostics = loss.compute_diagnostics
    pair_cos = (batch.u * batch.v).sum(-1)  # (B,) the pair positives' cosines, with gradient
    pair_cos_rows = torch.cat([pair_cos if g.pair_positive else pair_cos.new_zeros(g.rows) for g in plan.groups])
    pos_factor = None
    if loss.gradient_scaling is not None:
        # Once for the batch: with angle_normalise the factors are divided by their batch mean.
        factor = loss.gradient_scaling.positive_factor(pair_cos_rows.detach()[rows.has_pair])
        pos_factor = torch.ones_like(pair_cos_rows.detach())
        pos_factor[rows.has_pair] = factor
    kernel = Kernel(
        loss,
        tau,
        dynamic,
        coef,
        rows.valid,
        rows.n_pos,
        rows.n_neg,
        plan.nominal_negatives,
        pos_factor,
        fused,
        diagnostics,
    )
    kernel.pair_cos_rows = pair_cos_rows.detach()
    extra: dict[str, Tensor] = {}
    value = 0.0
    if loss.objective == "decoupled":
        value = _decoupled_positive_term(loss, batch, plan, rows, pair_cos_rows, kernel, extra)
    states = [_group_state(g, plan, rows, diagnostics) for g in plan.groups]
    z_index = symmetric.self_similar_tensor(plan, kernel)
    shift = symmetric.one_shift(plan.tensors[z_index], kernel) if z_index is not None else None
    if shift is not None:
        runner = symmetric.SymmetricRunner(kernel, z_index, loss.block_size or TILE_ROWS, shift)
    else:
        fit = BLOCK_ENTRIES // max(s.columns for s in states)
        block_rows = loss.block_size or max(MIN_BLOCK_ROWS, min(MAX_BLOCK_ROWS, fit))
        runner = BlockRunner(plan, kernel, states, block_rows)
    value = value + BlockwiseLoss.apply(runner, *plan.tensors)
    loss_value = loss.loss_scale * value
    if diagnostics:
        loss.diagnostics = _diagnostics(loss, kernel, plan, states, rows, extra, dtype, device, dynamic is not None)
    return loss_value


class _RowInfo:
    """Per-row counts of the table, in its row order, from index arithmetic and label counts."""

    def __init__(self, loss, plan: Plan, batch: Batch) -> None:
        self.loss, self.plan = loss, plan
        device = batch.u.device
        self.classes = None
        if batch.labels is not None and any(g.labels is not None for g in plan.groups):
            self.classes = torch.unique(batch.labels)  # sorted class ids: labels map to 0..k-1
        n_pos, n_neg, direction, has_pair = [], [], [], []
        for g in plan.groups:
            C = g.columns
            in_cols = 0
            if g.labels is not None and self.classes is not None:
                same = self._same_count(g)
            if g.has_single_positive:
                pos = torch.ones(g.rows, dtype=torch.long, device=device)
                in_cols = pos
            elif g.labels is not None and self.classes is not None:
                pos = same - 1
                in_cols = pos
            else:
                pos = torch.full((g.rows,), int(g.pair_positive), dtype=torch.long, device=device)
            if g.negatives == "other_labels":
                neg = C - same
            else:
                neg = C - int(g.has_self) - in_cols
            n_pos.append(pos)
            n_neg.append(torch.as_tensor(neg, device=device).expand(g.rows))
            direction.append(torch.full((g.rows,), g.direction, dtype=torch.long, device=device))
            has_pair.append(torch.full((g.rows,), g.pair_positive, dtype=torch.bool, device=device))
        self.row_order = torch.cat(
            [
                g.row_order if g.row_order is not None else torch.arange(g.rows, device=device) + g.first_row
                for g in plan.groups
            ]
        )
        self.n_pos = torch.cat(n_pos)
        self.n_neg = torch.cat(n_neg)
        self.direction = torch.cat(direction)
        self.has_pair = torch.cat(has_pair)
        self.valid = torch.ones_like(self.has_pair)

    def group_ids(self, g: RowGroup) -> tuple[Tensor, Tensor]:
        """Class ids (0..k-1) of the group's rows and columns."""
        cols = torch.cat([s.labels for s in g.segments])
        return torch.searchsorted(self.classes, g.labels), torch.searchsorted(self.classes, cols)

    def _same_count(self, g: RowGroup) -> Tensor:
        """Number of candidate columns of each row's class (self and partner included)."""
        rows, cols = self.group_ids(g)
        return torch.bincount(cols, minlength=self.classes.numel())[rows]

    def check_negatives(self) -> None:
        """The dense path's empty-negative-set rule (raise, skip or allow), with its messages."""
        loss = self.loss
        has_negatives = self.n_neg > 0
        if loss.empty_negatives == "allow" or bool(has_negatives.all()):
            return
        name = type(loss).__name__
        if loss.empty_negatives == "raise":
            bad = int(self.row_order[~has_negatives].min())
            raise ValueError(
                f"anchor row {bad} of {name} has an empty negative set; "
                "use a larger batch (or, for label-aware negatives, batches with more than one class)"
            )
        if not bool(has_negatives.any()):
            raise ValueError(
                f"every anchor of {name} has an empty negative set (all samples share one class); "
                "use batches with more than one class"
            )
        self.valid = has_negatives

    def coefficients(self) -> Tensor:
        """Each row's weight in the loss (before ``loss_scale``): ``world / count`` of its direction group
        (halved for a mean of two directions), or ``world / pairs`` per pair for the pair reduction."""
        loss, plan = self.loss, self.plan
        world = loss.world_size
        valid = self.valid
        if loss.reduction == "pairs":
            total = (self.n_pos * valid).sum().to(torch.float64)
            if world > 1:
                total = distributed.all_reduce_sum(total)
            return torch.full(self.n_pos.shape, world, dtype=torch.float64, device=total.device) / total
        counts = torch.bincount(self.direction[valid], minlength=plan.n_directions).to(torch.float64)
        if world > 1:
            counts = distributed.all_reduce_sum(counts)
        coef = world / counts[self.direction]
        return coef / plan.n_directions if loss.direction_reduction == "mean" else coef


def _decoupled_positive_term(loss, batch, plan, rows, pair_cos_rows, kernel: Kernel, extra) -> Tensor:
    """``sum_a c_a (-w_a psi(s_a) / tau_a)`` over the rows with a pair positive, with autograd: a row-wise
    dot product, so it stays outside the Function. Also the positives' diagnostics the kernel cannot see."""
    has = rows.has_pair
    cos = pair_cos_rows[has]
    dynamic = kernel.rule
    pos_tau = kernel.tau if dynamic is None else dynamic.tau_of(cos.detach())
    factor = kernel.pos_factor[has] if kernel.pos_factor is not None else None
    _, logit = loss._positive_logit(cos, pos_tau, factor)
    weight = 1.0
    if loss.positive_weights is not None:
        scoped, offset = loss._pair_cos(batch, loss.positive_weights.batch_stat_scope)
        instances = torch.cat([torch.arange(g.rows, device=cos.device) + g.instance_start for g in plan.groups])
        row_weight = loss.positive_weights(scoped)[instances - offset]
        weight = row_weight[has]
        extra["pos_weight_min"], extra["pos_weight_max"] = row_weight.min(), row_weight.max()
    terms = -weight * logit
    value = (torch.where(rows.valid[has], terms, 0) * kernel.row_coef[has]).sum()
    extra["align_term"] = value.detach()
    if kernel.diagnostics:
        kernel.row_stats["best_pos"][has] = logit.detach()
        # Positives outside the candidate columns (within-view layout): the kernel never sees their temperature.
        outside = torch.cat([torch.full((g.rows,), not g.has_single_positive, device=cos.device) for g in plan.groups])
        outside &= has
        if dynamic is not None and bool(outside.any()):
            kernel._tau_stats_values(dynamic.tau_of(kernel.pair_cos_rows[outside]))
    return value


def _group_state(g: RowGroup, plan: Plan, rows: _RowInfo, diagnostics: bool) -> GroupState:
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


def _diagnostics(loss, kernel: Kernel, plan: Plan, states, rows: _RowInfo, extra, dtype, device, dynamic: bool):
    """The dense path's diagnostics (:meth:`ContrastiveLoss._diagnostics`) from the kernel's accumulators."""
    stats, row_stats = kernel.stats, kernel.row_stats
    sums, mins, maxs = stats.sums, stats.mins, stats.maxs
    # Positives that are the pair partner: their cosines are the row-wise dot products.
    partner = torch.cat(
        [torch.full((g.rows,), g.pair_positive and g.labels is None or g.has_single_positive) for g in plan.groups]
    ).to(device)
    partner &= rows.n_pos > 0
    if bool(partner.any()):
        stats.add("pos_cos", kernel.pair_cos_rows[partner].sum())
        stats.low("pos_cos_min", kernel.pair_cos_rows[partner].min())
    n_pairs = rows.n_pos.sum()
    has_neg, has_pos = rows.n_neg > 0, rows.n_pos > 0
    out: dict[str, Tensor] = {
        "n_anchors": torch.tensor(float(rows.n_pos.numel()), dtype=dtype, device=device),
        "n_valid_anchors": rows.valid.sum().to(dtype),
        "pos_per_row_mean": rows.n_pos.to(dtype).mean(),
        "neg_per_row_min": rows.n_neg.min().to(dtype),
    }
    if dynamic and "tau_count" in sums:
        out.update(tau_mean=sums["tau_sum"] / sums["tau_count"], tau_min=mins["tau_min"], tau_max=maxs["tau_max"])
    if int(n_pairs) > 0:
        out["pos_cos_mean"] = sums["pos_cos"] / n_pairs
        out["pos_cos_min"] = mins["pos_cos_min"]
    if bool(has_neg.any()):
        out["neg_cos_mean"] = sum(_negative_cosine_sum(plan, s, kernel) for s in states) / rows.n_neg.sum()
        out["hardest_neg_cos_mean"] = row_stats["hardest_cos"][has_neg].mean()
        if int(n_pairs) > 0:
            hits = row_stats["best_pos"] > row_stats["hardest_logit"]
            out["contrastive_acc"] = hits[has_neg & has_pos].float().mean()
    if loss.objective == "coupled" and int(n_pairs) > 0:
        out["pos_prob_mean"] = sums["pos_prob"] / n_pairs
    if not dynamic:
        out.update({k: v.detach() for k, v in loss.temperature.diagnostics.items()})
    if "is_ess" in sums:
        out["is_ess_mean"] = sums["is_ess"] / sums["is_ess_rows"]
    for key in ("floor_active_frac", "row_weight_mean", "margin_r_mean", "margin_g_mean"):
        if key in sums:
            out[key] = sums[key] / n_pairs
    if "row_weight_max" in maxs:
        out["row_weight_max"] = maxs["row_weight_max"]
    if loss.objective == "decoupled":
        extra["energy_term"] = sums["energy_term"]
    out.update(extra)
    return {k: v.detach().to(dtype) if k != "contrastive_acc" else v for k, v in out.items()}


def _negative_cosine_sum(plan: Plan, state: GroupState, kernel: Kernel) -> Tensor:
    """Sum of a group's negative cosines without the table: ``q . sum_c k_c`` minus the excluded entries
    (the class's columns, or the own and the positive column)."""
    g = state.group
    q = plan.tensors[g.tensor][g.start : g.stop].detach()
    total = q @ state.col_sum
    if state.class_sum is not None and (not g.has_single_positive or g.negatives == "other_labels"):
        total = total - (q * state.class_sum[state.row_labels]).sum(1)
    else:
        if g.has_self:
            total = total - (q * q).sum(1)
        if g.has_single_positive:
            total = total - kernel.pair_cos_rows[g.first_row : g.first_row + g.rows]
    return total.sum()
