"""Every fixture value of the loss spec, in float64, to 1e-6."""

import math

import pytest
import torch

from mmcl import losses
from tests.fixtures import LABELS_C, NEGATIVES_C, fixture

L = LABELS_C
# (loss, options, fixture, call extras, expected)
CASES = [
    ("nt_xent", {"temperature": 1.0}, "A", {}, math.log(1 + 2 / math.e)),
    ("nt_xent", {"temperature": 0.5}, "A", {}, 0.239545),
    ("nt_xent", {"temperature": 0.5}, "B", {}, 0.953306),
    ("nt_xent", {"temperature": 0.5}, "C", {}, 1.537343),
    ("nt_xent", {"temperature": 0.1}, "C", {}, 1.967125),
    ("nt_xent", {"temperature": 1.0}, "S", {}, 0.637910),
    ("info_nce", {"temperature": 1.0, "direction": "u->v"}, "A", {}, 0.313262),
    ("info_nce", {"temperature": 0.5, "direction": "u->v"}, "A", {}, 0.126928),
    ("info_nce", {"temperature": 0.5, "direction": "u->v"}, "B", {}, 0.603489),
    ("info_nce", {"temperature": 0.5, "direction": "u->v"}, "C", {}, 1.082703),
    ("info_nce", {"temperature": 0.5, "direction": "v->u"}, "C", {}, 1.043438),
    ("info_nce", {"temperature": 0.5, "direction": "symmetric"}, "C", {}, 1.063071),
    ("dcl", {"temperature": 1.0}, "A", {}, math.log(2) - 1),
    ("dclw", {"temperature": 1.0}, "A", {}, -0.306853),
    ("dcl", {"temperature": 1.0, "negative_sum": "split"}, "A", {}, -1.0),
    ("dclw", {"temperature": 1.0, "negative_sum": "split"}, "A", {}, -1.0),
    ("dcl", {"temperature": 0.5}, "A", {}, -1.306853),
    ("dclw", {"temperature": 0.5}, "A", {}, -1.306853),
    ("dcl", {"temperature": 0.5, "negative_sum": "split"}, "A", {}, -2.0),
    ("dcl", {"temperature": 0.5}, "B", {}, 0.466417),
    ("dclw", {"temperature": 0.5}, "B", {}, 0.466417),
    ("dcl", {"temperature": 0.5, "negative_sum": "split"}, "B", {}, 1.464993),
    ("dclw", {"temperature": 0.5, "negative_sum": "split"}, "B", {}, 1.464993),
    ("dcl", {"temperature": 0.1}, "C", {}, 1.195898),
    ("dclw", {"temperature": 0.1}, "C", {}, 1.420059),
    ("dcl", {"temperature": 0.1, "negative_sum": "split"}, "C", {}, 6.908085),
    ("dclw", {"temperature": 0.1, "negative_sum": "split"}, "C", {}, 7.132246),
    ("dcl", {"temperature": 0.5}, "C", {}, 1.264068),
    ("dclw", {"temperature": 0.5}, "C", {}, 1.308900),
    ("dcl", {"temperature": 0.5, "negative_sum": "split"}, "C", {}, 2.549050),
    ("dclw", {"temperature": 0.5, "negative_sum": "split"}, "C", {}, 2.593882),
    ("dcl", {"temperature": 1.0}, "C", {}, 1.470702),
    ("dclw", {"temperature": 1.0}, "C", {}, 1.493118),
    ("dcl", {"temperature": 1.0, "negative_sum": "split"}, "C", {}, 2.275514),
    ("dclw", {"temperature": 1.0, "negative_sum": "split"}, "C", {}, 2.297930),
    ("dcl", {"temperature": 1.0}, "S", {}, -0.113706),
    ("dclw", {"temperature": 1.0}, "S", {}, -0.113706),
    ("dcl", {"temperature": 1.0, "negative_sum": "split"}, "S", {}, -0.613706),
    ("dclw", {"temperature": 1.0, "negative_sum": "split"}, "S", {}, -0.613706),
    ("debiased", {"temperature": 1.0, "tau_plus": 0.1}, "A", {}, 0.467054),
    ("debiased", {"temperature": 0.5, "tau_plus": 0.1}, "A", {}, 0.075592),
    ("debiased", {"temperature": 0.5, "tau_plus": 0.1}, "B", {}, 0.844567),
    ("debiased", {"temperature": 0.5, "tau_plus": 0.1}, "C", {}, 1.461928),
    ("debiased", {"temperature": 0.5, "tau_plus": 0.3}, "C", {}, 1.273588),
    ("debiased", {"temperature": 0.5, "tau_plus": 0.5}, "C", {}, 1.061199),
    ("debiased", {"temperature": 0.5, "tau_plus": 0.7}, "C", {}, 0.772038),
    ("debiased", {"temperature": 0.5, "tau_plus": 0.9}, "C", {}, 0.486793),
    ("hcl", {"temperature": 1.0, "beta": 1.0, "tau_plus": 0.1}, "A", {}, 0.467054),
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.1}, "A", {}, 0.075592),
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.1}, "B", {}, 0.875871),
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.0}, "B", {}, 0.978653),
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.1}, "C", {}, 1.764858),
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.0}, "C", {}, 1.796992),
    ("hcl", {"temperature": 0.5, "beta": 0.0, "tau_plus": 0.0}, "C", {}, 1.537343),
    ("hcl", {"temperature": 0.5, "beta": 200.0, "tau_plus": 0.0}, "C", {}, 2.140586),
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.3}, "C", {}, 1.664238),
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.5}, "C", {}, 1.588842),
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.7}, "C", {}, 1.452189),
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.9}, "C", {}, 1.576319),
    ("scl", {}, "C", {"labels": L}, 1.598520),
    ("h_scl", {"beta": 0.5}, "C", {"labels": L}, 1.743277),
    ("h_scl", {"beta": 1.0}, "C", {"labels": L}, 1.848650),
    ("h_scl", {"beta": 1.0, "positives": "augmentation"}, "C", {"labels": L}, 1.641139),
    ("scl", {}, "B", {"labels": torch.tensor([0, 0, 1])}, 1.336297),
    ("h_scl", {"beta": 1.0}, "B", {"labels": torch.tensor([0, 0, 1])}, 1.352431),
    ("h_scl", {"beta": 1.0}, "B", {"labels": torch.tensor([0, 1, 2])}, 0.978653),
    ("h_scl", {"beta": 0.0}, "B", {"labels": torch.tensor([0, 1, 2])}, 0.953306),
    ("supcon", {"temperature": 0.1}, "C", {"labels": L}, 3.267125),
    ("supcon", {"temperature": 0.1, "base_temperature": 0.07}, "C", {"labels": L}, 4.667321),
    ("supcon", {"temperature": 0.5}, "C", {"labels": L}, 1.797343),
    ("supcon", {"temperature": 0.5, "contrast_mode": "one"}, "C", {"labels": L}, 1.797542),
    ("supcon", {"temperature": 0.1, "contrast_mode": "one"}, "C", {"labels": L}, 3.259877),
    ("supcon", {"temperature": 0.5}, "C", {"labels": torch.arange(4)}, 1.537343),
    ("supcon", {"temperature": 0.5}, "B", {"labels": torch.tensor([0, 0, 1])}, 1.371084),
    ("simcse", {}, "C", {}, 1.952175),
    ("simcse", {}, "C", {"negatives": NEGATIVES_C}, 3.160709),
    ("simcse", {"hard_negative_weight": 1.0}, "C", {"negatives": NEGATIVES_C}, 3.211982),
    ("graphcl", {}, "C", {}, 0.496232),
    ("graphcl", {}, "B", {}, -1.379583),
    ("dhel", {"temperature": 1.0}, "A", {}, -1.0),
    ("dhel", {"temperature": 1.0, "include_augs": False}, "A", {}, -1.0),
    ("dhel", {"temperature": 0.5}, "A", {}, -2.0),
    ("dhel", {"temperature": 0.5, "include_augs": False}, "A", {}, -2.0),
    ("dhel", {"temperature": 0.5}, "B", {}, math.log(4)),
    ("dhel", {"temperature": 0.1}, "B", {}, math.log(4)),
    ("dhel", {"temperature": 0.5, "include_augs": False}, "B", {}, -0.266853),
    ("dhel", {"temperature": 0.3}, "C", {}, 2.986322),
    ("dhel", {"temperature": 0.3, "include_augs": False}, "C", {}, 0.200971),
    ("dhel", {"temperature": 0.5}, "C", {}, 2.492891),
    ("dhel", {"temperature": 0.5, "include_augs": False}, "C", {}, 0.466975),
    ("dhel", {"temperature": 1.0}, "S", {}, -0.613706),
    ("dhel", {"temperature": 1.0, "include_augs": False}, "S", {}, -0.806853),
    ("kcl", {}, "A", {}, -2 + 32 * math.exp(-4)),
    ("kcl", {"variant": "waida"}, "A", {}, -1 + 8 * math.exp(-2)),
    ("kcl", {}, "B", {}, 2.293479),
    ("kcl", {"variant": "waida"}, "B", {}, 2.136042),
    ("kcl", {}, "C", {}, 5.801779),
    ("kcl", {"variant": "waida"}, "C", {}, 2.519031),
    ("kcl", {}, "S", {}, -1.920680),
    ("kcl", {"variant": "waida", "kernel": "quadratic"}, "C", {}, 0.953707),
    ("kcl", {"kernel": "log"}, "C", {}, -17.257680),
    ("kcl", {"kernel": "imq"}, "C", {}, 26.141564),
    ("kcl", {"kernel": "riesz"}, "C", {}, 56.745915),
    ("kcl", {"kernel": "gaussian_riesz"}, "C", {}, 60.746730),
    ("margin", {"temperature": 0.5}, "C", {}, 1.537343),
    ("margin", {"temperature": 0.5, "m2": 0.1}, "C", {}, 1.646009),
    ("margin", {"temperature": 0.5, "m3": 0.1}, "C", {}, 1.694237),
    ("margin", {"temperature": 0.5, "m2": 0.1, "m3": 0.1}, "C", {}, 1.807069),
    ("margin", {"temperature": 0.1, "m2": 0.1}, "C", {}, 2.488048),
    ("margin", {"temperature": 0.1, "m3": 0.1}, "C", {}, 2.714182),
    ("margin", {"temperature": 0.1, "m2": 0.1, "m3": 0.1}, "C", {}, 3.283318),
    *[
        ("margin", {"temperature": 0.5, "m2": m}, "C", {}, x)
        for m, x in zip([0.05, 0.2, 0.3], [1.589937, 1.768339, 1.903659])
    ],
    *[
        ("margin", {"temperature": 0.5, "m3": m}, "C", {}, x)
        for m, x in zip([0.05, 0.2, 0.3], [1.614990, 1.857197, 2.025565])
    ],
    (
        "margin",
        {"temperature": 0.5, "m2": 0.1, "m3": 0.1, "layout": {"name": "cross_view", "direction": "symmetric"}},
        "C",
        {},
        1.289611,
    ),
    ("macl", {}, "C", {}, 2.118084),
    ("macl", {"layout": {"name": "cross_view", "direction": "u->v"}}, "C", {}, 1.709471),
    ("macl", {"layout": {"name": "cross_view", "direction": "v->u"}}, "C", {}, 1.736950),
    ("macl", {"layout": {"name": "cross_view", "direction": "symmetric"}}, "C", {}, 1.723210),
    (
        "macl",
        {"layout": {"name": "cross_view", "direction": "symmetric"}, "direction_reduction": "sum"},
        "C",
        {},
        3.446421,
    ),
    ("macl", {"temperature_form": "exponential", "alpha": 2.0, "layout": {"name": "cross_view"}}, "C", {}, 1.661788),
    ("macl", {"alpha": 1.0, "layout": {"name": "cross_view"}}, "C", {}, 1.654509),
    ("macl", {"reweight": False}, "C", {}, 1.666349),
    ("macl", {"alpha": 0.0}, "C", {}, 2.389885),
    ("dystress", {"tau_min": 0.07, "tau_max": 0.2}, "C", {}, 1.454346),
    ("dystress", {"tau_min": 0.1, "tau_max": 0.2}, "C", {}, 1.434663),
    ("dystress", {"tau_min": 0.5, "tau_max": 0.5}, "C", {}, 1.537343),
]


@pytest.mark.parametrize("name,options,fixture_name,extras,expected", CASES)
def test_fixture_value(name, options, fixture_name, extras, expected):
    loss_fn = losses.build(name, **options)
    value = loss_fn(**fixture(fixture_name), **extras)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "fixture_name,align,unif_u,unif_v",
    [
        ("A", 0.0, -4.0, -4.0),
        ("B", 0.08, -2.08, -2.08),
        ("C", 0.526667, -1.602115, -1.566219),
        ("S", 0.0, -6.0, -6.0),
    ],
)
def test_align_uniform_fixtures(fixture_name, align, unif_u, unif_v):
    loss_fn = losses.build("align_uniform")
    value = loss_fn(**fixture(fixture_name))
    d = loss_fn.diagnostics
    assert d["align_term"].item() == pytest.approx(align, abs=1e-6)
    assert d["uniformity_u"].item() == pytest.approx(unif_u, abs=1e-6)
    assert d["uniformity_v"].item() == pytest.approx(unif_v, abs=1e-6)
    assert value.item() == pytest.approx(align + (unif_u + unif_v) / 2, abs=1e-6)
