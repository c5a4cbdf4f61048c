"""Every stage of ContrastiveLoss is a part, and the execution options are one group (mmcl.losses.execution).

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
from mmcl.losses.execution import Execution
from mmcl.losses.parts import MACLWeights, PositiveWeights, TwoViewLayout

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
