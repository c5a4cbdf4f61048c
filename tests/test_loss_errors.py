"""Bad inputs and bad options: every one raises a ValueError whose message names the problem.

Spec: ../shared/spec/losses.md, section 1.7 (guards common to all losses) and each loss's "Guards".
"""

import math
import re

import pytest
import torch

from mmcl import losses
from mmcl.losses.parts import (
    AdaptiveTemperature,
    CrossViewLayout,
    DynamicTemperature,
    NegativeWeighting,
    QueueLayout,
    TwoViewLayout,
)
from tests.fixtures import fixture

ALL = [
    "nt_xent", "info_nce", "simcse", "graphcl", "dcl", "dclw", "debiased", "hcl", "supcon", "scl", "h_scl",
    "margin", "macl", "dystress", "dhel", "kcl", "align_uniform", "clip",
]  # fmt: skip
# Losses with a `temperature` option; all but MACL (whose temperature is tau0) take a rule or a dict.
TEMPERATURE = [n for n in ALL if n not in ("dystress", "kcl", "align_uniform")]
RULE_TEMPERATURE = [n for n in TEMPERATURE if n != "macl"]
LABELLED = ["supcon", "scl", "h_scl"]  # accept labels
NEEDS_LABELS = ["scl", "h_scl"]
NO_LABELS = [n for n in ALL if n not in LABELLED]
WITH_NEGATIVES = ["simcse", "info_nce"]
NO_NEGATIVES = [n for n in ALL if n not in WITH_NEGATIVES]

N, D = 8, 16
LABELS = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])


def _pair(n=N, d=D, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _labels_for(name, n=N):
    """Valid labels for the losses that need them, so that the error under test is the only one."""
    return torch.arange(n) % 2 if name in NEEDS_LABELS else None


def test_name_lists_match_the_registry():
    # Guards against the parametrisations below silently covering fewer losses.
    assert set(ALL) == set(losses.available())
    assert {n for n in ALL if "temperature" in losses.options(n)} == set(TEMPERATURE)


# ---------------------------------------------------------------------------------------------------
# Construction: names and options


def test_unknown_loss_name_lists_available_names():
    with pytest.raises(ValueError, match="unknown loss 'ntxent'") as err:
        losses.build("ntxent")
    for name in ALL + ["h_ucl"]:
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["ntxent", "", "NT_XENT"])
def test_unknown_loss_name_in_info_and_options(name):
    with pytest.raises(ValueError, match="unknown loss"):
        losses.info(name)
    with pytest.raises(ValueError, match="unknown loss"):
        losses.options(name)


@pytest.mark.parametrize("name", ALL + ["h_ucl"])
def test_unknown_option_lists_valid_options(name):
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['tempreature'\]") as err:
        losses.build(name, tempreature=0.5)
    message = str(err.value)
    assert "valid options" in message
    for option in losses.options(name):
        assert repr(option) in message


@pytest.mark.parametrize("value", [0, 0.0, -0.1, -1, float("nan")])
@pytest.mark.parametrize("name", TEMPERATURE)
def test_nonpositive_temperature_rejected_at_construction(name, value):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.build(name, temperature=value)


@pytest.mark.parametrize("value", [0, -0.2])
@pytest.mark.parametrize("rule", ["fixed", "macl"])
@pytest.mark.parametrize("name", RULE_TEMPERATURE)
def test_nonpositive_temperature_in_a_dict_rule(name, rule, value):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        losses.build(name, temperature={"rule": rule, "temperature": value})


@pytest.mark.parametrize("name", RULE_TEMPERATURE)
@pytest.mark.parametrize(
    "temperature,match",
    [
        ({"rule": "cosine", "temperature": 0.5}, "'rule' set to one of"),
        ({"temperature": 0.5}, "'rule' set to one of"),
        ("0.5", "temperature must be a number > 0"),
        (True, "temperature must be a number > 0"),
        (None, "temperature must be a number > 0"),
    ],
)
def test_malformed_temperature(name, temperature, match):
    with pytest.raises(ValueError, match=match):
        losses.build(name, temperature=temperature)


@pytest.mark.parametrize(
    "tau_min,tau_max,match",
    [
        (0.3, 0.2, "tau_min <= tau_max"),
        (0.2000001, 0.2, "tau_min <= tau_max"),
        (0.0, 0.2, "tau_min must be > 0"),
        (-0.1, 0.2, "tau_min must be > 0"),
        (0.07, 0.0, "tau_max must be > 0"),
        (0.07, -0.2, "tau_max must be > 0"),
    ],
)
def test_dystress_temperature_bounds(tau_min, tau_max, match):
    with pytest.raises(ValueError, match=match):
        losses.build("dystress", tau_min=tau_min, tau_max=tau_max)
    # The same rule put on another loss through a config dict.
    with pytest.raises(ValueError, match=match):
        losses.build("h_scl", temperature={"rule": "dystress", "tau_min": tau_min, "tau_max": tau_max})


def test_dystress_equal_bounds_are_valid():
    loss_fn = losses.build("dystress", tau_min=0.2, tau_max=0.2)
    assert torch.isfinite(loss_fn(*_pair()))


@pytest.mark.parametrize("tau_plus", [-0.1, 1.0, 1.5, float("nan")])
@pytest.mark.parametrize("name", ["debiased", "hcl"])
def test_tau_plus_outside_unit_interval(name, tau_plus):
    with pytest.raises(ValueError, match=r"tau_plus .* must be in \[0, 1\)"):
        losses.build(name, tau_plus=tau_plus)


@pytest.mark.parametrize("beta", [-0.5, -1e-9, float("nan")])
@pytest.mark.parametrize("name", ["hcl", "h_scl"])
def test_negative_beta(name, beta):
    with pytest.raises(ValueError, match="beta must be >= 0"):
        losses.build(name, beta=beta)


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("info_nce", {"direction": "both"}, "direction must be one of"),
        ("info_nce", {"direction_reduction": "max"}, "direction_reduction must be one of"),
        ("dcl", {"negative_sum": "both"}, "negative_sum must be one of"),
        ("dclw", {"sigma": 0.0}, "sigma must be > 0"),
        ("dclw", {"batch_stat_scope": "world"}, "batch_stat_scope must be one of"),
        ("hcl", {"beta_schedule": "anneal_up"}, "beta_schedule must be one of"),
        ("supcon", {"contrast_mode": "both"}, "contrast_mode must be one of"),
        ("h_scl", {"positives": "all"}, "positives must be one of"),
        ("macl", {"temperature_form": "cubic"}, "temperature_form must be one of"),
        ("macl", {"on_nonpositive_tau": "ignore"}, "on_nonpositive_tau must be one of"),
        ("macl", {"batch_stat_scope": "world"}, "batch_stat_scope must be one of"),
        ("macl", {"temperature_form": "exponential", "alpha": 0.0}, "alpha"),
        ("macl", {"tau_floor": 0.0}, "tau_floor must be > 0"),
        ("dystress", {"shape": "sine"}, "shape must be one of"),
        ("dystress", {"tau_min_schedule": "cosine"}, "tau_min_schedule must be one of"),
        ("dystress", {"shape": "shifted", "width": 0.0}, "width must be > 0"),
        ("align_uniform", {"alpha": 0.0}, "alpha must be > 0"),
        ("align_uniform", {"t": -1.0}, "t must be > 0"),
        ("kcl", {"t": 0.0}, "t must be > 0"),
        ("kcl", {"sigma2": 0.0, "variant": "waida"}, "sigma2 must be > 0"),
        ("kcl", {"kernel": "riesz", "t": 0.0}, "non-zero"),
        ("kcl", {"variant": "jensen"}, "variant must be one of"),
        ("nt_xent", {"layout": "memory_bank"}, "layout must be one of"),
        ("nt_xent", {"layout": {"name": "queue", "size": 0, "dim": 16}}, "size and dim must be >= 1"),
        ("margin", {"m1": 0.0}, "m1 must be > 0"),
    ],
)
def test_invalid_choices_and_ranges(name, options, match):
    with pytest.raises(ValueError, match=match):
        losses.build(name, **options)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"kernel": "cauchy"}, r"kernel \(variant='koromilas'\) must be one of"),
        ({"kernel": "Gaussian"}, r"kernel \(variant='koromilas'\) must be one of"),
        ({"variant": "waida", "kernel": "imq"}, r"kernel \(variant='waida'\) must be one of"),
        ({"variant": "koromilas", "kernel": "quadratic"}, r"kernel \(variant='koromilas'\) must be one of"),
    ],
)
def test_kcl_unknown_kernel(options, match):
    with pytest.raises(ValueError, match=match) as err:
        losses.build("kcl", **options)
    assert "'gaussian'" in str(err.value)  # lists the valid kernels


@pytest.mark.parametrize(
    "options,match",
    [
        ({"mode": "margin", "positive_weight": 2.0}, "belong to mode='gradient_only'"),
        ({"mode": "margin", "angle_margin": 0.1}, "belong to mode='gradient_only'"),
        ({"mode": "margin", "logit_margin": 0.1}, "belong to mode='gradient_only'"),
        ({"mode": "margin", "logit_angle_margin": 0.1}, "belong to mode='gradient_only'"),
        ({"positive_weight": 1.5}, "belong to mode='gradient_only'"),  # mode defaults to "margin"
        ({"mode": "gradient_only", "m2": 0.1}, "set m1=1, m2=m3=0"),
        ({"mode": "gradient_only", "m3": 0.1}, "set m1=1, m2=m3=0"),
        ({"mode": "gradient_only", "m1": 2.0, "positive_weight": 2.0}, "set m1=1, m2=m3=0"),
        ({"mode": "gradient", "m2": 0.1}, "mode must be one of"),
        ({"mode": "gradient_only", "positive_weight": 0.0}, "positive_weight must be > 0"),
    ],
)
def test_margin_mode_conflicts(options, match):
    with pytest.raises(ValueError, match=match):
        losses.build("margin", **options)


def test_margin_modes_valid_combinations_build():
    losses.build("margin", mode="gradient_only", positive_weight=2.0, angle_margin=0.1, logit_margin=0.1)
    losses.build("margin", mode="margin", m2=0.1, m3=0.1)


@pytest.mark.parametrize(
    "temperature",
    [
        {"rule": "dystress", "tau_min": 0.07, "tau_max": 0.2},
        {"rule": "macl", "temperature": 0.1},
        AdaptiveTemperature(0.1),
        DynamicTemperature(0.1, 0.2),
    ],
)
def test_supcon_base_temperature_needs_fixed_temperature(temperature):
    with pytest.raises(ValueError, match="base_temperature needs a fixed temperature"):
        losses.build("supcon", temperature=temperature, base_temperature=0.07)
    # Without base_temperature the same rule is fine.
    losses.build("supcon", temperature=temperature)


@pytest.mark.parametrize("base_temperature", [0.0, -0.07])
def test_supcon_nonpositive_base_temperature(base_temperature):
    with pytest.raises(ValueError, match="base_temperature must be > 0"):
        losses.build("supcon", temperature=0.1, base_temperature=base_temperature)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"objective": "decoupled", "negatives": NegativeWeighting(tau_plus=0.1)},
            r"debiasing \(tau_plus > 0\) needs the coupled objective",
        ),
        (
            {"objective": "decoupled", "positives_in_denominator": True},
            "positives_in_denominator needs the coupled objective",
        ),
        ({"objective": "decoupled", "reweight": "macl"}, "reweight='macl' needs the coupled objective"),
        (
            {"objective": "decoupled", "gradient_scaling": losses.parts.MarginGradientScaling(logit_margin=0.1)},
            "gradient_scaling with logit margins needs the coupled objective",
        ),
        ({"positive_weights": losses.PositiveWeights()}, r"positive_weights \(DCLW\) need objective='decoupled'"),
        ({"negatives": NegativeWeighting(tau_plus=0.1, split_views=True)}, "set split_views=False"),
        (
            {"positives_in_denominator": True, "negatives": NegativeWeighting(tau_plus=0.1)},
            "positives_in_denominator .* cannot be combined with debiasing",
        ),
        ({"positives_in_denominator": True, "reweight": "macl"}, "cannot be combined with debiasing, reweighting"),
        ({"objective": "contrastive"}, "objective must be one of"),
        ({"reweight": "dcl"}, "reweight must be None or 'macl'"),
        ({"reduction": "sum"}, "reduction must be one of"),
        ({"empty_negatives": "ignore"}, "empty_negatives must be one of"),
    ],
)
def test_contrastive_loss_rejects_incompatible_parts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.ContrastiveLoss(TwoViewLayout(), 0.5, **kwargs)


def test_contrastive_loss_compatible_parts_build():
    losses.ContrastiveLoss(TwoViewLayout(), 0.5, negatives=NegativeWeighting(tau_plus=0.1))
    losses.ContrastiveLoss(TwoViewLayout(), 0.5, objective="decoupled", positive_weights=losses.PositiveWeights())


@pytest.mark.parametrize(
    "layout,match",
    [
        ({"name": "cross_view", "direction": "sideways"}, "direction must be one of"),
        ({"name": "labels", "anchors": "some"}, "contrast_mode must be one of"),
        ({"name": "queue", "size": 8, "dim": 0}, "size and dim must be >= 1"),
        ({"size": 8}, "layout must be one of"),
    ],
)
def test_invalid_layout_options(layout, match):
    with pytest.raises(ValueError, match=match):
        losses.build("nt_xent", layout=layout)


# Construction errors that are not ValueErrors (or whose message does not name the problem).


@pytest.mark.parametrize(
    "temperature",
    [
        {"rule": "fixed", "temp": 0.5},
        {"rule": "dystress", "tau_min": 0.07, "tau_maximum": 0.2},
        {"rule": "fixed"},  # missing the required value
    ],
)
def test_temperature_dict_with_unknown_or_missing_key(temperature):
    with pytest.raises(ValueError, match="temperature"):
        losses.build("nt_xent", temperature=temperature)


def test_layout_dict_with_unknown_key():
    with pytest.raises(ValueError, match="layout"):
        losses.build("nt_xent", layout={"name": "queue", "size": 8, "dim": 16, "length": 3})


def test_macl_temperature_given_a_rule_dict():
    with pytest.raises(ValueError, match="temperature"):
        losses.build("macl", temperature={"rule": "fixed", "temperature": 0.1})


# ---------------------------------------------------------------------------------------------------
# Call: embeddings


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("view", ["z_a", "z_b"])
@pytest.mark.parametrize("shape", [(N * D,), (N, 2, D // 2), (N, D, 1, 1), ()])
def test_embeddings_must_be_two_dimensional(name, view, shape):
    z_a, z_b = _pair()
    bad = torch.randn(shape)
    args = (bad, z_b) if view == "z_a" else (z_a, bad)
    with pytest.raises(ValueError, match=re.escape(f"{view} must have shape (N, d), got shape {tuple(shape)}")):
        losses.build(name)(*args, labels=_labels_for(name))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(
    "shape_a,shape_b",
    [((N, D), (N, D + 1)), ((N, D), (N - 1, D)), ((N + 2, D), (N, D)), ((N, D), (2 * N, D // 2))],
)
def test_view_shapes_must_match(name, shape_a, shape_b):
    z_a, z_b = torch.randn(*shape_a), torch.randn(*shape_b)
    with pytest.raises(ValueError, match="z_a and z_b must have the same shape") as err:
        losses.build(name)(z_a, z_b, labels=_labels_for(name, shape_a[0]))
    assert str(tuple(shape_a)) in str(err.value) and str(tuple(shape_b)) in str(err.value)


@pytest.mark.parametrize("name", ALL)
def test_empty_batch(name):
    z = torch.zeros(0, D)
    with pytest.raises(ValueError, match=r"empty \(N = 0\)"):
        losses.build(name)(z, z.clone(), labels=_labels_for(name, 0))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("view", ["z_a", "z_b"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_embeddings(name, view, value):
    z_a, z_b = _pair()
    (z_a if view == "z_a" else z_b)[3, 5] = value
    with pytest.raises(ValueError, match=f"{view} contains NaN or inf"):
        losses.build(name)(z_a, z_b, labels=_labels_for(name))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("view", ["z_a", "z_b"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_non_float_embeddings(name, view, dtype):
    z_a, z_b = _pair()
    bad = torch.ones(N, D, dtype=dtype)
    args = (bad, z_b) if view == "z_a" else (z_a, bad)
    with pytest.raises(ValueError, match=f"{view} must be a floating-point tensor, got dtype {dtype}"):
        losses.build(name)(*args, labels=_labels_for(name))


@pytest.mark.parametrize("name", ALL)
def test_non_tensor_embeddings(name):
    z_a, z_b = _pair()
    with pytest.raises(ValueError, match="z_a must be a torch.Tensor"):
        losses.build(name)(z_a.tolist(), z_b, labels=_labels_for(name))
    with pytest.raises(ValueError, match="z_b must be a torch.Tensor"):
        losses.build(name)(z_a, z_b.numpy(), labels=_labels_for(name))


@pytest.mark.parametrize("name", ALL)
def test_single_pair_has_no_negatives(name):
    z_a, z_b = _pair(n=1)
    labels = torch.tensor([0]) if name in LABELLED else None
    # Losses with a fixed minimum say so; the others raise through the empty-negative-set guard.
    with pytest.raises(ValueError, match="needs at least 2 pairs.*got 1|empty negative set"):
        losses.build(name)(z_a, z_b, labels=labels)


def test_supervised_simcse_single_triplet_has_its_hard_negative():
    z_a, z_b = _pair(n=1)
    assert torch.isfinite(losses.build("simcse")(z_a, z_b, negatives=torch.randn(1, D)))


@pytest.mark.parametrize("name", ALL)
def test_two_pairs_are_enough(name):
    # The boundary of the previous guard: B = 2 is valid (for scl/h_scl: with two classes).
    z_a, z_b = _pair(n=2)
    labels = torch.tensor([0, 1]) if name in LABELLED else None
    assert torch.isfinite(losses.build(name)(z_a, z_b, labels=labels))


# ---------------------------------------------------------------------------------------------------
# Call: labels


@pytest.mark.parametrize("name", NO_LABELS)
def test_labels_rejected_by_unsupervised_losses(name):
    with pytest.raises(ValueError, match="takes no labels"):
        losses.build(name)(*_pair(), labels=LABELS)


@pytest.mark.parametrize("name", NO_LABELS)
def test_positive_mask_rejected_by_unsupervised_losses(name):
    with pytest.raises(ValueError, match="takes no positive_mask"):
        losses.build(name)(*_pair(), positive_mask=torch.eye(N, dtype=torch.bool))


@pytest.mark.parametrize("name", NEEDS_LABELS)
def test_labels_required(name):
    with pytest.raises(ValueError, match=r"needs labels= of shape \(N,\)"):
        losses.build(name)(*_pair())


def test_supcon_labels_optional():
    # supcon without labels falls back to augmentation positives (NT-Xent when tau = base tau).
    z_a, z_b = _pair(dtype=torch.float64)
    value = losses.build("supcon", temperature=0.5)(z_a, z_b)
    assert value.item() == pytest.approx(losses.build("nt_xent", temperature=0.5)(z_a, z_b).item(), abs=1e-9)


@pytest.mark.parametrize("name", LABELLED)
@pytest.mark.parametrize(
    "labels,shape",
    [
        (torch.arange(N + 1) % 2, (N + 1,)),
        (torch.arange(N - 1) % 2, (N - 1,)),
        ((torch.arange(N) % 2)[:, None], (N, 1)),
        (torch.zeros(N, 2, dtype=torch.long), (N, 2)),
        (torch.tensor(1), ()),
    ],
)
def test_labels_wrong_shape(name, labels, shape):
    expected = f"labels must be a tensor of shape (N,) = ({N},), got {shape}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        losses.build(name)(*_pair(), labels=labels)


@pytest.mark.parametrize("name", LABELLED)
def test_labels_not_a_tensor(name):
    with pytest.raises(ValueError, match="labels must be a tensor of shape"):
        losses.build(name)(*_pair(), labels=[0, 1, 0, 1, 2, 2, 3, 3])


@pytest.mark.parametrize("name", LABELLED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool, torch.complex64])
def test_labels_must_be_integers(name, dtype):
    labels = (torch.arange(N) % 2).to(dtype)
    with pytest.raises(ValueError, match=f"labels must be integers .*got dtype {dtype}"):
        losses.build(name)(*_pair(), labels=labels)


@pytest.mark.parametrize("name", LABELLED)
@pytest.mark.parametrize(
    "mask,match",
    [
        (torch.eye(N + 1, dtype=torch.bool), r"positive_mask must be a bool tensor of shape \(N, N\)"),
        (torch.eye(N), r"positive_mask must be a bool tensor of shape \(N, N\)"),
        (torch.ones(N, dtype=torch.bool), r"positive_mask must be a bool tensor of shape \(N, N\)"),
    ],
)
def test_positive_mask_wrong_shape_or_dtype(name, mask, match):
    with pytest.raises(ValueError, match=match):
        losses.build(name)(*_pair(), positive_mask=mask)


@pytest.mark.parametrize("name", NEEDS_LABELS)
def test_all_labels_identical_leaves_no_valid_anchor(name):
    with pytest.raises(ValueError, match="every anchor .* has an empty negative set .*share one class"):
        losses.build(name)(*_pair(), labels=torch.full((N,), 3))


def test_supcon_single_class_is_valid_and_finite():
    z_a, z_b = (z.requires_grad_() for z in _pair())
    loss_fn = losses.build("supcon")
    value = loss_fn(z_a, z_b, labels=torch.zeros(N, dtype=torch.long))
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(z_a.grad).all() and torch.isfinite(z_b.grad).all()
    assert loss_fn.diagnostics["neg_per_row_min"].item() == 0
    assert loss_fn.diagnostics["n_valid_anchors"].item() == 2 * N
    # Collapsed embeddings: every row is a positive, the denominator holds 2N-1 equal terms.
    z = torch.ones(N, D, dtype=torch.float64)
    collapsed = loss_fn(z, z.clone(), labels=torch.zeros(N, dtype=torch.long))
    assert collapsed.item() == pytest.approx(math.log(2 * N - 1), abs=1e-9)


def test_h_scl_single_class_anchors_are_skipped_not_raised():
    # One class alone in the batch: its anchors have no negatives and are left out (n_valid_anchors).
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])
    loss_fn = losses.build("h_scl")
    assert torch.isfinite(loss_fn(*_pair(), labels=labels))
    assert loss_fn.diagnostics["n_valid_anchors"].item() == 2 * N


# ---------------------------------------------------------------------------------------------------
# Call: extra negatives


@pytest.mark.parametrize("name", NO_NEGATIVES)
def test_negatives_rejected_by_losses_without_hard_negatives(name):
    z_a, z_b = _pair()
    with pytest.raises(ValueError, match="takes no extra negatives"):
        losses.build(name)(z_a, z_b, labels=_labels_for(name), negatives=torch.randn(N, D))


@pytest.mark.parametrize("name", WITH_NEGATIVES)
@pytest.mark.parametrize("shape", [(N, D + 1), (N + 1, D), (N - 1, D), (N,), (N, D, 1), (2 * N, D)])
def test_negatives_wrong_shape(name, shape):
    with pytest.raises(ValueError, match=rf"negatives must have shape \(N, d\) = \({N}, {D}\)"):
        losses.build(name)(*_pair(), negatives=torch.randn(*shape))


@pytest.mark.parametrize("name", WITH_NEGATIVES)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_negatives_non_finite(name, value):
    negatives = torch.randn(N, D)
    negatives[2, 2] = value
    with pytest.raises(ValueError, match="negatives contains NaN or inf"):
        losses.build(name)(*_pair(), negatives=negatives)


# ---------------------------------------------------------------------------------------------------
# Runtime guards: MACL's temperature, the debiased estimator without floor, the queue


def _anti_aligned():
    u = torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return u, -u  # every positive cosine is -1, so A = -1


def test_macl_nonpositive_temperature_raises_on_request():
    # tau = 0.1 * (1 + 2 * (-1 - 0.8)) = -0.26 <= 0
    loss_fn = losses.build("macl", alpha=2.0, A0=0.8, on_nonpositive_tau="raise")
    with pytest.raises(ValueError, match=r"MACL temperature .* = -0.26 <= 0 at alignment A = -1.0000") as err:
        loss_fn(*_anti_aligned())
    assert "on_nonpositive_tau='clamp'" in str(err.value)  # names the fix


def test_macl_positive_temperature_does_not_raise():
    loss_fn = losses.build("macl", alpha=2.0, A0=0.8, on_nonpositive_tau="raise")
    u, _ = _anti_aligned()
    assert torch.isfinite(loss_fn(u, u + 0.01))  # A ~ 1: tau = 0.1 * 1.4


def test_macl_default_clamps_and_reports():
    loss_fn = losses.build("macl", temperature=0.1, alpha=2.0, A0=0.8)
    value = loss_fn(*_anti_aligned())
    d = loss_fn.diagnostics
    assert torch.isfinite(value)
    assert d["tau_clamped"].item() == 1
    assert d["tau"].item() == pytest.approx(1e-3 * 0.1, rel=1e-12)
    assert d["alignment_A"].item() == pytest.approx(-1.0, abs=1e-12)
    # A batch that does not trigger the guard reports tau_clamped == 0.
    loss_fn(**fixture("C"))
    assert loss_fn.diagnostics["tau_clamped"].item() == 0


def test_macl_clamp_uses_the_given_floor():
    loss_fn = losses.build("macl", temperature=0.2, alpha=2.0, A0=0.8, tau_floor=0.01)
    loss_fn(*_anti_aligned())
    assert loss_fn.diagnostics["tau"].item() == pytest.approx(0.01)
    assert loss_fn.diagnostics["tau_clamped"].item() == 1


def test_debiased_without_floor_raises_on_nonpositive_mass():
    # Fixture A at tau = 0.5: M = 2 e^0 = 2 < tau+ * n * e^{pos} = 0.9 * 2 * e^2.
    loss_fn = losses.build("debiased", temperature=0.5, tau_plus=0.9, floor=False)
    with pytest.raises(ValueError, match="debiased negative mass .* is <= 0 .* keep floor=True"):
        loss_fn(**fixture("A"))
    # The floored default stays finite on the same input.
    assert torch.isfinite(losses.build("debiased", temperature=0.5, tau_plus=0.9)(**fixture("A")))


def test_queue_dim_mismatch():
    loss_fn = losses.build("nt_xent", layout={"name": "queue", "size": 8, "dim": 32, "batch_negatives": True})
    with pytest.raises(ValueError, match="QueueLayout was built with dim=32 but embeddings have d=16"):
        loss_fn(*_pair())


def test_queue_without_negatives_raises_instead_of_returning_nan():
    # Empty queue and no in-batch negatives: every anchor's negative set is empty.
    loss_fn = losses.ContrastiveLoss(QueueLayout(size=8, dim=D, batch_negatives=False), 0.5)
    loss_fn.eval()  # no enqueueing, so the queue stays empty
    with pytest.raises(ValueError, match="anchor row 0 .* has an empty negative set"):
        loss_fn(*_pair())


def test_cross_view_layout_object_guard_at_batch_of_one():
    loss_fn = losses.ContrastiveLoss(CrossViewLayout("symmetric"), 0.1)
    with pytest.raises(ValueError, match="empty negative set"):
        loss_fn(*_pair(n=1))
