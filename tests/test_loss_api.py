"""The public contract of the `losses` package: registry, call signature, dtypes, gradients, diagnostics,
schedules, the queue layout and combinations of parts.

Spec: ../shared/spec/losses.md, sections 1 (core, 1.6 diagnostics, 1.7 numerics) and 3.14 (MACL fixture C).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from mmcl import losses
from mmcl.losses.parts import QueueLayout, TwoViewLayout
from tests.fixtures import LABELS_C, NEGATIVES_C, fixture

NAMES = {
    "nt_xent", "info_nce", "simcse", "graphcl", "dcl", "dclw", "debiased", "hcl", "supcon", "scl", "h_scl",
    "margin", "macl", "dystress", "dhel", "kcl", "align_uniform", "clip",
}  # fmt: skip
ALL = sorted(NAMES)
LABELLED = {"supcon", "scl", "h_scl"}
WITH_NEGATIVES = {"simcse", "info_nce"}
FIXED_TEMPERATURE = {
    "nt_xent": 0.5, "info_nce": 0.1, "simcse": 0.05, "graphcl": 0.2, "dcl": 0.1, "dclw": 0.1, "debiased": 0.5,
    "hcl": 0.5, "supcon": 0.1, "scl": 0.5, "h_scl": 0.5, "margin": 0.5, "dhel": 0.3,
}  # fmt: skip
DECOUPLED = {"dcl", "dclw", "graphcl", "dhel"}  # no softmax of the positive
NOT_CONTRASTIVE = {"kcl", "align_uniform"}  # kernel / alignment-uniformity objectives

N, D = 8, 16
LABELS = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3])


def _pair(n=N, d=D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g).to(dtype), torch.randn(n, d, generator=g).to(dtype)


def _extras(name, n=N):
    return {"labels": LABELS[:n] if n == N else torch.arange(n) % 2} if name in LABELLED else {}


def _call(loss_fn, name, z_a, z_b):
    return loss_fn(z_a, z_b, **_extras(name, z_a.shape[0]))


# ---------------------------------------------------------------------------------------------------
# Registry


def test_available_is_exactly_the_eighteen_losses():
    names = losses.available()
    assert len(names) == len(set(names)) == 18
    assert set(names) == NAMES
    assert "h_ucl" not in names  # aliases are not listed


def test_h_ucl_alias_builds_hcl():
    alias, hcl = losses.build("h_ucl", beta=0.5), losses.build("hcl", beta=0.5)
    assert type(alias) is type(hcl)
    assert losses.info("h_ucl").name == "hcl"
    assert losses.options("h_ucl") == losses.options("hcl")
    z_a, z_b = _pair(dtype=torch.float64)
    assert alias(z_a, z_b).item() == hcl(z_a, z_b).item()


def test_available_order_matches_the_package_docstring():
    # losses/__init__.py: ``losses.available()[:3]`` is ['nt_xent', 'info_nce', 'simcse']; the table follows it.
    assert losses.available()[:3] == ["nt_xent", "info_nce", "simcse"]
    rows = [row.split()[0] for row in losses.format_table().splitlines()[2:]]
    assert rows == losses.available()


def test_format_table_lists_every_name_and_its_inputs():
    table = losses.format_table()
    rows = table.splitlines()
    assert rows[0].split() == ["name", "paper", "needs"]
    for name in NAMES:
        matching = [row for row in rows[2:] if row.split()[0] == name]
        assert len(matching) == 1, name
        assert matching[0].rstrip().endswith(losses.info(name).inputs)
    assert "h_ucl" in table
    assert "labels" in losses.info("scl").inputs and "labels" in losses.info("h_scl").inputs
    assert "negatives" in losses.info("simcse").inputs and "negatives" in losses.info("info_nce").inputs
    assert "labels" not in losses.info("nt_xent").inputs


@pytest.mark.parametrize(
    "name,expected",
    [
        ("nt_xent", {"temperature": 0.5}),
        ("info_nce", {"temperature": 0.1, "direction": "symmetric", "direction_reduction": "mean"}),
        ("simcse", {"temperature": 0.05, "hard_negative_weight": 0.0, "symmetric": False}),
        ("graphcl", {"temperature": 0.2}),
        ("dcl", {"temperature": 0.1, "negative_sum": "joint"}),
        ("dclw", {"temperature": 0.1, "sigma": 0.5, "batch_stat_scope": "local"}),
        ("debiased", {"temperature": 0.5, "tau_plus": 0.1, "floor": True}),
        ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.1, "beta_schedule": "constant"}),
        ("supcon", {"temperature": 0.1, "base_temperature": None, "contrast_mode": "all"}),
        ("scl", {"temperature": 0.5, "positives": "labels"}),
        ("h_scl", {"temperature": 0.5, "beta": 0.5, "positives": "labels"}),
        ("margin", {"temperature": 0.5, "m1": 1.0, "m2": 0.0, "m3": 0.0, "mode": "margin"}),
        ("macl", {"temperature": 0.1, "alpha": 0.5, "A0": 0.0, "on_nonpositive_tau": "clamp", "tau_floor": None}),
        ("dystress", {"tau_min": 0.07, "tau_max": 0.2, "shape": "cossin", "tau_min_schedule": "constant"}),
        ("dhel", {"temperature": 0.3, "include_augs": True}),
        ("kcl", {"variant": "koromilas", "kernel": "gaussian", "t": 2.0, "gamma": 16.0}),
        ("align_uniform", {"alpha": 2.0, "t": 2.0, "lam": 1.0}),
    ],
)
def test_options_return_the_defaults(name, expected):
    options = losses.options(name)
    for key, value in expected.items():
        assert options[key] == value, key
    assert options["gather_distributed"] is True and options["diagnostics"] is True


@pytest.mark.parametrize("name", ALL)
def test_every_option_of_every_loss_has_a_one_line_description_from_the_docstrings(name):
    descriptions = losses.describe_options(name)
    assert list(descriptions) == list(losses.options(name))
    for option, text in descriptions.items():
        plain = "\n" not in text and "``" not in text and ":class:" not in text
        assert len(text.split()) >= 3 and plain, (option, text)


def test_args_sections_are_read_as_the_registry_builds_the_options():
    from mmcl.losses.registry import argument_descriptions

    doc = """Summary.

    Args:
        beta: the tilt, continued
            on the next line with ``markup`` and :class:`~mmcl.losses.parts.Layout`.
        logit_margin, logit_angle_margin: both named: V3.
        **execution: left out,
            with its continuation: also left out.
        last: after the left-out entry.

    Returns:
        not an argument: the next section.
    """
    assert argument_descriptions(doc) == {
        "beta": "the tilt, continued on the next line with markup and Layout.",
        "logit_margin": "both named: V3.",
        "logit_angle_margin": "both named: V3.",
        "last": "after the left-out entry.",
    }
    assert losses.describe_options("dclw")["negative_sum"].startswith('"joint"')  # inherited from DCL
    assert losses.describe_options("nt_xent")["temperature"].startswith("the softmax temperature")  # from the core


@pytest.mark.parametrize("name", ALL)
def test_building_with_the_reported_defaults_is_the_default_loss(name):
    z_a, z_b = _pair(dtype=torch.float64)
    default = _call(losses.build(name), name, z_a, z_b)
    explicit = _call(losses.build(name, **losses.options(name)), name, z_a, z_b)
    assert explicit.item() == default.item()


def test_numpy_scalar_temperature_is_a_number():
    import numpy as np

    losses.build("nt_xent", temperature=np.float32(0.5))


# ---------------------------------------------------------------------------------------------------
# Calling every loss


@pytest.mark.parametrize("name", ALL)
def test_every_loss_builds_with_defaults_and_returns_a_finite_scalar(name):
    value = _call(losses.build(name), name, *_pair())
    assert isinstance(value, torch.Tensor)
    assert value.dim() == 0 and value.dtype == torch.float32
    assert torch.isfinite(value)


@pytest.mark.parametrize("name", sorted(WITH_NEGATIVES))
def test_hard_negatives_are_accepted_and_used(name):
    z_a, z_b = _pair()
    loss_fn = losses.build(name)
    plain = loss_fn(z_a, z_b)
    with_negatives = loss_fn(z_a, z_b, negatives=torch.randn(N, D, generator=torch.Generator().manual_seed(5)))
    assert torch.isfinite(with_negatives)
    assert with_negatives.item() > plain.item()  # more terms in every denominator
    assert loss_fn.diagnostics["neg_per_row_min"].item() > N - 1


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_both_views(name):
    z_a, z_b = (z.requires_grad_() for z in _pair())
    _call(losses.build(name), name, z_a, z_b).backward()
    for grad in (z_a.grad, z_b.grad):
        assert grad is not None and grad.shape == (N, D)
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["simcse", "info_nce"])
def test_gradients_reach_hard_negatives(name):
    z_a, z_b = _pair()
    negatives = torch.randn(N, D, requires_grad=True)
    losses.build(name)(z_a, z_b, negatives=negatives).backward()
    assert torch.isfinite(negatives.grad).all() and negatives.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ALL)
def test_half_precision_inputs_give_a_float32_loss(name, dtype):
    z_a, z_b = (z.requires_grad_() for z in _pair(dtype=dtype))
    value = _call(losses.build(name), name, z_a, z_b)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    # Computed in float32 from the rounded inputs: equal to the float32 loss on the same values.
    reference = _call(losses.build(name), name, z_a.detach().float(), z_b.detach().float())
    assert value.item() == pytest.approx(reference.item(), rel=1e-5, abs=1e-5)
    value.backward()
    assert z_a.grad.dtype == dtype and torch.isfinite(z_a.grad.float()).all()


@pytest.mark.parametrize("name", ALL)
def test_float64_stays_float64(name):
    z_a, z_b = (z.requires_grad_() for z in _pair(dtype=torch.float64))
    value = _call(losses.build(name), name, z_a, z_b)
    assert value.dtype == torch.float64
    value.backward()
    assert z_a.grad.dtype == torch.float64
    # float64 is really used: the float32 loss differs only by rounding.
    single = _call(losses.build(name), name, z_a.detach().float(), z_b.detach().float())
    assert single.item() == pytest.approx(value.item(), rel=1e-4, abs=1e-5)


# ---------------------------------------------------------------------------------------------------
# Diagnostics


def _stacked_cos(z_a, z_b):
    z = F.normalize(torch.cat([z_a, z_b]).double(), dim=1)
    return z @ z.T


def _hand_pos_cos_mean(name, z_a, z_b, labels=None):
    if name in LABELLED and labels is not None:
        y = torch.cat([labels, labels])
        positive = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool)
        return _stacked_cos(z_a, z_b)[positive].mean().item()
    u, v = F.normalize(z_a.double(), dim=1), F.normalize(z_b.double(), dim=1)
    return (u * v).sum(-1).mean().item()


@pytest.mark.parametrize("name", ALL)
def test_pos_cos_mean_is_the_mean_positive_cosine(name):
    z_a, z_b = _pair()
    loss_fn = losses.build(name)
    _call(loss_fn, name, z_a, z_b)
    expected = _hand_pos_cos_mean(name, z_a, z_b, LABELS if name in LABELLED else None)
    assert loss_fn.diagnostics["pos_cos_mean"].item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_pos_cos_mean_on_fixture_c(name):
    loss_fn = losses.build(name)
    extras = {"labels": LABELS_C} if name in LABELLED else {}
    loss_fn(**fixture("C"), **extras)
    c = fixture("C")
    expected = _hand_pos_cos_mean(name, c["z_a"], c["z_b"], LABELS_C if name in LABELLED else None)
    if name not in LABELLED:
        assert expected == pytest.approx((8 / 9 + 7 / 9 + 0.64 + 0.64) / 4, abs=1e-12)  # spec section 2
    assert loss_fn.diagnostics["pos_cos_mean"].item() == pytest.approx(expected, abs=1e-9)


def _c_views():
    c = fixture("C")
    return F.normalize(c["z_a"], dim=1), F.normalize(c["z_b"], dim=1)


def _hand_negative_cosines(case):
    """The cosines of every (anchor, negative) entry of the loss's layout on fixture C."""
    u, v = _c_views()
    eye4 = torch.eye(4, dtype=torch.bool)
    y = torch.cat([LABELS_C, LABELS_C])
    same = y[:, None] == y[None, :]
    S = _stacked_cos(u, v)
    eye8 = torch.eye(8, dtype=torch.bool)
    partner = torch.roll(eye8, 4, dims=1)
    if case in ("nt_xent", "dcl", "macl"):
        return [S[~eye8 & ~partner]]
    if case == "info_nce u->v":
        return [(u @ v.T)[~eye4]]
    if case == "info_nce symmetric":
        return [(u @ v.T)[~eye4], (v @ u.T)[~eye4]]
    if case == "simcse + negatives":
        negatives = F.normalize(NEGATIVES_C, dim=1)
        return [(u @ v.T)[~eye4], (u @ negatives.T).flatten()]
    if case == "dhel":
        return [(u @ u.T)[~eye4], (v @ v.T)[~eye4]]
    if case == "supcon":
        return [S[~eye8 & ~same]]
    if case == "scl":
        return [S[~same]]
    raise KeyError(case)


NEG_CASES = {
    "nt_xent": ("nt_xent", {}, {}),
    "dcl": ("dcl", {}, {}),
    "macl": ("macl", {}, {}),
    "info_nce u->v": ("info_nce", {"direction": "u->v"}, {}),
    "info_nce symmetric": ("info_nce", {"direction": "symmetric"}, {}),
    "simcse + negatives": ("simcse", {}, {"negatives": NEGATIVES_C}),
    "dhel": ("dhel", {}, {}),
    "supcon": ("supcon", {}, {"labels": LABELS_C}),
    "scl": ("scl", {}, {"labels": LABELS_C}),
}


@pytest.mark.parametrize("case", sorted(NEG_CASES))
def test_neg_cos_mean_over_the_loss_negative_set_on_fixture_c(case):
    name, options, extras = NEG_CASES[case]
    loss_fn = losses.build(name, **options)
    loss_fn(**fixture("C"), **extras)
    negatives = torch.cat(_hand_negative_cosines(case))
    assert loss_fn.diagnostics["neg_cos_mean"].item() == pytest.approx(negatives.mean().item(), abs=1e-9)


def test_neg_cos_mean_values_on_fixture_c():
    # Computed from the spec's cosine table (section 2): NT-Xent 2B layout and cross-view u->v.
    nt = losses.build("nt_xent")
    nt(**fixture("C"))
    assert nt.diagnostics["neg_cos_mean"].item() == pytest.approx(0.345, abs=1e-6)
    assert nt.diagnostics["hardest_neg_cos_mean"].item() == pytest.approx(0.84, abs=1e-6)
    assert nt.diagnostics["neg_per_row_min"].item() == 6
    info = losses.build("info_nce", direction="u->v")
    info(**fixture("C"))
    assert info.diagnostics["neg_cos_mean"].item() == pytest.approx(0.343333, abs=1e-6)
    assert info.diagnostics["hardest_neg_cos_mean"].item() == pytest.approx(0.773333, abs=1e-6)
    assert info.diagnostics["neg_per_row_min"].item() == 3


def test_hardest_neg_cos_mean_and_accuracy_by_hand():
    loss_fn = losses.build("nt_xent")
    loss_fn(**fixture("C"))
    S = _stacked_cos(*_c_views())
    eye8 = torch.eye(8, dtype=torch.bool)
    partner = torch.roll(eye8, 4, dims=1)
    hardest = S.masked_fill(eye8 | partner, -2).amax(1)
    assert loss_fn.diagnostics["hardest_neg_cos_mean"].item() == pytest.approx(hardest.mean().item(), abs=1e-9)
    accuracy = (S[partner] > hardest).double().mean().item()
    assert loss_fn.diagnostics["contrastive_acc"].item() == pytest.approx(accuracy, abs=1e-9)


@pytest.mark.parametrize("name", sorted(FIXED_TEMPERATURE))
def test_tau_of_fixed_temperature_losses(name):
    loss_fn = losses.build(name)
    _call(loss_fn, name, *_pair())
    assert loss_fn.diagnostics["tau"].item() == pytest.approx(FIXED_TEMPERATURE[name])
    loss_fn = losses.build(name, temperature=0.37)
    _call(loss_fn, name, *_pair())
    assert loss_fn.diagnostics["tau"].item() == pytest.approx(0.37)


def test_macl_alignment_and_tau_on_fixture_c():
    loss_fn = losses.build("macl")
    value = loss_fn(**fixture("C"))
    d = loss_fn.diagnostics
    assert d["alignment_A"].item() == pytest.approx(0.736667, abs=1e-6)
    assert d["tau"].item() == pytest.approx(0.136833, abs=1e-6)
    assert d["tau_clamped"].item() == 0
    assert value.item() == pytest.approx(2.118084, abs=1e-6)
    # Per-row V_i of the spec (3.14): the largest is 19.979985 (row v2).
    assert d["row_weight_max"].item() == pytest.approx(19.979985, abs=1e-5)
    v = [1.476106, 2.213357, 1.098164, 1.071840, 1.467473, 19.979985, 1.072058, 1.081496]
    assert d["row_weight_mean"].item() == pytest.approx(sum(v) / 8, abs=1e-5)


def _dystress_tau(s, tau_min=0.07, tau_max=0.2):
    return tau_min + 0.5 * (tau_max - tau_min) * (1 - torch.cos(math.pi * s))


def _dystress_used_taus_on_c():
    S = _stacked_cos(*_c_views())
    return _dystress_tau(S[~torch.eye(8, dtype=torch.bool)])  # positives and negatives, not self


def test_dystress_tau_statistics_on_fixture_c():
    loss_fn = losses.build("dystress")
    loss_fn(**fixture("C"))
    d = loss_fn.diagnostics
    assert "tau" not in d
    assert d["tau_min"].item() == pytest.approx(_dystress_used_taus_on_c().min().item(), abs=1e-9)
    assert 0.07 <= d["tau_min"].item() <= d["tau_mean"].item() <= d["tau_max"].item() <= 0.2


def test_dystress_tau_statistics_cover_only_the_entries_the_loss_uses():
    loss_fn = losses.build("dystress")
    loss_fn(**fixture("C"))
    used = _dystress_used_taus_on_c()
    assert loss_fn.diagnostics["tau_max"].item() == pytest.approx(used.max().item(), abs=1e-9)
    assert loss_fn.diagnostics["tau_mean"].item() == pytest.approx(used.mean().item(), abs=1e-9)


def test_dclw_positive_weights_on_fixture_c():
    loss_fn = losses.build("dclw", sigma=0.5)
    loss_fn(**fixture("C"))
    u, v = _c_views()
    w = 2 - 4 * torch.softmax((u * v).sum(-1) / 0.5, dim=0)
    assert loss_fn.diagnostics["pos_weight_min"].item() == pytest.approx(w.min().item(), abs=1e-9)
    assert loss_fn.diagnostics["pos_weight_max"].item() == pytest.approx(w.max().item(), abs=1e-9)
    assert w.mean().item() == pytest.approx(1.0)


# key -> the registered losses (with default options) that report it; every other loss must omit it.
SPECIFIC_KEYS = {
    "alignment_A": {"macl"},
    "tau_clamped": {"macl"},
    "row_weight_mean": {"macl"},
    "row_weight_max": {"macl"},
    "tau": set(FIXED_TEMPERATURE) | {"macl", "clip"},  # clip: its learned temperature
    "tau_mean": {"dystress"},
    "tau_min": {"dystress"},
    "tau_max": {"dystress"},
    "pos_weight_min": {"dclw"},
    "pos_weight_max": {"dclw"},
    "is_ess_mean": {"hcl", "h_scl"},
    "floor_active_frac": {"debiased", "hcl"},
    "margin_g_mean": set(),
    "margin_r_mean": set(),
    "pos_prob_mean": NAMES - DECOUPLED - NOT_CONTRASTIVE,
    "uniformity_u": {"align_uniform"},
    "uniformity_v": {"align_uniform"},
    "neg_cos_mean": NAMES - NOT_CONTRASTIVE,
    "contrastive_acc": NAMES - NOT_CONTRASTIVE,
    "loss_rows": set(),
}
# The two parts of the objective: kernel losses, alignment-uniformity and every decoupled loss (DHEL, DCL, GraphCL).
DECOUPLED = {"dhel", "dcl", "dclw", "graphcl"}
PART_KEYS = {"align_term": {"kcl", "align_uniform"} | DECOUPLED, "energy_term": {"kcl"} | DECOUPLED}


@pytest.mark.parametrize("name", ALL)
def test_diagnostics_are_detached_finite_and_only_the_applicable_keys(name):
    z_a, z_b = (z.requires_grad_() for z in _pair())
    loss_fn = losses.build(name)
    _call(loss_fn, name, z_a, z_b)
    d = loss_fn.diagnostics
    assert "pos_cos_mean" in d
    for key, value in d.items():
        assert isinstance(value, torch.Tensor), key
        assert not value.requires_grad and value.grad_fn is None, key
        assert value.numel() == 1 and torch.isfinite(value).all(), key
    for key, owners in SPECIFIC_KEYS.items():
        assert (key in d) == (name in owners), key
    for key, owners in PART_KEYS.items():
        assert (key in d) == (name in owners), key


@pytest.mark.parametrize("name", ALL)
def test_pos_cos_min_is_the_smallest_positive_cosine(name):
    z_a, z_b = _pair()
    loss_fn = losses.build(name)
    _call(loss_fn, name, z_a, z_b)
    if name in LABELLED:
        y = torch.cat([LABELS, LABELS])
        positive = (y[:, None] == y[None, :]) & ~torch.eye(2 * N, dtype=torch.bool)
        expected = _stacked_cos(z_a, z_b)[positive].min().item()
    else:
        expected = (F.normalize(z_a.double(), dim=1) * F.normalize(z_b.double(), dim=1)).sum(-1).min().item()
    assert loss_fn.diagnostics["pos_cos_min"].item() == pytest.approx(expected, abs=1e-5)


def test_diagnostics_are_replaced_on_each_call():
    loss_fn = losses.build("nt_xent")
    loss_fn(**fixture("C"))
    first = loss_fn.diagnostics["pos_cos_mean"].item()
    loss_fn(**fixture("B"))
    assert loss_fn.diagnostics["pos_cos_mean"].item() == pytest.approx(0.96, abs=1e-9) != first


def test_margin_diagnostics_appear_only_with_a_margin():
    loss_fn = losses.build("margin", m2=0.1, m3=0.1)
    loss_fn(**fixture("C"))
    assert {"margin_g_mean", "margin_r_mean"} <= set(loss_fn.diagnostics)
    assert loss_fn.diagnostics["margin_r_mean"].item() > 1  # spec 3.13: r_i > 1 with a subtractive margin
    loss_fn = losses.build("margin", mode="gradient_only", logit_margin=0.1)
    loss_fn(**fixture("C"))
    assert "margin_r_mean" in loss_fn.diagnostics and "margin_g_mean" not in loss_fn.diagnostics


def test_dhel_reports_its_alignment_and_energy_terms():
    loss_fn = losses.build("dhel")
    value = loss_fn(**fixture("C"))
    d = loss_fn.diagnostics
    assert d["align_term"].item() == pytest.approx(-(8 / 9 + 7 / 9 + 0.64 + 0.64) / 4 / 0.3, abs=1e-6)
    assert (d["align_term"] + d["energy_term"]).item() == pytest.approx(value.item(), abs=1e-9)


def test_diagnostics_can_be_switched_off():
    loss_fn = losses.build("nt_xent", diagnostics=False)
    loss_fn(*_pair())
    assert loss_fn.diagnostics == {}


# ---------------------------------------------------------------------------------------------------
# Schedules (set_progress)


def test_hcl_beta_anneals_down_with_progress():
    z_a, z_b = _pair(dtype=torch.float64)
    loss_fn = losses.build("hcl", beta=1.0, beta_schedule="anneal_down")
    weighting = loss_fn.negative_weighting
    loss_fn.set_progress(0.0)
    assert weighting.current_beta == 1.0
    start = loss_fn(z_a, z_b).item()
    assert start == pytest.approx(losses.build("hcl", beta=1.0)(z_a, z_b).item(), abs=1e-12)
    loss_fn.set_progress(0.5)
    assert 0.0 < weighting.current_beta < 1.0
    loss_fn.set_progress(1.0)
    assert weighting.current_beta == 0.0
    end = loss_fn(z_a, z_b).item()
    assert end == pytest.approx(losses.build("hcl", beta=0.0)(z_a, z_b).item(), abs=1e-12)
    assert end == pytest.approx(losses.build("debiased")(z_a, z_b).item(), abs=1e-12)  # beta = 0: debiased
    assert abs(end - start) > 1e-3
    # The constant schedule ignores progress.
    constant = losses.build("hcl", beta=1.0)
    constant.set_progress(1.0)
    assert constant(z_a, z_b).item() == pytest.approx(start, abs=1e-12)


def test_dystress_tau_min_rises_linearly_to_tau_max():
    z_a, z_b = _pair(dtype=torch.float64)
    loss_fn = losses.build("dystress", tau_min=0.07, tau_max=0.2, tau_min_schedule="linear_to_max")
    loss_fn.set_progress(0.0)
    start = loss_fn(z_a, z_b).item()
    assert start == pytest.approx(losses.build("dystress")(z_a, z_b).item(), abs=1e-12)
    loss_fn.set_progress(0.5)
    middle = loss_fn(z_a, z_b).item()
    assert loss_fn.diagnostics["tau_min"].item() >= 0.135 - 1e-12
    assert middle == pytest.approx(losses.build("dystress", tau_min=0.135, tau_max=0.2)(z_a, z_b).item(), abs=1e-12)
    loss_fn.set_progress(1.0)
    end = loss_fn(z_a, z_b).item()
    assert loss_fn.diagnostics["tau_min"].item() == pytest.approx(0.2)
    assert loss_fn.diagnostics["tau_max"].item() == pytest.approx(0.2)
    assert end == pytest.approx(losses.build("nt_xent", temperature=0.2)(z_a, z_b).item(), abs=1e-12)
    assert len({round(start, 9), round(middle, 9), round(end, 9)}) == 3


# ---------------------------------------------------------------------------------------------------
# Queue layout


def test_queue_negatives_grow_in_training_and_freeze_in_eval():
    loss_fn = losses.build("nt_xent", layout={"name": "queue", "size": 8, "dim": 16, "batch_negatives": True})
    layout = loss_fn.layout
    assert isinstance(layout, QueueLayout) and loss_fn.training
    batches = [_pair(n=3, seed=s) for s in range(6)]
    counts = []
    for z_a, z_b in batches[:4]:
        assert torch.isfinite(loss_fn(z_a, z_b))
        counts.append(int(loss_fn.diagnostics["neg_per_row_min"]))
    # 2 in-batch keys + the queue, which fills 0 -> 3 -> 6 -> 8 (full) keys.
    assert counts == [2, 5, 8, 10]
    assert int(layout.filled) == 8
    # FIFO ring buffer of the normalised keys k0..k11: k8 wrapped to slot 0, k9..k11 to slots 1..3.
    keys = torch.cat([F.normalize(z_b, dim=1) for _, z_b in batches[:4]])
    assert torch.allclose(layout.queue, torch.cat([keys[8:12], keys[4:8]]), atol=1e-6)
    assert int(layout.pointer) == 12 % 8
    loss_fn.eval()
    snapshot = layout.queue.clone()
    for z_a, z_b in batches[4:]:
        loss_fn(z_a, z_b)
        assert int(loss_fn.diagnostics["neg_per_row_min"]) == 10
    assert torch.equal(layout.queue, snapshot) and int(layout.filled) == 8


def test_queue_negatives_grow_without_batch_negatives():
    loss_fn = losses.build("nt_xent", layout={"name": "queue", "size": 8, "dim": 16, "batch_negatives": False})
    layout = loss_fn.layout
    # An empty queue without in-batch negatives gives no negatives at all (that raises, see
    # test_loss_errors.py), so start from 3 queued keys.
    layout.queue[:3] = F.normalize(torch.randn(3, 16), dim=1)
    layout.filled.fill_(3)
    layout.pointer.fill_(3)
    loss_fn(*_pair(n=4, seed=1))
    assert int(loss_fn.diagnostics["neg_per_row_min"]) == 3
    loss_fn(*_pair(n=4, seed=2))
    assert int(loss_fn.diagnostics["neg_per_row_min"]) == 7  # 3 + 4 keys
    loss_fn(*_pair(n=4, seed=3))
    assert int(loss_fn.diagnostics["neg_per_row_min"]) == 8  # full


def test_queue_state_is_in_the_state_dict():
    loss_fn = losses.build("nt_xent", layout={"name": "queue", "size": 8, "dim": 16, "batch_negatives": True})
    for seed in range(3):
        loss_fn(*_pair(n=3, seed=seed))
    state = loss_fn.state_dict()
    assert {"layout.queue", "layout.filled", "layout.pointer"} <= set(state)
    assert state["layout.queue"].shape == (8, 16)
    assert torch.equal(state["layout.queue"], loss_fn.layout.queue)
    restored = losses.build("nt_xent", layout={"name": "queue", "size": 8, "dim": 16, "batch_negatives": True})
    restored.load_state_dict(state)
    loss_fn.eval(), restored.eval()
    z_a, z_b = _pair(n=3, seed=9)
    assert restored(z_a, z_b).item() == loss_fn(z_a, z_b).item()
    assert int(restored.layout.filled) == 8 and int(restored.layout.pointer) == 1


def test_queue_supplies_negatives_for_a_single_query():
    loss_fn = losses.build("nt_xent", layout={"name": "queue", "size": 8, "dim": 16, "batch_negatives": True})
    loss_fn(*_pair(n=8))
    assert int(loss_fn.layout.filled) == 8
    assert torch.isfinite(loss_fn(*_pair(n=1, seed=3)))


# ---------------------------------------------------------------------------------------------------
# Combinations of parts


def test_h_scl_with_dystress_temperature():
    c = fixture("C")
    combo = losses.build("h_scl", temperature={"rule": "dystress", "tau_min": 0.07, "tau_max": 0.2})
    value = combo(**c, labels=LABELS_C)
    plain = losses.build("h_scl")(**c, labels=LABELS_C)
    assert torch.isfinite(value) and abs(value.item() - plain.item()) > 1e-3
    assert {"tau_mean", "tau_min", "tau_max", "is_ess_mean"} <= set(combo.diagnostics)
    assert "tau" not in combo.diagnostics
    # With tau_min = tau_max the per-entry rule is the fixed temperature.
    flat = losses.build("h_scl", temperature={"rule": "dystress", "tau_min": 0.5, "tau_max": 0.5})
    assert flat(**c, labels=LABELS_C).item() == pytest.approx(plain.item(), abs=1e-12)
    z_a, z_b = (z.requires_grad_() for z in _pair())
    combo(z_a, z_b, labels=LABELS).backward()
    assert torch.isfinite(z_a.grad).all() and z_a.grad.abs().sum() > 0


def test_dhel_with_macl_temperature():
    c = fixture("C")
    combo = losses.build("dhel", temperature={"rule": "macl", "temperature": 0.3})
    value = combo(**c)
    plain = losses.build("dhel")(**c)  # fixed tau = 0.3
    assert torch.isfinite(value) and abs(value.item() - plain.item()) > 1e-3
    A = (8 / 9 + 7 / 9 + 0.64 + 0.64) / 4
    assert combo.diagnostics["alignment_A"].item() == pytest.approx(A, abs=1e-9)
    assert combo.diagnostics["tau"].item() == pytest.approx(0.3 * (1 + 0.5 * A), abs=1e-9)
    # Equal to DHEL at the fixed temperature the rule computes.
    fixed = losses.build("dhel", temperature=0.3 * (1 + 0.5 * A))(**c)
    assert value.item() == pytest.approx(fixed.item(), abs=1e-12)


def test_custom_contrastive_loss_equals_nt_xent():
    custom = losses.ContrastiveLoss(losses.parts.TwoViewLayout(), 0.5)
    preset = losses.build("nt_xent")
    assert custom(**fixture("C")).item() == pytest.approx(1.537343, abs=1e-6)
    z_a, z_b = _pair(dtype=torch.float64)
    a1, b1 = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    a2, b2 = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    v1, v2 = custom(a1, b1), preset(a2, b2)
    assert v1.item() == pytest.approx(v2.item(), abs=1e-12)
    v1.backward(), v2.backward()
    assert torch.allclose(a1.grad, a2.grad, atol=1e-12) and torch.allclose(b1.grad, b2.grad, atol=1e-12)
    assert set(custom.diagnostics) == set(preset.diagnostics)
    assert isinstance(TwoViewLayout(), losses.parts.Layout)
