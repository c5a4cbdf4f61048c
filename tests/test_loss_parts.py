"""Every stage of ContrastiveLoss is a part, the execution options are one group (mmcl.losses.execution), and a
new layout or temperature rule is one class that both paths use.

The presets declare ``gather_distributed``, ``diagnostics``, ``blockwise`` and ``block_size`` once, as
``**execution``; ``losses.options`` still lists them (configs set them as ``loss.<option>``) and unknown
ones are refused with the valid names. MACL's reweighting is the :class:`MACLWeights` part.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from mmcl import losses
from mmcl.losses.batch import ContrastTable
from mmcl.losses.blockwise.function import BlockRunner
from mmcl.losses.blockwise.plan import Plan, TensorIndex, stacked_groups
from mmcl.losses.execution import Execution
from mmcl.losses.parts import MACLWeights, NegativeWeighting, PositiveWeights, TemperatureRule, TwoViewLayout

SOFTMAX = [name for name in losses.available() if name not in ("kcl", "align_uniform")]


def _pair(seed=0, n=6, d=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", losses.available())
def test_presets_declare_the_execution_options_once(name):
    """No preset restates an execution option in its signature; options() lists them last, with defaults."""
    cls = losses.info(name).cls
    own = [p for p in inspect.signature(cls.__init__).parameters.values() if p.kind != p.VAR_KEYWORD]
    assert not {p.name for p in own} & {"gather_distributed", "diagnostics", "blockwise", "block_size"}
    expected = {"gather_distributed": True, "diagnostics": True}
    if name in SOFTMAX:
        expected.update(blockwise=None, block_size=None)
    options = losses.options(name)
    assert list(options)[-len(expected) :] == list(expected)
    assert {key: options[key] for key in expected} == expected


@pytest.mark.parametrize("name", ["kcl", "align_uniform"])
def test_losses_without_a_blockwise_path_refuse_its_options(name):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['blockwise'\]"):
        losses.build(name, blockwise=True)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['blockwise'\] for KCLLoss|AlignUniformLoss"):
        losses.info(name).cls(blockwise=True)


def test_execution_options_reach_the_loss():
    fn = losses.build("hcl", gather_distributed=False, diagnostics=False, blockwise=True, block_size=3)
    assert fn.execution == Execution(gather_distributed=False, diagnostics=False, blockwise=True, block_size=3)
    assert (fn.gather_distributed, fn.compute_diagnostics, fn.blockwise, fn.block_size) == (False, False, True, 3)
    fn(*_pair())
    assert fn.diagnostics == {}


@pytest.mark.parametrize("bad", [{"blockwise": "yes"}, {"block_size": 0}, {"block_size": True}, {"block_size": 2.0}])
def test_execution_options_are_checked_for_every_preset(bad):
    for name in SOFTMAX:
        with pytest.raises(ValueError, match="block"):
            losses.build(name, **bad)


def test_reweighting_is_a_part():
    """``reweight="macl"`` is ``MACLWeights()``; the MACL preset's eps is the part's."""
    fn = losses.ContrastiveLoss(TwoViewLayout(), 0.2, reweight="macl")
    assert isinstance(fn.reweight, MACLWeights) and fn.reweight.eps == 0.0
    part = losses.ContrastiveLoss(TwoViewLayout(), 0.2, reweight=MACLWeights(1e-8))
    preset = losses.build("macl", temperature=0.2, alpha=0.0, eps=1e-8)
    assert preset.reweight.eps == 1e-8
    z_a, z_b = _pair(1)
    assert part(z_a, z_b).item() == pytest.approx(preset(z_a, z_b).item(), rel=1e-12)
    with pytest.raises(ValueError, match="eps .* must be >= 0"):
        MACLWeights(-1e-8)


def test_macl_weights_from_the_terms():
    """``1 / (1 - P + eps)`` with ``1 - P = -expm1(-t)``: t = log 2 gives P = 1/2 and weight 2; a term that
    rounds to 0 (P = 1) gives the largest finite weight instead of inf."""
    t = torch.tensor([math.log(2.0), 0.0, 1e-300], dtype=torch.float64)
    weights = MACLWeights()(t)
    assert weights[0].item() == pytest.approx(2.0, rel=1e-15)
    assert weights[1].item() == 1 / torch.finfo(torch.float64).tiny
    assert weights[2].item() == pytest.approx(1e300, rel=1e-12)
    assert MACLWeights(0.5)(t[:1]).item() == pytest.approx(1.0, rel=1e-15)


def test_positive_weights_is_a_part_of_the_parts_package():
    assert losses.PositiveWeights is PositiveWeights
    assert isinstance(losses.build("dclw").positive_weights, PositiveWeights)


# ---------------------------------------------------------------------------------------------------
# A new layout or temperature rule is one class: the blockwise engine reads their protocols only.


class FirstViewAnchors(losses.parts.Layout):
    """Every view a candidate, only the first view's rows anchors (SupCon's contrast_mode="one" without
    labels), for any number of views: the dense masks and the same table as a plan."""

    max_views = None

    def forward(self, batch):
        V, B, G = batch.n_views, batch.u.shape[0], batch.U.shape[0]
        rows = torch.arange(B) + batch.start
        columns = torch.arange(V * G)
        same = rows[:, None] == columns[None, :] % G
        own = same & (columns[None, :] < G)
        return ContrastTable(
            sim=batch.u @ torch.cat(batch.gathered).T,
            pos=same & ~own,
            neg=~same,
            direction=torch.zeros(B, dtype=torch.long),
            n_directions=1,
            row_instance=rows,
            cand_view=columns // G,
            nominal_negatives=V * (G - 1),
            positives_in_denominator=V > 2,
        )

    def block_plan(self, batch):
        tensors = TensorIndex()
        groups = stacked_groups(batch, tensors, anchor_views=1)
        return Plan(tensors.items, groups, 1, batch.n_views * (batch.U.shape[0] - 1), batch.n_views > 2)


class CosineTemperature(TemperatureRule):
    """A new scalar rule: tau = base * (2 - A) from the batch's mean positive cosine A."""

    def __init__(self, base: float) -> None:
        super().__init__()
        self.base = base

    def forward(self, sim, pair_cos):
        tau = self.base * (2 - pair_cos.detach().mean().to(sim.dtype))
        self.diagnostics = {"tau": tau}
        return tau

    def blockwise_unsupported(self):
        return None


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("V", [2, 3])
@pytest.mark.parametrize("negatives", [{}, {"negatives": NegativeWeighting(beta=1.0, tau_plus=0.1)}])
def test_a_new_layout_and_rule_take_the_blockwise_path_unchanged(V, negatives):
    g = torch.Generator().manual_seed(4)
    views = [torch.randn(9, 4, generator=g, dtype=torch.float64) for _ in range(V)]
    results, runners = [], []
    for blockwise in (False, True):
        fn = losses.ContrastiveLoss(
            FirstViewAnchors(), CosineTemperature(0.3), blockwise=blockwise, block_size=4, **negatives
        )
        leaves = [v.clone().requires_grad_() for v in views]
        original = BlockRunner.run
        BlockRunner.run = lambda runner, *a, original=original: runners.append(runner) or original(runner, *a)
        try:
            value = fn(*leaves)
        finally:
            BlockRunner.run = original
        results.append((value, torch.autograd.grad(value, leaves), fn.diagnostics))
    assert len(runners) == 1  # the blockwise call ran the engine, the dense one did not
    (v0, g0, d0), (v1, g1, d1) = results
    torch.testing.assert_close(v1, v0, rtol=1e-12, atol=1e-12)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert set(d0) == set(d1)
    for key in d0:
        torch.testing.assert_close(d1[key], d0[key], rtol=1e-12, atol=1e-12, msg=key)


def test_a_layout_without_a_plan_and_a_rule_without_a_form_fall_back_with_their_reasons():
    class DenseOnlyRule(CosineTemperature):
        def blockwise_unsupported(self):
            return "DenseOnlyRule looks at every entry"

    views = [torch.randn(6, 4, dtype=torch.float64) for _ in range(2)]
    with pytest.warns(UserWarning, match="DenseOnlyRule looks at every entry; using the dense path"):
        losses.ContrastiveLoss(FirstViewAnchors(), DenseOnlyRule(0.3), blockwise=True)(*views)

    class NoPlan(FirstViewAnchors):
        block_plan = losses.parts.Layout.block_plan

    with pytest.warns(UserWarning, match="NoPlan has no index plan"):
        losses.ContrastiveLoss(NoPlan(), 0.3, blockwise=True)(*views)
