"""Anchor-row bookkeeping shared by the dense and the blockwise paths: one definition of which rows count,
their weights in the loss, and the diagnostics assembled from per-row statistics.

Both paths describe their table by :class:`RowCounts` (the dense path counts its masks, the blockwise path
derives the counts from its plan) and record detached statistics in a :class:`Stats` (the dense path in
one go, the blockwise path block by block); :func:`diagnostics` turns them into ``loss.diagnostics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mmcl.losses import distributed

#: Statistics of the (anchor, positive) pairs recorded as sums and reported as means over the pairs.
PAIR_MEANS = ("floor_active_frac", "row_weight_mean", "margin_r_mean", "margin_g_mean")


@dataclass
class RowCounts:
    """The table's rows: positive and negative counts, direction groups, and (for error messages) each
    row's index in the dense table's order."""

    n_pos: Tensor  # (R,) long
    n_neg: Tensor  # (R,) long
    direction: Tensor  # (R,) long
    n_directions: int
    row_order: Tensor | None = None  # (R,) long; None: the rows are in the dense table's order

    def valid(self, loss) -> Tensor:
        """The rows that enter the loss, by ``loss.empty_negatives``: all (``"allow"``), those with
        negatives (``"skip"``, raising when none has any), or all with an error for the first row without
        negatives (``"raise"``)."""
        has_negatives = self.n_neg > 0
        if loss.empty_negatives == "allow" or bool(has_negatives.all()):
            return torch.ones_like(has_negatives)
        name = type(loss).__name__
        if loss.empty_negatives == "raise":
            order = self.row_order if self.row_order is not None else torch.arange(len(has_negatives))
            bad = int(order.to(has_negatives.device)[~has_negatives].min())
            raise ValueError(
                f"anchor row {bad} of {name} has an empty negative set; "
                "use a larger batch (or, for label-aware negatives, batches with more than one class)"
            )
        if not bool(has_negatives.any()):
            raise ValueError(
                f"every anchor of {name} has an empty negative set (all samples share one class); "
                "use batches with more than one class"
            )
        return has_negatives

    def coefficients(self, loss, valid: Tensor) -> Tensor:
        """Each row's weight in the loss (before ``loss_scale``), float64: ``world / count`` of its direction
        group (divided by the number of groups for their mean), or ``world / pairs`` per (anchor, positive)
        pair for the pair reduction. Counts are global under ``torch.distributed``."""
        world = loss.world_size
        if loss.reduction == "pairs":
            total = (self.n_pos * valid).sum().to(torch.float64)
            if world > 1:
                total = distributed.all_reduce_sum(total)
            return torch.full(self.n_pos.shape, world, dtype=torch.float64, device=total.device) / total
        counts = torch.bincount(self.direction[valid], minlength=self.n_directions).to(torch.float64)
        if world > 1:
            counts = distributed.all_reduce_sum(counts)
        coef = world / counts[self.direction]
        return coef / self.n_directions if loss.direction_reduction == "mean" else coef


@dataclass
class Stats:
    """Detached running sums, minima and maxima of the diagnostics, and per-row maxima (the hardest negative
    cosine and logit, the best positive logit), combined over blocks."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    mins: dict[str, Tensor] = field(default_factory=dict)
    maxs: dict[str, Tensor] = field(default_factory=dict)
    rows: dict[str, Tensor] = field(default_factory=dict)

    def add(self, key: str, value: Tensor) -> None:
        self.sums[key] = self.sums[key] + value if key in self.sums else value

    def low(self, key: str, value: Tensor) -> None:
        self.mins[key] = torch.minimum(self.mins[key], value) if key in self.mins else value

    def high(self, key: str, value: Tensor) -> None:
        self.maxs[key] = torch.maximum(self.maxs[key], value) if key in self.maxs else value

    def pair_extras(self, extra: dict[str, Tensor], pairs: int) -> None:
        """Per-pair statistics of the objective (means over ``pairs`` pairs, or maxima)."""
        for key, item in extra.items():
            if key.endswith("_max"):
                self.high(key, item.detach())
            elif pairs:
                self.add(key, item.detach() * pairs)

    def tau_values(self, values: Tensor) -> None:
        """Per-entry temperatures of entries the loss uses."""
        if values.numel() == 0:
            return
        self.add("tau_sum", values.sum())
        self.add("tau_count", torch.tensor(values.numel(), device=values.device))
        self.low("tau_min", values.min())
        self.high("tau_max", values.max())


def diagnostics(loss, counts: RowCounts, valid: Tensor, stats: Stats, extra: dict[str, Tensor], dtype) -> dict:
    """``loss.diagnostics`` (spec 1.6) from the row counts and the recorded statistics; keys that do not
    apply are left out. ``stats.sums`` holds ``pos_cos`` and ``neg_cos`` (sums over the positive and the
    negative entries) and ``stats.rows`` the per-row ``hardest_cos``, ``hardest_logit`` and ``best_pos``."""
    sums, mins, maxs, rows = stats.sums, stats.mins, stats.maxs, stats.rows
    device = counts.n_pos.device
    n_pairs = counts.n_pos.sum()
    has_neg, has_pos = counts.n_neg > 0, counts.n_pos > 0
    out: dict[str, Tensor] = {
        "n_anchors": torch.tensor(float(counts.n_pos.numel()), dtype=dtype, device=device),
        "n_valid_anchors": valid.sum().to(dtype),
        "pos_per_row_mean": counts.n_pos.to(dtype).mean(),
        "neg_per_row_min": counts.n_neg.min().to(dtype),
    }
    if "tau_count" in sums:
        out.update(tau_mean=sums["tau_sum"] / sums["tau_count"], tau_min=mins["tau_min"], tau_max=maxs["tau_max"])
    if int(n_pairs) > 0:
        out["pos_cos_mean"] = sums["pos_cos"] / n_pairs
        out["pos_cos_min"] = mins["pos_cos_min"]
    if bool(has_neg.any()):
        out["neg_cos_mean"] = sums["neg_cos"] / counts.n_neg.sum()
        out["hardest_neg_cos_mean"] = rows["hardest_cos"][has_neg].mean()
        if int(n_pairs) > 0:
            hits = rows["best_pos"] > rows["hardest_logit"]
            out["contrastive_acc"] = hits[has_neg & has_pos].float().mean()
    if loss.objective == "coupled" and int(n_pairs) > 0:
        out["pos_prob_mean"] = sums["pos_prob"] / n_pairs
    if not loss.temperature.per_entry:
        out.update({k: v.detach() for k, v in loss.temperature.diagnostics.items()})
    if "is_ess" in sums:
        out["is_ess_mean"] = sums["is_ess"] / sums["is_ess_rows"]
    for key in PAIR_MEANS:
        if key in sums:
            out[key] = sums[key] / n_pairs
    if "row_weight_max" in maxs:
        out["row_weight_max"] = maxs["row_weight_max"]
    if "energy_term" in sums:
        out["energy_term"] = sums["energy_term"]
    out.update(extra)
    return {k: v.detach().to(dtype) if k != "contrastive_acc" else v for k, v in out.items()}
