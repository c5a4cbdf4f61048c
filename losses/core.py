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
  (``positives_in_denominator`` sets :math:`\\kappa = 1`, SupCon);
* decoupled: :math:`t_{ap} = -w_a \\ell_{ap} + \\log M_a` (DCL, DCLW, GraphCL, DHEL).

Row loss: the mean of its terms over its positives (0 for a row without positives, SupCon's rule);
the loss is the mean over anchor rows of each direction group, combined by mean or sum, or the flat
mean over (anchor, positive) pairs (H-SCL). Under ``torch.distributed`` the candidates are gathered
from every rank with gradient and each rank's loss is scaled so that the mean of the ranks' losses is
the global loss (see :mod:`mmcl.losses.distributed`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from mmcl.losses import blockwise, distributed
from mmcl.losses.checks import check_choice, check_embeddings, check_labels, check_negatives, normalise
from mmcl.losses.execution import BlockwiseOptions, Execution, ExecutionOptions
from mmcl.losses.parts.layouts import Batch, ContrastTable, Layout
from mmcl.losses.parts.margin import MarginGradientScaling, PositiveMargin, straight_through_scale
from mmcl.losses.parts.negatives import NegativeWeighting, masked_logsumexp
from mmcl.losses.parts.temperature import TemperatureRule, as_temperature_rule
from mmcl.losses.parts.weights import MACLWeights, PositiveWeights, as_reweighting

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["ContrastiveLoss", "EmbeddingLoss", "PositiveWeights"]


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

    def forward(
        self,
        z_a: Tensor,
        z_b: Tensor,
        labels: Tensor | None = None,
        negatives: Tensor | None = None,
        *,
        positive_mask: Tensor | None = None,
    ) -> Tensor:
        check_embeddings(z_a, z_b)
        n, d = z_a.shape
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
        batch = self._batch(z_a, z_b, labels, negatives, positive_mask)
        self._zero_norm_rows = (z_a.detach().norm(dim=1) == 0).sum() + (z_b.detach().norm(dim=1) == 0).sum()
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
    def name(self) -> str:
        """The registry name (``nt_xent``), or the class name for an unregistered loss."""
        return getattr(self, "registry_name", type(self).__name__)

    def _batch(self, z_a, z_b, labels, negatives, positive_mask) -> Batch:
        u, v = normalise(z_a), normalise(z_b)
        extra = normalise(negatives) if negatives is not None else None
        if positive_mask is not None:
            if positive_mask.shape != (u.shape[0], u.shape[0]) or positive_mask.dtype != torch.bool:
                raise ValueError(
                    f"positive_mask must be a bool tensor of shape (N, N), got {tuple(positive_mask.shape)}"
                )
            if self.world_size > 1:
                raise ValueError("positive_mask is a single-process option; pass labels= for distributed training")
        if self.world_size == 1:
            return Batch(u, v, u, v, 0, labels, extra, positive_mask)
        distributed.check_equal_local_sizes(u.shape[0])
        return Batch(
            u,
            v,
            distributed.gather_with_grad(u),
            distributed.gather_with_grad(v),
            distributed.rank() * u.shape[0],
            distributed.gather(labels) if labels is not None else None,
            distributed.gather_with_grad(extra) if extra is not None else None,
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


class ContrastiveLoss(EmbeddingLoss):
    """A contrastive loss assembled from parts; the registered losses are presets of it.

    Args:
        layout: a :class:`~losses.layouts.Layout`.
        temperature: a number (fixed), a :class:`~losses.temperature.TemperatureRule` or a
            ``{"rule": ...}`` dict.
        margin: :class:`~losses.margin.PositiveMargin` on the positive logit.
        negatives: :class:`~losses.negatives.NegativeWeighting` (tilt, debiasing, counts, split sums).
        objective: ``"coupled"`` (positive in the denominator) or ``"decoupled"``.
        positives_in_denominator: every positive of a row in every one of its denominators (SupCon).
        positive_weights: :class:`~losses.weights.PositiveWeights` on the decoupled positive term (DCLW).
        reweight: :class:`~losses.weights.MACLWeights` on each coupled term (``"macl"``: its defaults).
        gradient_scaling: :class:`~losses.margin.MarginGradientScaling` (gradient-only margin effects).
        loss_scale: constant factor (SupCon's ``tau / tau_base``).
        reduction: ``"anchors"`` (mean over rows per direction) or ``"pairs"`` (mean over all pairs).
        direction_reduction: ``"mean"`` or ``"sum"`` over the layout's direction groups.
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
        if self.positives_in_denominator and (weighting.debiases or self.reweight or self.gradient_scaling):
            raise ValueError(
                "positives_in_denominator (SupCon) cannot be combined with debiasing, reweighting or gradient scaling"
            )

    def _pair_cos(self, batch: Batch, scope: str) -> tuple[Tensor, int]:
        """Positive-pair cosines of the batch statistics' scope and the index offset of local rows in it."""
        if scope == "global":
            return batch.pair_cos, 0
        return batch.pair_cos[batch.local], batch.start

    def compute(self, batch: Batch) -> Tensor:
        if blockwise.select(self, batch):
            return blockwise.compute(self, batch)
        table = self.layout(batch)
        valid_rows = self._valid_rows(table)
        sim = table.sim
        pair_cos, _ = self._pair_cos(batch, self.temperature.batch_stat_scope)
        tau = self.temperature(sim, pair_cos)
        tau_matrix = tau.dim() > 0

        rows, cols = table.pos.nonzero(as_tuple=True)
        pos_tau = tau[rows, cols] if tau_matrix else tau
        pos_cos, pos_logit = self._positive_logit(sim[rows, cols], pos_tau)

        base_logits = sim / tau
        logits = base_logits if table.offset is None else base_logits + table.offset
        weighting = self.negative_weighting
        log_mass, diagnostics = weighting.log_mass(
            logits, base_logits, table.neg, table.nominal_negatives, table.cand_view
        )

        R = sim.shape[0]
        pos_prob = None
        if self.objective == "coupled":
            terms, pos_prob, extra = self._coupled_terms(table, rows, cols, pos_logit, pos_cos, pos_tau, log_mass, tau)
            diagnostics.update(extra)
            row_loss = self._row_mean(terms, rows, R)
        else:
            weight = 1.0
            if self.positive_weights is not None:
                scoped_cos, offset = self._pair_cos(batch, self.positive_weights.batch_stat_scope)
                row_weight = self.positive_weights(scoped_cos)[table.row_instance - offset]
                weight = row_weight[rows]
                diagnostics["pos_weight_min"], diagnostics["pos_weight_max"] = row_weight.min(), row_weight.max()
            terms = -weight * pos_logit
            align_rows = self._row_mean(terms, rows, R)
            row_loss = align_rows + log_mass
            if self.compute_diagnostics:
                with torch.no_grad():
                    diagnostics["align_term"] = self._reduce_rows(align_rows.detach(), table, valid_rows)
                    diagnostics["energy_term"] = self._reduce_rows(log_mass.detach(), table, valid_rows)

        if self.reduction == "pairs":
            pair_valid = valid_rows[rows]
            loss = self.global_mean(terms[pair_valid].sum(), pair_valid.sum())
        else:
            loss = self._reduce_rows(row_loss, table, valid_rows)
        loss = self.loss_scale * loss

        if self.compute_diagnostics:
            self.diagnostics = self._diagnostics(
                table, valid_rows, rows, cols, logits, pos_logit, pos_prob, tau, diagnostics
            )
        return loss

    def _valid_rows(self, table: ContrastTable) -> Tensor:
        has_negatives = table.neg.any(-1)
        if self.empty_negatives == "allow" or bool(has_negatives.all()):
            return torch.ones_like(has_negatives)
        if self.empty_negatives == "raise":
            bad = int((~has_negatives).nonzero()[0])
            raise ValueError(
                f"anchor row {bad} of {type(self).__name__} has an empty negative set; "
                "use a larger batch (or, for label-aware negatives, batches with more than one class)"
            )
        if not bool(has_negatives.any()):
            raise ValueError(
                f"every anchor of {type(self).__name__} has an empty negative set (all samples share one class); "
                "use batches with more than one class"
            )
        return has_negatives

    def _positive_logit(self, pos_cos: Tensor, pos_tau: Tensor, factor: Tensor | None = None) -> tuple[Tensor, Tensor]:
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
            return self._pair_terms(pos_logit, pos_cos, pos_tau, None, denominator=denominator)
        count = floor_logit = None
        if self.negative_weighting.debiases:
            count = self.negative_weighting.row_count(table.neg, table.nominal_negatives)[rows]
            floor_logit = self.temperature.floor_logit(tau)
            if floor_logit.dim() > 0:
                floor_logit = floor_logit.expand(table.sim.shape)[rows, cols]
        return self._pair_terms(pos_logit, pos_cos, pos_tau, log_mass[rows], count, floor_logit)

    def _pair_terms(
        self,
        pos_logit: Tensor,
        pos_cos: Tensor,
        pos_tau: Tensor,
        pair_log_mass: Tensor | None,
        count: Tensor | None = None,
        floor_logit: Tensor | None = None,
        denominator: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Coupled terms ``t_ap`` of (anchor, positive) pairs from per-pair vectors (P,), their detached
        positive probabilities and pair statistics; shared by the dense and the blockwise paths.

        ``pair_log_mass`` is each pair's ``log M_a``, ``count`` its ``n_a`` and ``floor_logit`` the floor of
        the debiased estimator (both only used when debiasing); ``denominator`` replaces
        ``log(e^l + M)`` (SupCon's denominator with every positive).
        """
        weighting = self.negative_weighting
        extra: dict[str, Tensor] = {}
        if denominator is None:
            if weighting.debiases:
                pair_log_mass, floor_active = weighting.debias(pos_logit, pair_log_mass, count, floor_logit)
                extra["floor_active_frac"] = floor_active.to(pos_logit.dtype).mean()
            # t = log(1 + M / e^l): exact when P is near 1, where the denominator minus the logit is not.
            terms = torch.logaddexp(torch.zeros_like(pos_logit), pair_log_mass - pos_logit)
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
            base = pair_log_mass.detach()
            # r = (1 - P^psi) / (1 - P^0) = Z^0 / Z^psi, in log space: finite when P^0 rounds to 1.
            ratio = torch.exp(torch.logaddexp(plain, base) - torch.logaddexp(virtual, base))
            terms = straight_through_scale(terms, ratio)
            extra["margin_r_mean"] = ratio.mean()
        if self.margin is not None and not self.margin.is_identity:
            plain = pos_cos.detach() / pos_tau
            base = pair_log_mass.detach()
            extra["margin_r_mean"] = torch.exp(
                torch.logaddexp(plain, base) - torch.logaddexp(pos_logit.detach(), base)
            ).mean()
            extra["margin_g_mean"] = self.margin.angle_factor(pos_cos).mean()
        return terms, pos_prob, extra

    @staticmethod
    def _row_mean(terms: Tensor, rows: Tensor, n_rows: int) -> Tensor:
        total = torch.zeros(n_rows, dtype=terms.dtype, device=terms.device).index_add(0, rows, terms)
        count = torch.bincount(rows, minlength=n_rows).clamp(min=1).to(terms.dtype)
        return total / count

    def _reduce_rows(self, row_loss: Tensor, table: ContrastTable, valid_rows: Tensor) -> Tensor:
        parts = []
        for group in range(table.n_directions):
            in_group = (table.direction == group) & valid_rows
            parts.append(
                self.global_mean(torch.where(in_group, row_loss, torch.zeros_like(row_loss)).sum(), in_group.sum())
            )
        combined = torch.stack(parts).sum()
        return combined / len(parts) if self.direction_reduction == "mean" else combined

    def _diagnostics(self, table, valid_rows, rows, cols, logits, pos_logit, pos_prob, tau, extra) -> dict[str, Tensor]:
        with torch.no_grad():
            sim, neg = table.sim.detach(), table.neg
            pos_cos = sim[rows, cols]
            out: dict[str, Tensor] = {
                "n_anchors": torch.tensor(float(sim.shape[0]), dtype=sim.dtype, device=sim.device),
                "n_valid_anchors": valid_rows.sum().to(sim.dtype),
                "pos_per_row_mean": table.pos.sum(-1).to(sim.dtype).mean(),
                "neg_per_row_min": neg.sum(-1).min().to(sim.dtype),
            }
            if tau.dim() > 0:
                used = tau.detach()[table.pos | table.neg]
                out.update(tau_mean=used.mean(), tau_min=used.min(), tau_max=used.max())
            if pos_cos.numel():
                out["pos_cos_mean"], out["pos_cos_min"] = pos_cos.mean(), pos_cos.min()
            has_neg = neg.any(-1)
            if bool(has_neg.any()):
                out["neg_cos_mean"] = sim[neg].mean()
                out["hardest_neg_cos_mean"] = sim.masked_fill(~neg, float("-inf")).amax(-1)[has_neg].mean()
                if pos_logit.numel():
                    best_pos = torch.full((sim.shape[0],), float("-inf"), dtype=sim.dtype, device=sim.device)
                    best_pos = best_pos.scatter_reduce(0, rows, pos_logit.detach(), "amax")
                    hardest = logits.detach().masked_fill(~neg, float("-inf")).amax(-1)
                    out["contrastive_acc"] = (best_pos > hardest)[has_neg & table.pos.any(-1)].float().mean()
            if pos_prob is not None and pos_prob.numel():
                out["pos_prob_mean"] = pos_prob.mean()
            out.update({k: v.detach() for k, v in self.temperature.diagnostics.items()})
            out.update({k: v.detach() for k, v in extra.items()})
        return out
