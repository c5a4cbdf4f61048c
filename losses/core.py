"""The loss pipeline every softmax-family contrastive loss is a preset of.

::

    embeddings --(a) layout--> cosines + masks --(b) temperature, margin, offset--> logits
               --(c) negative weighting--> log negative mass per anchor
               --(d) objective (coupled / decoupled)--> per (anchor, positive) terms
               --(e) row weights, gradient-only rescales, reduction--> scalar
               --(f) detached diagnostics in ``loss.diagnostics``

(a) :mod:`mmcl.losses.parts.layouts`, (b) :mod:`mmcl.losses.parts.temperature` and :mod:`mmcl.losses.parts.margin`, (c)
:mod:`mmcl.losses.parts.negatives`. With :math:`\\ell` the logits, :math:`p` a positive of anchor :math:`a` and
:math:`\\tilde M_a` its (debiased) negative mass, the objective forms are

* coupled: :math:`t_{ap} = -\\ell_{ap} + \\log(e^{\\ell_{ap}} + \\kappa\\sum_{p' \\ne p} e^{\\ell_{ap'}} + \\tilde M_a)`
  (:math:`\\kappa = 1`: ``positives_in_denominator``, SupCon, or a table of several views whose rows keep
  every other row in their denominators; debiasing then uses the mean of the row's positives);
* decoupled: :math:`t_{ap} = -w_a \\ell_{ap} + \\log M_a` (DCL, DCLW, GraphCL, DHEL).

Row loss: the mean of its terms over its positives (0 for a row without positives, SupCon's rule);
the loss is the mean over anchor rows of each direction group, combined by mean or sum, or the flat
mean over (anchor, positive) pairs (H-SCL); which rows count and their weights are
:mod:`mmcl.losses.rows`, shared with the blockwise path. A call holds ``V >= 2`` views
(:mod:`mmcl.losses.inputs`); a loss or layout defined for a pair refuses more. Under
``torch.distributed`` the candidates are gathered from every rank with gradient and each rank's loss is
scaled so that the mean of the ranks' losses is the global loss (see :mod:`mmcl.losses.distributed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from mmcl.losses import blockwise, distributed
from mmcl.losses.batch import Batch
from mmcl.losses.checks import (
    check_choice,
    check_global_views,
    check_labels,
    check_negatives,
    check_views,
    normalise,
)
from mmcl.losses.execution import BlockwiseOptions, Execution, ExecutionOptions
from mmcl.losses.inputs import collect_views
from mmcl.losses.parts.layouts import Layout
from mmcl.losses.parts.margin import MarginGradientScaling, PositiveMargin, straight_through_scale
from mmcl.losses.parts.negatives import NegativeWeighting, masked_logsumexp, other_positives_log_mass
from mmcl.losses.parts.temperature import TemperatureRule, as_temperature_rule
from mmcl.losses.parts.weights import MACLWeights, PositiveWeights, as_reweighting
from mmcl.losses.rows import PAIR_MEANS, RowCounts, Stats, diagnostics

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["ContrastiveLoss", "EmbeddingLoss", "PositiveWeights"]

# Diagnostics that are final values already (not sums over pairs or rows).
FINAL_EXTRAS = ("align_term", "energy_term", "pos_weight_min", "pos_weight_max")


class EmbeddingLoss(nn.Module):
    """Shared front end of every loss: input checks, normalisation in float32+, the distributed gather.

    Subclasses implement :meth:`compute` on a :class:`Batch` and fill ``self.diagnostics``; they take the
    execution options (:mod:`mmcl.losses.execution`) as ``**execution`` and pass them on.
    """

    accepts_labels = False
    requires_labels = False
    accepts_negatives = False
    min_global_batch = 2
    execution_options: ClassVar[type] = ExecutionOptions

    def __init__(self, **execution: Unpack[ExecutionOptions]) -> None:
        super().__init__()
        self.execution = Execution.of(type(self).__name__, self.execution_options, execution)
        self.diagnostics: dict[str, Tensor] = {}

    @property
    def gather_distributed(self) -> bool:
        return self.execution.gather_distributed

    @property
    def compute_diagnostics(self) -> bool:
        return self.execution.diagnostics

    #: Why the loss is defined for two views only (None: it takes ``V >= 2`` views).
    pairs_only: ClassVar[str | None] = None

    def forward(
        self,
        z_a: Tensor | None = None,
        z_b: Tensor | None = None,
        *more_views: Tensor,
        labels: Tensor | None = None,
        negatives: Tensor | None = None,
        views: Sequence[Tensor] | None = None,
        positive_mask: Tensor | None = None,
        global_views: int | None = None,
    ) -> Tensor:
        """The loss of ``V >= 2`` views ``(N, d)`` of the same ``N`` instances (:mod:`mmcl.losses.inputs`:
        ``loss_fn(z_a, z_b)``, ``loss_fn(z_1, ..., z_V)``, ``loss_fn(views=[...])`` or SupContrast's
        ``loss_fn(features)`` with features ``(N, V, d)``), with ``labels`` ``(N,)`` and ``negatives``
        ``(N, d)`` where the loss takes them. ``global_views=G`` (multi-crop, SwAV/DINO): only the first ``G``
        views are candidates, so the other (local) views are anchors against the global views only."""
        views, labels, negatives = collect_views(z_a, z_b, more_views, views, labels, negatives)
        check_views(views, *self._view_limit())
        n, d = views[0].shape
        global_views = check_global_views(global_views, len(views))
        name = self.name
        if labels is not None and not self.accepts_labels:
            raise ValueError(f"{name} takes no labels; drop labels= or use a supervised loss (supcon, scl, h_scl)")
        if labels is None and positive_mask is None and self.requires_labels:
            raise ValueError(f"{name} needs labels= of shape (N,) (class ids for its label-aware negatives)")
        if positive_mask is not None and not self.accepts_labels:
            raise ValueError(f"{name} takes no positive_mask")
        if negatives is not None and not self.accepts_negatives:
            raise ValueError(f"{name} takes no extra negatives; drop negatives= or use simcse / info_nce")
        if labels is not None:
            check_labels(labels, n)
        if negatives is not None:
            check_negatives(negatives, n, d)
        batch = self._batch(views, labels, negatives, positive_mask, global_views)
        self._zero_norm_rows = sum((z.detach().norm(dim=1) == 0).sum() for z in views)
        if batch.U.shape[0] < self.min_global_batch:
            raise ValueError(
                f"{name} needs at least {self.min_global_batch} pairs in the (global) batch, got {batch.U.shape[0]}: "
                "with fewer an anchor has no negatives"
            )
        loss = self.compute(batch)
        if self.diagnostics:
            self.diagnostics["zero_norm_rows"] = self._zero_norm_rows.to(loss.dtype)
        return loss

    @property
    def max_views(self) -> int | None:
        """How many views a call may hold: 2 for a loss defined for pairs, None for any number (and
        multi-crop's ``global_views``)."""
        return self._view_limit()[0]

    def _view_limit(self) -> tuple[int | None, str | None]:
        """At most how many views the loss takes, and why."""
        reason = self.pairs_only
        return (2, f"{self.name} is defined for two views: {reason}") if reason else (None, None)

    @property
    def name(self) -> str:
        """The registry name (``nt_xent``), or the class name for an unregistered loss."""
        return getattr(self, "registry_name", type(self).__name__)

    def _batch(self, views, labels, negatives, positive_mask, global_views) -> Batch:
        views = [normalise(z) for z in views]
        extra = normalise(negatives) if negatives is not None else None
        if positive_mask is not None:
            G = views[0].shape[0]
            if positive_mask.shape != (G, G) or positive_mask.dtype != torch.bool:
                raise ValueError(
                    f"positive_mask must be a bool tensor of shape (N, N), got {tuple(positive_mask.shape)}"
                )
            if self.world_size > 1:
                raise ValueError("positive_mask is a single-process option; pass labels= for distributed training")
        if self.world_size == 1:
            return Batch(views, views, 0, labels, extra, positive_mask, global_views)
        distributed.check_equal_local_sizes(views[0].shape[0])
        # One all-gather for every view: (B, V, d) from each rank, stacked in rank order.
        gathered = distributed.gather_with_grad(torch.stack(views, 1)).unbind(1)
        return Batch(
            views,
            list(gathered),
            distributed.rank() * views[0].shape[0],
            distributed.gather(labels) if labels is not None else None,
            distributed.gather_with_grad(extra) if extra is not None else None,
            global_views=global_views,
        )

    @property
    def world_size(self) -> int:
        return distributed.world_size() if self.gather_distributed else 1

    def global_mean(self, total: Tensor, count: Tensor) -> Tensor:
        """This rank's share of a global mean: the mean over ranks of the returned values is
        ``sum(totals) / sum(counts)``."""
        world = self.world_size
        if world > 1:
            count = distributed.all_reduce_sum(count.to(total.dtype))
        return total * world / count.to(total.dtype)

    def compute(self, batch: Batch) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def set_progress(self, fraction: float) -> None:
        """Training progress in [0, 1], for parts with schedules (HCL's beta, DySTreSS's tau_min)."""
        for module in self.modules():
            if hasattr(module, "progress"):
                module.progress = float(fraction)

    def constrain_(self) -> None:
        """Project trained parameters of the loss's parts (a learnable temperature) back into their range, in place;
        the engine calls it after every optimiser step, as open_clip clamps ``logit_scale``."""
        for module in self.modules():
            if module is not self and hasattr(module, "constrain_"):
                module.constrain_()


class ContrastiveLoss(EmbeddingLoss):
    """A contrastive loss assembled from parts; the registered losses are presets of it.

    Args:
        layout: the table's layout, a :class:`~losses.layouts.Layout`; a preset also takes a registered name
            (``two_view``, ``cross_view``, ``labels``, ``within_view``, ``queue``), a ``{"name": ..., **options}``
            dict (``{"name": "queue", "size": 4096}``), or None for its own.
        temperature: the softmax temperature: a number (fixed), a :class:`~losses.temperature.TemperatureRule` or
            a ``{"rule": ...}`` dict (``macl``, ``dystress``, ``learnable``).
        margin: :class:`~losses.margin.PositiveMargin` on the positive logit.
        negatives: :class:`~losses.negatives.NegativeWeighting` (tilt, debiasing, counts, split sums).
        objective: ``"coupled"`` (positive in the denominator) or ``"decoupled"``.
        positives_in_denominator: every positive of a row in every one of its denominators (SupCon).
        positive_weights: :class:`~losses.weights.PositiveWeights` on the decoupled positive term (DCLW).
        reweight: :class:`~losses.weights.MACLWeights` on each coupled term (``"macl"``: its defaults).
        gradient_scaling: :class:`~losses.margin.MarginGradientScaling` (gradient-only margin effects).
        loss_scale: constant factor (SupCon's ``tau / tau_base``).
        reduction: ``"anchors"`` (mean over rows per direction) or ``"pairs"`` (mean over all pairs).
        direction_reduction: ``"mean"`` or ``"sum"`` of the losses of the layout's directions (``u->v``, ``v->u``).
        accepts_negatives: take extra hard negatives (the layout must support them).
        empty_negatives: ``"raise"`` for an anchor without negatives, ``"skip"`` such anchors (raise if
            none is left), or ``"allow"`` them (SupCon: the denominator still holds the positives).
        **execution: ``gather_distributed``, ``diagnostics``, ``blockwise`` and ``block_size``
            (:mod:`mmcl.losses.execution`). ``blockwise`` computes the table in blocks of anchor rows with
            the gradient formed in the forward pass (:mod:`mmcl.losses.blockwise`): ``None`` when the table
            has at least ``mmcl.losses.blockwise.engine.MIN_ENTRIES`` entries, ``True`` always, ``False``
            never. Same values and gradients; memory linear in the batch; no double backward.
    """

    execution_options: ClassVar[type] = BlockwiseOptions

    def __init__(
        self,
        layout: Layout,
        temperature: float | dict | TemperatureRule = 0.5,
        *,
        margin: PositiveMargin | None = None,
        negatives: NegativeWeighting | None = None,
        objective: str = "coupled",
        positives_in_denominator: bool = False,
        positive_weights: PositiveWeights | None = None,
        reweight: MACLWeights | str | None = None,
        gradient_scaling: MarginGradientScaling | None = None,
        loss_scale: float = 1.0,
        reduction: str = "anchors",
        direction_reduction: str = "mean",
        empty_negatives: str = "raise",
        accepts_negatives: bool = False,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(**execution)
        if accepts_negatives and not layout.accepts_negatives:
            raise ValueError(f"{type(layout).__name__} does not take extra negatives")
        self.layout = layout
        self.temperature = as_temperature_rule(temperature)
        self.margin = margin
        self.negative_weighting = negatives if negatives is not None else NegativeWeighting()
        self.objective = check_choice("objective", objective, ("coupled", "decoupled"))
        self.positives_in_denominator = bool(positives_in_denominator)
        self.positive_weights = positive_weights
        self.reweight = as_reweighting(reweight)
        self.gradient_scaling = gradient_scaling
        self.loss_scale = float(loss_scale)
        self.reduction = check_choice("reduction", reduction, ("anchors", "pairs"))
        self.direction_reduction = check_choice("direction_reduction", direction_reduction, ("mean", "sum"))
        self.empty_negatives = check_choice("empty_negatives", empty_negatives, ("raise", "skip", "allow"))
        self.accepts_labels = layout.accepts_labels
        self.requires_labels = layout.requires_labels
        self.accepts_negatives = bool(accepts_negatives)
        self._check_combination()

    @property
    def blockwise(self) -> bool | None:
        return self.execution.blockwise

    @property
    def block_size(self) -> int | None:
        return self.execution.block_size

    # The empty-negative-set check is the batch-size guard: a queue or hard negatives allow one pair.
    min_global_batch = 1

    def _check_combination(self) -> None:
        weighting = self.negative_weighting
        if self.objective == "decoupled":
            for name, bad in (
                ("debiasing (tau_plus > 0)", weighting.debiases),
                ("positives_in_denominator", self.positives_in_denominator),
                ("reweight='macl'", self.reweight is not None),
                (
                    "gradient_scaling with logit margins",
                    bool(self.gradient_scaling and self.gradient_scaling.rescales_rows),
                ),
            ):
                if bad:
                    raise ValueError(f"{name} needs the coupled objective (positive in the denominator)")
        elif self.positive_weights is not None:
            raise ValueError("positive_weights (DCLW) need objective='decoupled'")
        if weighting.split_views and weighting.debiases:
            raise ValueError("debiasing (tau_plus > 0) works on one joint negative sum; set split_views=False")
        if self.positives_in_denominator and (
            weighting.debiases or self.reweight is not None or self.gradient_scaling is not None
        ):
            raise ValueError(
                "positives_in_denominator (SupCon) cannot be combined with debiasing, reweighting or gradient scaling"
            )

    def _view_limit(self) -> tuple[int | None, str | None]:
        reasons = []
        if self.layout.max_views is not None:
            reasons.append(f"its {type(self.layout).__name__} contrasts one pair of views")
        if self.positive_weights is not None:
            reasons.append("DCLW's positive weights are a softmax over the instances' one pair")
        if self.gradient_scaling is not None:
            reasons.append("the gradient-only margin effects are defined for one positive per anchor")
        return (2, f"{self.name} is defined for two views: {'; '.join(reasons)}") if reasons else (None, None)

    # The per-pair stages below are shared with the blockwise path (:mod:`mmcl.losses.blockwise`), which
    # calls them on vectors of a block's pairs.

    def scoped_pair_cos(self, batch: Batch, scope: str) -> tuple[Tensor, int]:
        """Positive-pair cosines of the batch statistics' scope and the index offset of local rows in it."""
        if scope == "global":
            return batch.pair_cos, 0
        return batch.pair_cos[batch.local], batch.start

    def compute(self, batch: Batch) -> Tensor:
        plan = blockwise.select(self, batch)
        if plan is not None:
            return blockwise.compute(self, batch, plan)
        return self._dense(batch)

    def _dense(self, batch: Batch) -> Tensor:
        """The loss from the whole ``(R, C)`` table, with autograd."""
        table = self.layout(batch)
        counts = RowCounts(table.pos.sum(-1), table.neg.sum(-1), table.direction, table.n_directions)
        valid = counts.valid(self)
        sim = table.sim
        pair_cos, _ = self.scoped_pair_cos(batch, self.temperature.batch_stat_scope)
        tau = self.temperature(sim, pair_cos)
        rows, cols = table.pos.nonzero(as_tuple=True)
        pos_tau = tau[rows, cols] if tau.dim() > 0 else tau
        pos_cos, pos_logit = self.positive_logit(sim[rows, cols], pos_tau)
        base_logits = sim / tau
        logits = base_logits if table.offset is None else base_logits + table.offset
        log_mass, extra = self.negative_weighting.log_mass(
            logits, base_logits, table.neg, table.nominal_negatives, table.cand_view
        )
        coef = counts.coefficients(self, valid).to(sim.dtype)
        pos_prob = None
        if self.objective == "coupled":
            terms, pos_prob, pair_extra = self._coupled_terms(
                table, rows, cols, pos_logit, pos_cos, pos_tau, log_mass, tau
            )
            extra.update(pair_extra)
            row_loss = self.row_mean(terms, rows, sim.shape[0])
        else:
            terms, row_loss = self._decoupled_rows(batch, table, rows, pos_logit, log_mass, valid, coef, extra)
        if self.reduction == "pairs":
            loss = (torch.where(valid[rows], terms, 0) * coef[rows]).sum()
        else:
            loss = (torch.where(valid, row_loss, 0) * coef).sum()
        if self.compute_diagnostics:
            stats = self._table_stats(table, rows, cols, logits, pos_logit, pos_prob, tau, extra)
            finals = {k: extra[k] for k in FINAL_EXTRAS if k in extra}
            self.diagnostics = diagnostics(self, counts, valid, stats, finals, sim.dtype)
        return self.loss_scale * loss

    def _decoupled_rows(self, batch, table, rows, pos_logit, log_mass, valid, coef, extra) -> tuple[Tensor, Tensor]:
        """The decoupled objective's terms ``-w_a l_ap`` and row losses ``mean_p(-w_a l_ap) + log M_a``; records
        the alignment and energy parts (and DCLW's weights) in ``extra``."""
        weight = 1.0
        if self.positive_weights is not None:
            scoped_cos, offset = self.scoped_pair_cos(batch, self.positive_weights.batch_stat_scope)
            row_weight = self.positive_weights(scoped_cos)[table.row_instance - offset]
            weight = row_weight[rows]
            extra["pos_weight_min"], extra["pos_weight_max"] = row_weight.min(), row_weight.max()
        terms = -weight * pos_logit
        align_rows = self.row_mean(terms, rows, table.sim.shape[0])
        with torch.no_grad():
            extra["align_term"] = (torch.where(valid, align_rows, 0) * coef).sum()
            extra["energy_term"] = (torch.where(valid & torch.isfinite(log_mass), log_mass, 0) * coef).sum()
        return terms, align_rows + log_mass

    def positive_logit(self, pos_cos: Tensor, pos_tau: Tensor, factor: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Positive cosines after the gradient-only rescale and their logits ``psi(s) / tau``.

        ``factor`` overrides the gradient-scaling factor (the blockwise path computes it once for the batch).
        """
        if self.gradient_scaling is not None:
            if factor is None:
                factor = self.gradient_scaling.positive_factor(pos_cos)
            pos_cos = straight_through_scale(pos_cos, factor)
        pos_psi = self.margin(pos_cos) if self.margin is not None else pos_cos
        return pos_cos, pos_psi / pos_tau

    def _coupled_terms(self, table, rows, cols, pos_logit, pos_cos, pos_tau, log_mass, tau):
        if self.positives_in_denominator:
            pos_logits = torch.zeros_like(table.sim).index_put((rows, cols), pos_logit)
            denominator = torch.logaddexp(masked_logsumexp(pos_logits, table.pos), log_mass)[rows]
            return self.pair_terms(pos_logit, pos_cos, pos_tau, None, denominator=denominator)
        count = floor_logit = None
        if self.negative_weighting.debiases:
            count = self.negative_weighting.row_count(table.neg, table.nominal_negatives)[rows]
            floor_logit = self.temperature.floor_logit(tau)
            if floor_logit.dim() > 0:
                floor_logit = floor_logit.expand(table.sim.shape)[rows, cols]
        shared = (rows, table.sim.shape[0]) if table.positives_in_denominator else None
        return self.pair_terms(pos_logit, pos_cos, pos_tau, log_mass[rows], count, floor_logit, shared=shared)

    def pair_terms(
        self,
        pos_logit: Tensor,
        pos_cos: Tensor,
        pos_tau: Tensor,
        pair_log_mass: Tensor | None,
        count: Tensor | None = None,
        floor_logit: Tensor | None = None,
        denominator: Tensor | None = None,
        shared: tuple[Tensor, int] | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Coupled terms ``t_ap`` of (anchor, positive) pairs from per-pair vectors (P,), their detached
        positive probabilities and pair statistics; shared by the dense and the blockwise paths.

        ``pair_log_mass`` is each pair's ``log M_a``, ``count`` its ``n_a`` and ``floor_logit`` the floor of
        the debiased estimator (both only used when debiasing); ``denominator`` replaces
        ``log(e^l + M)`` (SupCon's denominator with every positive). ``shared = (pair_rows, n_rows)``: the
        rows' positives all sit in each of their terms' denominators (a table of several views), so
        ``t_ap = log(1 + (O_ap + M_a) / e^{l_ap})`` with ``O_ap`` the row's other positives; debiasing then
        estimates the false negatives from the mean of the row's positives (Chuang et al.'s ``M``-positive
        estimator).
        """
        weighting = self.negative_weighting
        extra: dict[str, Tensor] = {}
        rest = None
        if denominator is None:
            others = None
            if shared is not None:
                others, n_positives = other_positives_log_mass(pos_logit, *shared)
            if weighting.debiases:
                anchor = pos_logit if others is None else torch.logaddexp(pos_logit, others) - n_positives.log()
                pair_log_mass, floor_active = weighting.debias(anchor, pair_log_mass, count, floor_logit)
                extra["floor_active_frac"] = floor_active.to(pos_logit.dtype).mean()
            rest = pair_log_mass if others is None else torch.logaddexp(others, pair_log_mass)
            # t = log(1 + rest / e^l): exact when P is near 1, where the denominator minus the logit is not.
            terms = torch.logaddexp(torch.zeros_like(pos_logit), rest - pos_logit)
        else:
            terms = denominator - pos_logit
        pos_prob = torch.exp(-terms.detach())
        if self.reweight is not None:
            weights = self.reweight(terms)
            terms = weights * terms
            extra["row_weight_mean"], extra["row_weight_max"] = weights.mean(), weights.max()
        if self.gradient_scaling is not None and self.gradient_scaling.rescales_rows:
            virtual = self.gradient_scaling.virtual_margin(pos_cos.detach()) / pos_tau
            plain = pos_cos.detach() / pos_tau
            base = rest.detach()
            # r = (1 - P^psi) / (1 - P^0) = Z^0 / Z^psi, in log space: finite when P^0 rounds to 1.
            ratio = torch.exp(torch.logaddexp(plain, base) - torch.logaddexp(virtual, base))
            terms = straight_through_scale(terms, ratio)
            extra["margin_r_mean"] = ratio.mean()
        if self.margin is not None and not self.margin.is_identity:
            plain = pos_cos.detach() / pos_tau
            base = rest.detach()
            extra["margin_r_mean"] = torch.exp(
                torch.logaddexp(plain, base) - torch.logaddexp(pos_logit.detach(), base)
            ).mean()
            extra["margin_g_mean"] = self.margin.angle_factor(pos_cos).mean()
        return terms, pos_prob, extra

    @staticmethod
    def row_mean(terms: Tensor, rows: Tensor, n_rows: int) -> Tensor:
        """Mean of each row's terms (0 for a row without any)."""
        total = torch.zeros(n_rows, dtype=terms.dtype, device=terms.device).index_add(0, rows, terms)
        count = torch.bincount(rows, minlength=n_rows).clamp(min=1).to(terms.dtype)
        return total / count

    def _table_stats(self, table, rows, cols, logits, pos_logit, pos_prob, tau, extra) -> Stats:
        """The diagnostics' statistics (:class:`~losses.rows.Stats`) of the whole table."""
        stats = Stats()
        with torch.no_grad():
            sim, neg = table.sim.detach(), table.neg
            pos_cos = sim[rows, cols]
            if tau.dim() > 0:
                stats.tau_values(tau.detach()[table.pos | table.neg])
            if pos_cos.numel():
                stats.add("pos_cos", pos_cos.sum())
                stats.low("pos_cos_min", pos_cos.min())
            stats.add("neg_cos", sim[neg].sum())
            stats.rows["hardest_cos"] = sim.masked_fill(~neg, float("-inf")).amax(-1)
            stats.rows["hardest_logit"] = logits.detach().masked_fill(~neg, float("-inf")).amax(-1)
            best_pos = torch.full((sim.shape[0],), float("-inf"), dtype=sim.dtype, device=sim.device)
            stats.rows["best_pos"] = best_pos.scatter_reduce(0, rows, pos_logit.detach(), "amax")
            if pos_prob is not None:
                stats.add("pos_prob", pos_prob.sum())
            if "is_ess_mean" in extra:
                present = table.neg.any(-1).sum()
                stats.add("is_ess", extra["is_ess_mean"].detach() * present)
                stats.add("is_ess_rows", present)
            stats.pair_extras({k: v for k, v in extra.items() if k in PAIR_MEANS or k == "row_weight_max"}, len(rows))
        return stats
