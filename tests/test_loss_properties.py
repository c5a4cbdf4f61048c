"""Checkable properties of the loss spec (../shared/spec/losses.md, section 4; formulas of section 3).

Covers closed forms (4.1), reductions (4.2), invariances (4.3), bounds (4.4), gradient identities
(4.5, with autograd), the U-statistic property (4.6) and numerics (1.7). Everything runs in float64
unless a test is about other dtypes. Fixture *values* are in ``test_loss_fixtures.py``; the few spec
numbers used here are gradients and per-row factors that the fixture tests do not cover.

Gradients with respect to the cosine entries of a row (the form in which the spec states its gradient
identities) are read with :class:`CosineProbe`: a layout wrapper that replaces the layout's cosine
matrix by a leaf tensor of the same values, so ``d loss / d sim[k, l]`` is the derivative with respect
to anchor row ``k``'s own entry ``l`` (each table entry belongs to exactly one anchor row).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmcl import losses
from mmcl.losses.parts import Layout
from mmcl.losses.parts.layouts import ContrastTable

DT = torch.float64
TOL = 1e-9


# ---------------------------------------------------------------------------------------------------
# helpers


def close(actual, expected, tol=TOL):
    actual = torch.as_tensor(actual, dtype=DT)
    expected = torch.as_tensor(expected, dtype=DT)
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_pairs(B: int, d: int, seed: int, noise: float = 0.8, dtype=DT):
    """Raw (unnormalised, variously scaled) correlated views."""
    g = gen(seed)
    z_a = torch.randn(B, d, generator=g, dtype=DT)
    z_b = z_a + noise * torch.randn(B, d, generator=g, dtype=DT)
    z_a = z_a * torch.exp(torch.randn(B, 1, generator=g, dtype=DT))
    z_b = z_b * torch.exp(torch.randn(B, 1, generator=g, dtype=DT))
    return z_a.to(dtype), z_b.to(dtype)


def rand_negatives(B: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(B, d, generator=gen(seed + 1000), dtype=DT)


def unit(z: torch.Tensor) -> torch.Tensor:
    return z / z.norm(dim=1, keepdim=True)


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=DT))
    return q * torch.sign(torch.diagonal(r))


def simplex(B: int, d: int, seed: int) -> torch.Tensor:
    """B unit vectors of a regular simplex (pairwise cosine -1/(B-1)) in R^d, B <= d+1, randomly placed
    and with random positive row scales (every loss normalises)."""
    assert B <= d + 1
    centred = torch.eye(B, dtype=DT) - 1.0 / B  # centred one-hot vectors, in the sum-zero subspace
    basis = torch.linalg.svd(centred).Vh[: B - 1].T  # orthonormal basis of that subspace, (B, B-1)
    coords = centred @ basis  # (B, B-1), isometric copy
    embed, _ = torch.linalg.qr(torch.randn(d, B - 1, generator=gen(seed), dtype=DT))  # (d, B-1) orthonormal
    points = coords @ embed.T
    scales = torch.exp(torch.randn(B, 1, generator=gen(seed + 1), dtype=DT))
    return points * scales


def value_and_grads(loss_fn, z_a, z_b, labels=None, negatives=None):
    """Loss value and the gradients with respect to z_a, z_b (and the negatives when given). Labels are
    passed only to losses that take them (so a supervised loss can be compared with an unsupervised one)."""
    if not loss_fn.accepts_labels:
        labels = None
    leaves = [z_a.detach().clone().requires_grad_(True), z_b.detach().clone().requires_grad_(True)]
    if negatives is not None:
        leaves.append(negatives.detach().clone().requires_grad_(True))
    loss = loss_fn(leaves[0], leaves[1], labels=labels, negatives=leaves[2] if negatives is not None else None)
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), grads


def assert_same_value_and_grad(fn_a, fn_b, z_a, z_b, tol=TOL, **extras):
    va, ga = value_and_grads(fn_a, z_a, z_b, **extras)
    vb, gb = value_and_grads(fn_b, z_a, z_b, **extras)
    close(va, vb, tol)
    for x, y in zip(ga, gb):
        close(x, y, tol)


class CosineProbe(Layout):
    """Wraps a layout and swaps its cosine matrix for a leaf tensor with the same values."""

    def __init__(self, inner: Layout) -> None:
        super().__init__()
        self.inner = inner
        self.sim = None
        self.table = None

    def forward(self, batch):
        table = self.inner(batch)
        self.sim = table.sim.detach().clone().requires_grad_(True)
        table.sim = self.sim
        self.table = table
        return table


def cosine_grad(loss_fn, z_a, z_b, **extras):
    """(loss, cosine table, d loss / d table entries, the table) through a :class:`CosineProbe`."""
    probe = CosineProbe(loss_fn.layout)
    loss_fn.layout = probe
    loss = loss_fn(z_a, z_b, **extras)
    (grad,) = torch.autograd.grad(loss, probe.sim)
    return loss.detach(), probe.sim.detach(), grad, probe.table


class FixedTable(Layout):
    """A layout returning one fixed single-direction table (ignores the embeddings)."""

    def __init__(self, sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> None:
        super().__init__()
        self.values, self.pos, self.neg = sim, pos, neg
        self.sim = None

    def forward(self, batch):
        R, C = self.values.shape
        self.sim = self.values.detach().clone().requires_grad_(True)
        return ContrastTable(
            sim=self.sim,
            pos=self.pos,
            neg=self.neg,
            direction=torch.zeros(R, dtype=torch.long),
            n_directions=1,
            row_instance=torch.zeros(R, dtype=torch.long),
            cand_view=torch.zeros(C, dtype=torch.long),
            nominal_negatives=C - 1,
        )


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def stacked_cosines(z_a, z_b):
    z = unit(torch.cat([z_a, z_b]))
    return z @ z.T


# ---------------------------------------------------------------------------------------------------
# 4.1 closed forms

CONFIGS = [(3, 2, 1.0), (5, 4, 0.23), (7, 11, 0.61)]  # (B, d, tau), B <= d + 1


def collapsed_inputs(B, d, seed):
    g = gen(seed)
    row = torch.randn(1, d, generator=g, dtype=DT)
    scales = lambda: torch.exp(torch.randn(B, 1, generator=g, dtype=DT))  # noqa: E731
    return row * scales(), row * scales(), row * scales()


def collapsed_cases(B, tau):
    labels = torch.tensor([k % 2 for k in range(B)])  # two classes present
    lse = math.log(2 * B - 1)
    cases = [
        ("nt_xent", {"temperature": tau}, {}, lse),
        ("hcl", {"temperature": tau, "beta": 0.0, "tau_plus": 0.0}, {}, lse),
        ("hcl", {"temperature": tau, "beta": 1.0, "tau_plus": 0.1}, {}, lse),
        ("hcl", {"temperature": tau, "beta": 7.0, "tau_plus": 0.4}, {}, lse),
        ("h_ucl", {"temperature": tau, "beta": 2.0, "tau_plus": 0.0, "floor": False}, {}, lse),
        ("debiased", {"temperature": tau, "tau_plus": 0.0}, {}, lse),
        ("debiased", {"temperature": tau, "tau_plus": 0.3}, {}, lse),
        ("supcon", {"temperature": tau}, {}, lse),
        ("supcon", {"temperature": tau}, {"labels": labels}, lse),
        ("supcon", {"temperature": tau, "contrast_mode": "one"}, {"labels": labels}, lse),
        ("scl", {"temperature": tau}, {"labels": labels}, lse),
        ("h_scl", {"temperature": tau, "beta": 1.5}, {"labels": labels}, lse),
        ("h_scl", {"temperature": tau, "beta": 1.5, "positives": "augmentation"}, {"labels": labels}, lse),
        ("dcl", {"temperature": tau}, {}, math.log(2 * B - 2)),
        ("dclw", {"temperature": tau}, {}, math.log(2 * B - 2)),
        ("dcl", {"temperature": tau, "negative_sum": "split"}, {}, 2 * math.log(B - 1) + 1 / tau),
        ("dhel", {"temperature": tau, "include_augs": False}, {}, math.log(B - 1)),
        ("dhel", {"temperature": tau}, {}, 2 * math.log(B - 1) + 1 / tau),
        ("graphcl", {"temperature": tau}, {}, math.log(B - 1)),
        ("info_nce", {"temperature": tau, "direction": "u->v"}, {}, math.log(B)),
        ("simcse", {"temperature": tau}, {}, math.log(B)),
        ("kcl", {"t": 1.3, "gamma": 5.0}, {}, -2 + 2 * 5.0),
        ("kcl", {"variant": "waida", "sigma2": 0.7, "lam": 3.0}, {}, -1 + 3.0),
        ("align_uniform", {"t": 1.7, "lam": 2.5}, {}, 0.0),
    ]
    for log_alpha in (0.0, 0.7, -0.5):
        cases.append(
            (
                "simcse",
                {"temperature": tau, "hard_negative_weight": log_alpha},
                {"negatives": True},
                math.log(2 * B - 1 + math.exp(log_alpha)),
            )
        )
    return cases


@pytest.mark.parametrize("B,d,tau", CONFIGS)
def test_collapsed_closed_forms(B, d, tau):
    z_a, z_b, z_n = collapsed_inputs(B, d, seed=B)
    for name, options, extras, expected in collapsed_cases(B, tau):
        extras = dict(extras)
        if extras.get("negatives"):
            extras["negatives"] = z_n
        value = losses.build(name, **options)(z_a, z_b, **extras)
        assert value.item() == pytest.approx(expected, abs=TOL), (name, options)


def test_collapsed_align_uniform_terms():
    z_a, z_b, _ = collapsed_inputs(5, 4, seed=3)
    loss_fn = losses.build("align_uniform")
    loss_fn(z_a, z_b)
    for key in ("align_term", "uniformity_u", "uniformity_v"):
        assert loss_fn.diagnostics[key].item() == pytest.approx(0.0, abs=TOL)


def simplex_cases(B, tau):
    e = math.exp(-B / ((B - 1) * tau))
    t, gamma, sigma2, lam = 1.3, 5.0, 0.7, 3.0
    return [
        ("nt_xent", {"temperature": tau}, math.log(1 + (2 * B - 2) * e)),
        ("info_nce", {"temperature": tau, "direction": "u->v"}, math.log(1 + (B - 1) * e)),
        ("dcl", {"temperature": tau}, math.log(2 * B - 2) - (1 + 1 / (B - 1)) / tau),
        ("dclw", {"temperature": tau}, math.log(2 * B - 2) - (1 + 1 / (B - 1)) / tau),
        ("dcl", {"temperature": tau, "negative_sum": "split"}, 2 * math.log(B - 1) - (B + 1) / ((B - 1) * tau)),
        ("dhel", {"temperature": tau, "include_augs": False}, math.log(B - 1) - B / ((B - 1) * tau)),
        ("dhel", {"temperature": tau}, 2 * math.log(B - 1) - (B + 1) / ((B - 1) * tau)),
        ("graphcl", {"temperature": tau}, math.log(B - 1) - B / ((B - 1) * tau)),
        ("kcl", {"t": t, "gamma": gamma}, -2 + 2 * gamma * math.exp(-2 * t * B / (B - 1))),
        (
            "kcl",
            {"variant": "waida", "sigma2": sigma2, "lam": lam},
            -1 + lam * math.exp(-2 * B / ((B - 1) * sigma2)),
        ),
        ("align_uniform", {"t": t, "lam": 1.0}, -2 * t * B / (B - 1)),
    ]


@pytest.mark.parametrize("B,d,tau", CONFIGS)
def test_simplex_closed_forms(B, d, tau):
    z = simplex(B, d, seed=10 + B)
    z_b = z * torch.exp(torch.randn(B, 1, generator=gen(99), dtype=DT))  # u = v after normalisation
    for name, options, expected in simplex_cases(B, tau):
        value = losses.build(name, **options)(z, z_b)
        assert value.item() == pytest.approx(expected, abs=TOL), (name, options)


@pytest.mark.parametrize("B,d,tau", CONFIGS)
def test_simplex_uniformity_and_alignment_terms(B, d, tau):
    z = simplex(B, d, seed=20 + B)
    loss_fn = losses.build("align_uniform", t=tau * 3)
    loss_fn(z, z.clone())
    assert loss_fn.diagnostics["align_term"].item() == pytest.approx(0.0, abs=TOL)
    for key in ("uniformity_u", "uniformity_v"):
        assert loss_fn.diagnostics[key].item() == pytest.approx(-2 * (tau * 3) * B / (B - 1), abs=TOL)


# ---------------------------------------------------------------------------------------------------
# 4.2 reductions (value and gradient on random inputs)

B_R, D_R, TAU_R = 6, 5, 0.37
LABELS_R = torch.tensor([0, 1, 0, 2, 1, 2])
DISTINCT_R = torch.tensor([4, 0, 5, 2, 1, 3])
REDUCTION_SEEDS = [1, 2]


def build(name, **options):
    return losses.build(name, **options)


REDUCTIONS = [
    # (id, (name, options), (name, options), extras)
    ("hcl(0,0)=nt_xent", ("hcl", {"beta": 0.0, "tau_plus": 0.0}), ("nt_xent", {}), {}),
    ("debiased(0)=nt_xent", ("debiased", {"tau_plus": 0.0}), ("nt_xent", {}), {}),
    ("hcl(0,0)=debiased(0)", ("hcl", {"beta": 0.0, "tau_plus": 0.0}), ("debiased", {"tau_plus": 0.0}), {}),
    ("hcl(0,0.1)=debiased(0.1)", ("hcl", {"beta": 0.0, "tau_plus": 0.1}), ("debiased", {"tau_plus": 0.1}), {}),
    ("hcl(0,0.6)=debiased(0.6)", ("hcl", {"beta": 0.0, "tau_plus": 0.6}), ("debiased", {"tau_plus": 0.6}), {}),
    (
        "hcl(0,0.02,nofloor)=debiased(0.02,nofloor)",
        ("hcl", {"beta": 0.0, "tau_plus": 0.02, "floor": False}),
        ("debiased", {"tau_plus": 0.02, "floor": False}),
        {},
    ),
    ("scl(distinct)=nt_xent", ("scl", {}), ("nt_xent", {}), {"labels": DISTINCT_R}),
    ("h_scl(0,distinct)=nt_xent", ("h_scl", {"beta": 0.0}), ("nt_xent", {}), {"labels": DISTINCT_R}),
    *[
        (
            f"h_scl({beta},distinct)=hcl({beta},0,nofloor)",
            ("h_scl", {"beta": beta}),
            ("hcl", {"beta": beta, "tau_plus": 0.0, "floor": False}),
            {"labels": DISTINCT_R},
        )
        for beta in (0.5, 1.0, 3.0)
    ],
    (
        "h_scl(1,distinct,detached)=hcl(1,0,detached)",
        ("h_scl", {"beta": 1.0, "detach_weights": True}),
        ("hcl", {"beta": 1.0, "tau_plus": 0.0, "floor": False, "detach_weights": True}),
        {"labels": DISTINCT_R},
    ),
    ("h_scl(0)=scl", ("h_scl", {"beta": 0.0}), ("scl", {}), {"labels": LABELS_R}),
    (
        "h_scl(0,aug)=scl(aug)",
        ("h_scl", {"beta": 0.0, "positives": "augmentation"}),
        ("scl", {"positives": "augmentation"}),
        {"labels": LABELS_R},
    ),
    ("macl(alpha=0,no reweight)=nt_xent", ("macl", {"alpha": 0.0, "reweight": False}), ("nt_xent", {}), {}),
    ("dystress(tmin=tmax)=nt_xent", ("dystress", {}), ("nt_xent", {}), {}),
    ("margin(0)=nt_xent", ("margin", {}), ("nt_xent", {}), {}),
    ("margin(m1=1,m2=m3=0)=nt_xent", ("margin", {"m1": 1.0, "m2": 0.0, "m3": 0.0}), ("nt_xent", {}), {}),
    ("gradient_only(identity)=nt_xent", ("margin", {"mode": "gradient_only"}), ("nt_xent", {}), {}),
    (
        "gradient_only(w=1,ma=0,ml=0)=nt_xent",
        (
            "margin",
            {
                "mode": "gradient_only",
                "positive_weight": 1.0,
                "angle_margin": 0.0,
                "angle_normalise": True,
                "logit_margin": 0.0,
                "logit_angle_margin": 0.0,
            },
        ),
        ("nt_xent", {}),
        {},
    ),
    (
        "cross_view margin(0)=info_nce",
        ("margin", {"layout": {"name": "cross_view", "direction": "symmetric"}}),
        ("info_nce", {"direction": "symmetric"}),
        {},
    ),
]


def _with_temperature(name, options):
    options = dict(options)
    if name == "macl":
        options.setdefault("temperature", TAU_R)
    elif name == "dystress":
        options.update(tau_min=TAU_R, tau_max=TAU_R)
    elif name not in ("kcl", "align_uniform"):
        options.setdefault("temperature", TAU_R)
    return options


@pytest.mark.parametrize("seed", REDUCTION_SEEDS)
@pytest.mark.parametrize("case", REDUCTIONS, ids=[c[0] for c in REDUCTIONS])
def test_reduction(case, seed):
    _, (name_a, opts_a), (name_b, opts_b), extras = case
    z_a, z_b = rand_pairs(B_R, D_R, seed)
    fn_a = build(name_a, **_with_temperature(name_a, opts_a))
    fn_b = build(name_b, **_with_temperature(name_b, opts_b))
    assert_same_value_and_grad(fn_a, fn_b, z_a, z_b, **extras)


def test_reduction_debiased_floor_is_exercised():
    """The tau_plus = 0.6 reduction above is only meaningful if some floors are active."""
    z_a, z_b = rand_pairs(B_R, D_R, REDUCTION_SEEDS[0])
    fn = build("debiased", temperature=TAU_R, tau_plus=0.6)
    fn(z_a, z_b)
    assert 0 < fn.diagnostics["floor_active_frac"].item() <= 1


@pytest.mark.parametrize("seed", REDUCTION_SEEDS)
@pytest.mark.parametrize("base", [None, 0.07, 1.3])
@pytest.mark.parametrize("labels", [None, DISTINCT_R], ids=["no_labels", "distinct"])
def test_supcon_distinct_labels_is_scaled_nt_xent(seed, base, labels):
    z_a, z_b = rand_pairs(B_R, D_R, seed)
    factor = 1.0 if base is None else TAU_R / base
    v_s, g_s = value_and_grads(build("supcon", temperature=TAU_R, base_temperature=base), z_a, z_b, labels=labels)
    v_n, g_n = value_and_grads(build("nt_xent", temperature=TAU_R), z_a, z_b)
    close(v_s, factor * v_n)
    for x, y in zip(g_s, g_n):
        close(x, factor * y)


def equal_positive_cosine_pairs(B, d, seed, cos=0.6):
    """Random u with v_i at the same angle from every u_i (all positive cosines equal)."""
    g = gen(seed)
    u = unit(torch.randn(B, d, generator=g, dtype=DT))
    w = torch.randn(B, d, generator=g, dtype=DT)
    w = unit(w - (w * u).sum(1, keepdim=True) * u)
    v = cos * u + math.sqrt(1 - cos**2) * w
    scale = torch.exp(torch.randn(B, 1, generator=g, dtype=DT))
    return u * scale, v / scale


@pytest.mark.parametrize("negative_sum", ["joint", "split"])
@pytest.mark.parametrize("direction_reduction", ["mean", "sum"])
def test_dclw_equals_dcl_for_equal_positive_cosines(negative_sum, direction_reduction):
    z_a, z_b = equal_positive_cosine_pairs(B_R, D_R, seed=5)
    opts = {"temperature": TAU_R, "negative_sum": negative_sum, "direction_reduction": direction_reduction}
    dclw = build("dclw", sigma=0.3, **opts)
    assert_same_value_and_grad(dclw, build("dcl", **opts), z_a, z_b)
    close(dclw.diagnostics["pos_weight_min"], 1.0)
    close(dclw.diagnostics["pos_weight_max"], 1.0)
    # ...and the weights do matter once the positive cosines differ
    z_a, z_b = rand_pairs(B_R, D_R, seed=5)
    assert abs(dclw(z_a, z_b).item() - build("dcl", **opts)(z_a, z_b).item()) > 1e-4


# ---------------------------------------------------------------------------------------------------
# 4.3 invariances

B_I, D_I = 6, 5
LABELS_I = torch.tensor([1, 0, 1, 2, 0, 2])

# (id, name, options, extras: None | "labels" | "negatives", swap: True invariant / False changes / None untested)
INVARIANCE = [
    ("nt_xent", "nt_xent", {"temperature": 0.3}, None, True),
    ("info_nce u->v", "info_nce", {"temperature": 0.3, "direction": "u->v"}, None, False),
    ("info_nce v->u", "info_nce", {"temperature": 0.3, "direction": "v->u"}, None, False),
    ("info_nce symmetric", "info_nce", {"temperature": 0.3}, None, True),
    ("info_nce symmetric sum", "info_nce", {"temperature": 0.3, "direction_reduction": "sum"}, None, True),
    ("info_nce + negatives", "info_nce", {"temperature": 0.3, "direction": "u->v"}, "negatives", None),
    ("simcse", "simcse", {}, None, False),
    ("simcse hard negatives", "simcse", {"hard_negative_weight": 0.7}, "negatives", False),
    ("simcse symmetric", "simcse", {"symmetric": True}, None, True),
    ("graphcl", "graphcl", {}, None, False),
    ("dcl joint", "dcl", {"temperature": 0.3}, None, True),
    ("dcl split", "dcl", {"temperature": 0.3, "negative_sum": "split"}, None, True),
    ("dcl joint sum", "dcl", {"temperature": 0.3, "direction_reduction": "sum"}, None, True),
    ("dclw joint", "dclw", {"temperature": 0.3}, None, True),
    ("dclw split", "dclw", {"temperature": 0.3, "negative_sum": "split"}, None, True),
    ("debiased", "debiased", {"tau_plus": 0.1}, None, True),
    ("debiased floor", "debiased", {"tau_plus": 0.6}, None, True),
    ("hcl", "hcl", {"beta": 1.0, "tau_plus": 0.1}, None, True),
    ("h_ucl detached", "h_ucl", {"beta": 2.0, "tau_plus": 0.0, "detach_weights": True}, None, True),
    ("supcon labels", "supcon", {"temperature": 0.3}, "labels", True),
    ("supcon no labels", "supcon", {"temperature": 0.3, "base_temperature": 0.07}, None, True),
    ("supcon one", "supcon", {"temperature": 0.3, "contrast_mode": "one"}, "labels", None),
    ("scl", "scl", {}, "labels", True),
    ("h_scl", "h_scl", {"beta": 1.0}, "labels", True),
    ("h_scl augmentation", "h_scl", {"beta": 1.0, "positives": "augmentation"}, "labels", True),
    ("h_scl actual count", "h_scl", {"beta": 1.0, "nominal_negatives": False}, "labels", True),
    ("margin", "margin", {"m2": 0.1, "m3": 0.1}, None, True),
    ("margin m1", "margin", {"m1": 1.3, "m2": 0.05}, None, True),
    (
        "margin gradient_only",
        "margin",
        {"mode": "gradient_only", "positive_weight": 1.5, "angle_margin": 0.1, "logit_margin": 0.1},
        None,
        True,
    ),
    (
        "margin cross_view symmetric",
        "margin",
        {"m2": 0.1, "m3": 0.1, "layout": {"name": "cross_view", "direction": "symmetric"}},
        None,
        True,
    ),
    ("macl", "macl", {}, None, True),
    ("macl no reweight", "macl", {"reweight": False}, None, True),
    ("macl exponential", "macl", {"temperature_form": "exponential", "alpha": 2.0}, None, True),
    ("macl cross_view u->v", "macl", {"layout": {"name": "cross_view", "direction": "u->v"}}, None, None),
    ("macl cross_view symmetric", "macl", {"layout": {"name": "cross_view", "direction": "symmetric"}}, None, True),
    ("dystress", "dystress", {}, None, True),
    ("dystress shifted", "dystress", {"tau_min": 0.04, "tau_max": 0.05, "shape": "shifted"}, None, True),
    ("dystress cosconst", "dystress", {"shape": "cosconst"}, None, True),
    ("dystress not detached", "dystress", {"detach_temperature": False}, None, True),
    ("dhel", "dhel", {}, None, True),
    ("dhel no augs", "dhel", {"include_augs": False}, None, False),
    ("kcl", "kcl", {}, None, True),
    ("kcl log", "kcl", {"kernel": "log"}, None, True),
    ("kcl imq", "kcl", {"kernel": "imq"}, None, True),
    ("kcl riesz", "kcl", {"kernel": "riesz"}, None, True),
    ("kcl riesz negative", "kcl", {"kernel": "riesz", "t": -1.0}, None, True),
    ("kcl gaussian_riesz", "kcl", {"kernel": "gaussian_riesz"}, None, True),
    ("kcl waida", "kcl", {"variant": "waida"}, None, True),
    ("kcl waida quadratic", "kcl", {"variant": "waida", "kernel": "quadratic"}, None, True),
    ("align_uniform", "align_uniform", {"alpha": 1.5, "t": 1.5, "lam": 0.7}, None, True),
]


def _inv_inputs(seed=11):
    z_a, z_b = rand_pairs(B_I, D_I, seed)
    return z_a, z_b, rand_negatives(B_I, D_I, seed)


def _call(name, options, extras, z_a, z_b, labels, negatives):
    kwargs = {}
    if extras == "labels":
        kwargs["labels"] = labels
    if extras == "negatives":
        kwargs["negatives"] = negatives
    return losses.build(name, **options)(z_a, z_b, **kwargs).item()


@pytest.mark.parametrize("case", INVARIANCE, ids=[c[0] for c in INVARIANCE])
def test_invariances(case):
    _, name, options, extras, _ = case
    z_a, z_b, neg = _inv_inputs()
    base = _call(name, options, extras, z_a, z_b, LABELS_I, neg)
    tol = TOL * max(1.0, abs(base))
    # joint permutation of (u_i, v_i, y_i, h_i)
    for seed in (0, 1):
        perm = torch.randperm(B_I, generator=gen(seed))
        value = _call(name, options, extras, z_a[perm], z_b[perm], LABELS_I[perm], neg[perm])
        assert value == pytest.approx(base, abs=tol), "permutation"
    # positive rescaling of every raw row (including the hard negatives)
    g = gen(5)
    scale = lambda: torch.exp(2 * torch.randn(B_I, 1, generator=g, dtype=DT))  # noqa: E731
    value = _call(name, options, extras, z_a * scale(), z_b * scale(), LABELS_I, neg * scale())
    assert value == pytest.approx(base, abs=tol), "row scale"
    # one common orthogonal transformation (a rotation, and a reflection)
    for seed in (3, 4):
        Q = random_orthogonal(D_I, seed)
        value = _call(name, options, extras, z_a @ Q, z_b @ Q, LABELS_I, neg @ Q)
        assert value == pytest.approx(base, abs=tol), "rotation"


@pytest.mark.parametrize(
    "case", [c for c in INVARIANCE if c[4] is not None], ids=[c[0] for c in INVARIANCE if c[4] is not None]
)
def test_view_swap(case):
    _, name, options, extras, invariant = case
    z_a, z_b, neg = _inv_inputs()
    base = _call(name, options, extras, z_a, z_b, LABELS_I, neg)
    swapped = _call(name, options, extras, z_b, z_a, LABELS_I, neg)
    if invariant:
        assert swapped == pytest.approx(base, abs=TOL * max(1.0, abs(base)))
    else:
        assert abs(swapped - base) > 1e-4


# ---------------------------------------------------------------------------------------------------
# 4.4 bounds and limits

BOUND_SEEDS = [0, 1, 2, 3]


def antipodal_pair_inputs(d=3):
    """B = 2, u = v, u_2 = -u_1: every bound of the form 'pos cos 1, negatives cos -1' is attained."""
    e = torch.zeros(2, d, dtype=DT)
    e[0, 0], e[1, 0] = 1.0, -1.0
    return e, e.clone() * 3.0


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("seed", BOUND_SEEDS)
def test_nt_xent_and_decoupled_bounds(tau, seed):
    B, d = 5, 4
    z_a, z_b = rand_pairs(B, d, seed, noise=1.5)
    N = 2 * B - 2
    nt = build("nt_xent", temperature=tau)(z_a, z_b).item()
    assert math.log(1 + N * math.exp(-2 / tau)) <= nt <= math.log(1 + N * math.exp(2 / tau))
    assert build("dcl", temperature=tau)(z_a, z_b).item() >= math.log(N) - 2 / tau
    assert build("dcl", temperature=tau, negative_sum="split")(z_a, z_b).item() >= 2 * math.log(B - 1) - 3 / tau
    assert build("dhel", temperature=tau, include_augs=False)(z_a, z_b).item() >= math.log(B - 1) - 2 / tau


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_lower_bounds_attained_by_antipodal_pairs(tau):
    z_a, z_b = antipodal_pair_inputs()
    B = 2
    close(build("nt_xent", temperature=tau)(z_a, z_b), math.log(1 + (2 * B - 2) * math.exp(-2 / tau)))
    close(build("dcl", temperature=tau)(z_a, z_b), math.log(2 * B - 2) - 2 / tau)
    close(build("dcl", temperature=tau, negative_sum="split")(z_a, z_b), 2 * math.log(B - 1) - 3 / tau)
    close(build("dhel", temperature=tau, include_augs=False)(z_a, z_b), math.log(B - 1) - 2 / tau)


def test_nt_xent_upper_bound_approached():
    """Positive antipodal, every negative identical to the anchor (B = 2 with u_2 = u_1, v_2 = v_1 = -u_1)."""
    tau = 0.5
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=DT)
    value = build("nt_xent", temperature=tau)(u, -u).item()
    # rows: positive cos -1, negatives cos +1 and -1 -> log(1 + e^{2/tau} + 1)
    assert value == pytest.approx(math.log(2 + math.exp(2 / tau)), abs=TOL)
    assert value <= math.log(1 + 2 * math.exp(2 / tau))


def _supcon_positive_counts(labels, mode):
    counts = torch.stack([(labels == y).sum() for y in labels]).to(DT)
    per_anchor = 2 * counts - 1  # same-class rows of both views, minus the anchor itself
    return per_anchor if mode == "one" else per_anchor.repeat(2)


@pytest.mark.parametrize("mode", ["all", "one"])
@pytest.mark.parametrize("seed", BOUND_SEEDS)
def test_supcon_log_positive_count_bound(mode, seed):
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    z_a, z_b = rand_pairs(8, 4, seed)
    bound = torch.log(_supcon_positive_counts(labels, mode)).mean().item()
    for tau in (0.1, 0.5):
        value = build("supcon", temperature=tau, contrast_mode=mode)(z_a, z_b, labels=labels).item()
        assert value >= bound


@pytest.mark.parametrize("mode", ["all", "one"])
def test_supcon_bound_is_tight_for_collapsed_classes(mode):
    """Classes collapsed onto orthogonal directions at a small temperature: each anchor's softmax mass is
    spread equally over its positives, so the loss approaches mean log|P(i)| from above."""
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    centres = torch.eye(4, dtype=DT)[labels]
    scales = torch.exp(torch.randn(8, 1, generator=gen(0), dtype=DT))
    bound = torch.log(_supcon_positive_counts(labels, mode)).mean().item()
    value = build("supcon", temperature=0.05, contrast_mode=mode)(centres * scales, centres, labels=labels).item()
    assert bound <= value < bound + 1e-6


@pytest.mark.parametrize("seed", BOUND_SEEDS)
@pytest.mark.parametrize(
    "layout", [None, {"name": "cross_view", "direction": "u->v"}, {"name": "cross_view", "direction": "symmetric"}]
)
def test_macl_rows_above_one(seed, layout):
    z_a, z_b = rand_pairs(6, 5, seed)
    for options in ({}, {"alpha": 0.0}, {"temperature": 0.3, "A0": 0.5}):
        fn = build("macl", layout=layout, **options)
        assert fn(z_a, z_b).item() > 1.0
        weight_mean = fn.diagnostics["row_weight_mean"].item()
        assert weight_mean > 1.0


def test_macl_tends_to_one_as_positive_probability_tends_to_one():
    """Aligned simplex, tau = 0.1: 1 - P is about 1e-6 per row, so the per-row value -log P / (1 - P) is
    just above 1 (eps = 0: the spec's exact form)."""
    z = simplex(3, 2, seed=1)
    fn = build("macl", temperature=0.1, alpha=0.0, eps=0.0)
    value = fn(z, z.clone()).item()
    assert 1.0 < value < 1.0 + 1e-5


@pytest.mark.parametrize("tau", [0.1, 0.3])
@pytest.mark.parametrize("seed", BOUND_SEEDS)
def test_macl_one_minus_p_limits(tau, seed):
    """K/(K + e^{2/tau}) <= 1 - P_i <= K/(K + e^{-2/tau}) (3.14 property 7), read through the row weights
    1/(1 - P_i): every weight lies in [(K + e^{-2/tau})/K, (K + e^{2/tau})/K]."""
    B = 5
    K = 2 * B - 2
    z_a, z_b = rand_pairs(B, 4, seed, noise=2.0)
    fn = build("macl", temperature=tau, alpha=0.0, eps=0.0)
    fn(z_a, z_b)
    lo, hi = (K + math.exp(-2 / tau)) / K, (K + math.exp(2 / tau)) / K
    assert lo <= fn.diagnostics["row_weight_mean"].item() <= fn.diagnostics["row_weight_max"].item() <= hi


@pytest.mark.parametrize("name,options", [("debiased", {}), ("hcl", {"beta": 1.0})])
@pytest.mark.parametrize("tau_plus", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", BOUND_SEEDS[:2])
def test_debiased_mass_floor_bound(name, options, tau_plus, seed):
    """Ng_k >= N e^{-1/tau}, i.e. l_k >= log(1 + N e^{(-1 - s_k,pos)/tau}) for every anchor."""
    tau, B = 0.5, 5
    N = 2 * B - 2
    z_a, z_b = rand_pairs(B, 4, seed)
    pos = (unit(z_a) * unit(z_b)).sum(1).repeat(2)
    bound = torch.log1p(N * torch.exp((-1 - pos) / tau)).mean().item()
    fn = build(name, temperature=tau, tau_plus=tau_plus, **options)
    assert fn(z_a, z_b).item() >= bound - TOL


@pytest.mark.parametrize("name,options", [("debiased", {}), ("hcl", {"beta": 1.0})])
def test_debiased_floor_attained_when_every_floor_is_active(name, options):
    """u = v and low negative cosines: every estimate is below the floor, so each row is exactly
    log(1 + N e^{-2/tau})."""
    tau, B, d = 0.5, 4, 12
    z = simplex(B, d, seed=2) + 0.05 * torch.randn(B, d, generator=gen(3), dtype=DT)
    fn = build(name, temperature=tau, tau_plus=0.5, **options)
    value = fn(z, z.clone())
    assert fn.diagnostics["floor_active_frac"].item() == 1.0
    close(value, math.log1p((2 * B - 2) * math.exp(-2 / tau)))


@pytest.mark.parametrize("seed", BOUND_SEEDS)
def test_gaussian_kernel_terms_in_range(seed):
    t, gamma = 1.5, 3.0
    z_a, z_b = rand_pairs(6, 3, seed, noise=3.0)
    fn = build("kcl", t=t, gamma=gamma)
    fn(z_a, z_b)
    align, energy = fn.diagnostics["align_term"].item(), fn.diagnostics["energy_term"].item()
    assert -2.0 <= align <= -2.0 * math.exp(-4 * t)
    assert 2 * gamma * math.exp(-4 * t) <= energy <= 2 * gamma
    sigma2, lam = 0.8, 2.0
    fn = build("kcl", variant="waida", sigma2=sigma2, lam=lam)
    fn(z_a, z_b)
    assert -1.0 <= fn.diagnostics["align_term"].item() <= -math.exp(-4 / sigma2)
    assert lam * math.exp(-4 / sigma2) <= fn.diagnostics["energy_term"].item() <= lam


def test_gaussian_kernel_range_ends_attained():
    """Antipodal positives give the alignment's lower end e^{-4t}; collapsed views the energy's upper end."""
    t = 1.5
    z_a, _ = rand_pairs(4, 3, 0)
    fn = build("kcl", t=t, gamma=1.0)
    fn(z_a, -z_a)
    close(fn.diagnostics["align_term"], -2 * math.exp(-4 * t))
    row = torch.randn(1, 3, generator=gen(1), dtype=DT)
    fn(row.repeat(4, 1), row.repeat(4, 1))
    close(fn.diagnostics["energy_term"], 2.0)
    close(fn.diagnostics["align_term"], -2.0)


def hardest_negative_loss(z_a, z_b, tau):
    """The beta -> infinity limit of HCL (tau+ = 0): l_k = log(1 + N exp((max_n s_kn - s_kp)/tau))."""
    S = stacked_cosines(z_a, z_b)
    n = S.shape[0]
    B = n // 2
    idx = torch.arange(n)
    pos = S[idx, (idx + B) % n]
    mask = torch.ones_like(S, dtype=torch.bool)
    mask[idx, idx] = False
    mask[idx, (idx + B) % n] = False
    hardest = S.masked_fill(~mask, -math.inf).amax(1)
    return torch.log1p((n - 2) * torch.exp((hardest - pos) / tau)).mean()


@pytest.mark.parametrize("seed", BOUND_SEEDS)
def test_hcl_large_beta_is_hardest_negative_loss(seed):
    tau = 0.5
    z_a, z_b = rand_pairs(5, 4, seed)
    limit = hardest_negative_loss(z_a, z_b, tau)
    value = build("hcl", temperature=tau, beta=2000.0, tau_plus=0.0)(z_a, z_b)
    close(value, limit, 1e-8)
    # ... and a moderate beta is strictly between NT-Xent and that limit
    mid = build("hcl", temperature=tau, beta=1.0, tau_plus=0.0)(z_a, z_b).item()
    assert build("nt_xent", temperature=tau)(z_a, z_b).item() < mid < limit.item()


# ---------------------------------------------------------------------------------------------------
# 4.5 gradient identities


def _two_view_masks(n):
    B = n // 2
    idx = torch.arange(n)
    pos = torch.zeros(n, n, dtype=torch.bool)
    pos[idx, (idx + B) % n] = True
    neg = ~pos
    neg[idx, idx] = False
    return pos, neg


@pytest.mark.parametrize("tau", [0.2, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_nt_xent_pull_equals_push(tau, seed):
    B = 5
    z_a, z_b = rand_pairs(B, 4, seed)
    _, S, grad, table = cosine_grad(build("nt_xent", temperature=tau), z_a, z_b)
    G = grad * 2 * B  # d l_k / d s_kl (the loss is the mean of 2B rows)
    pos, neg = _two_view_masks(2 * B)
    assert torch.equal(table.pos, pos) and torch.equal(table.neg, neg)
    P = masked_softmax(S / tau, pos | neg)
    pull = G[pos]
    push = (G * neg).sum(1)
    close(pull, -push)  # per row, pull on the positive = total push on the negatives
    close(pull, -(1 - P[pos]) / tau)
    close(G[neg], P[neg] / tau)
    assert torch.all(G.diagonal() == 0)


def test_nt_xent_gradient_vanishes_as_positive_probability_tends_to_one():
    z = simplex(3, 2, seed=0)
    _, _, grad, _ = cosine_grad(build("nt_xent", temperature=0.05), z, z.clone())
    assert grad.abs().max().item() < 1e-10


@pytest.mark.parametrize("seed", [0, 1])
def test_dhel_without_augs_gradient_depends_only_on_u(seed):
    """dL/dv_j = -u_j/(B tau) with respect to the normalised v_j; the raw-row gradient is its tangent part
    divided by the row norm."""
    B, d, tau = 5, 4, 0.3
    z_a, z_b = rand_pairs(B, d, seed)
    _, (_, grad_b) = value_and_grads(build("dhel", temperature=tau, include_augs=False), z_a, z_b)
    u, v = unit(z_a), unit(z_b)
    g_hat = -u / (B * tau)
    tangent = g_hat - (g_hat * v).sum(1, keepdim=True) * v
    close(grad_b, tangent / z_b.norm(dim=1, keepdim=True))
    # with the second view's energy the v-gradient is no longer that
    _, (_, grad_aug) = value_and_grads(build("dhel", temperature=tau), z_a, z_b)
    assert (grad_aug - grad_b).abs().max().item() > 1e-3


@pytest.mark.parametrize("j", [0, 3])
def test_dhel_without_augs_moving_v_is_linear(j):
    """Moving v_j anywhere changes the loss by exactly -(u_j . v_j' - u_j . v_j)/(B tau)."""
    B, d, tau = 5, 4, 0.3
    z_a, z_b = rand_pairs(B, d, 7)
    fn = build("dhel", temperature=tau, include_augs=False)
    before = fn(z_a, z_b)
    moved = z_b.clone()
    moved[j] = torch.randn(d, generator=gen(j), dtype=DT) * 4.0
    after = fn(z_a, moved)
    u = unit(z_a)[j]
    delta = (u * unit(moved)[j]).sum() - (u * unit(z_b)[j]).sum()
    close(after - before, -delta / (B * tau))


HARD_WEIGHT_CASES = [
    ("hcl", {"tau_plus": 0.0}, None),
    ("hcl", {"tau_plus": 0.1}, None),
    ("hcl", {"tau_plus": 0.6}, None),
    ("h_scl", {}, "labels"),
    ("h_scl", {"positives": "augmentation"}, "labels"),
]


@pytest.mark.parametrize("name,options,extras", HARD_WEIGHT_CASES)
def test_detached_tilt_weights_same_value_different_gradient(name, options, extras):
    z_a, z_b = rand_pairs(B_R, D_R, 3)
    kw = {"labels": LABELS_R} if extras else {}
    kept = build(name, beta=1.5, detach_weights=False, **options)
    detached = build(name, beta=1.5, detach_weights=True, **options)
    v_k, g_k = value_and_grads(kept, z_a, z_b, **kw)
    v_d, g_d = value_and_grads(detached, z_a, z_b, **kw)
    close(v_k, v_d)
    assert max((x - y).abs().max().item() for x, y in zip(g_k, g_d)) > 1e-4
    # beta = 0: the weights are uniform, nothing to detach
    assert_same_value_and_grad(
        build(name, beta=0.0, detach_weights=False, **options),
        build(name, beta=0.0, detach_weights=True, **options),
        z_a,
        z_b,
        **kw,
    )


@pytest.mark.parametrize(
    "layout,dcl_layout",
    [
        (None, None),
        ({"name": "cross_view", "direction": "u->v"}, {"name": "cross_view", "direction": "u->v"}),
        ({"name": "cross_view", "direction": "symmetric"}, {"name": "cross_view", "direction": "symmetric"}),
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_macl_no_gradient_through_tau_and_dcl_gradient(layout, dcl_layout, seed):
    z_a, z_b = rand_pairs(B_R, D_R, seed)
    adaptive = build("macl", temperature=0.1, alpha=0.5, A0=0.0, eps=0.0, layout=layout)
    v_a, g_a = value_and_grads(adaptive, z_a, z_b)
    tau = adaptive.diagnostics["tau"].item()
    A = adaptive.diagnostics["alignment_A"].item()
    close(A, (unit(z_a) * unit(z_b)).sum(1).mean())
    close(tau, 0.1 * (1 + 0.5 * A))
    assert abs(tau - 0.1) > 1e-3  # the adaptive temperature really moved
    fixed = build("macl", temperature=tau, alpha=0.0, eps=0.0, layout=layout)
    v_f, g_f = value_and_grads(fixed, z_a, z_b)
    close(v_a, v_f)
    for x, y in zip(g_a, g_f):
        close(x, y)
    # MACL == DCL (joint, same negatives, same tau) in gradient, not in value
    v_d, g_d = value_and_grads(build("dcl", temperature=tau, layout=dcl_layout), z_a, z_b)
    for x, y in zip(g_a, g_d):
        close(x, y)
    assert abs(v_a.item() - v_d.item()) > 1e-3


def test_macl_default_eps_gradient_close_to_dcl():
    z_a, z_b = rand_pairs(B_R, D_R, 4)
    fn = build("macl")
    _, g_m = value_and_grads(fn, z_a, z_b)
    _, g_d = value_and_grads(build("dcl", temperature=fn.diagnostics["tau"].item()), z_a, z_b)
    for x, y in zip(g_m, g_d):
        close(x, y, 1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_macl_row_gradients(seed):
    """Per row: d l_i / d pos_i = -1/tau exactly; d l_i / d neg_ij = softmax over the negatives only / tau."""
    B = 5
    z_a, z_b = rand_pairs(B, 4, seed)
    fn = build("macl", eps=0.0)
    _, S, grad, table = cosine_grad(fn, z_a, z_b)
    tau = fn.diagnostics["tau"].item()
    G = grad * 2 * B
    close(G[table.pos], torch.full((2 * B,), -1 / tau, dtype=DT))
    close(G[table.neg], masked_softmax(S / tau, table.neg)[table.neg] / tau)
    close((G * table.neg).sum(1), torch.full((2 * B,), 1 / tau, dtype=DT))


@pytest.mark.parametrize("sigma", [0.3, 1.0])
def test_dclw_positive_gradient(sigma):
    """Joint DCL(W) per row: d l/d s_pos = -w_i/tau, w_i = 2 - B softmax_i(u.v/sigma); negatives get the
    softmax over the negatives only / tau."""
    B, tau = 5, 0.3
    z_a, z_b = rand_pairs(B, 4, 8)
    fn = build("dclw", temperature=tau, sigma=sigma)
    _, S, grad, table = cosine_grad(fn, z_a, z_b)
    G = grad * 2 * B
    w = 2 - B * torch.softmax((unit(z_a) * unit(z_b)).sum(1) / sigma, 0)
    close(G[table.pos], -w.repeat(2) / tau)
    close(G[table.neg], masked_softmax(S / tau, table.neg)[table.neg] / tau)
    close(fn.diagnostics["pos_weight_min"], w.min())
    close(w.mean(), 1.0)


def dclw_reference(z_a, z_b, tau, sigma, split):
    """Spec 3.3 written out: weights from the detached positive cosines; mean over the 2B rows."""
    u, v = unit(z_a), unit(z_b)
    B = u.shape[0]
    w = 2 - B * torch.softmax((u * v).sum(1).detach() / sigma, 0)
    off = ~torch.eye(B, dtype=torch.bool)
    rows = []
    for a, b in ((u, v), (v, u)):
        same, cross = (a @ a.T / tau)[off].view(B, B - 1), (a @ b.T / tau)[off].view(B, B - 1)
        if split:
            mass = torch.logsumexp(same, 1) + torch.logsumexp(cross, 1)
        else:
            mass = torch.logsumexp(torch.cat([same, cross], 1), 1)
        rows.append(-w * (a * b).sum(1) / tau + mass)
    return torch.cat(rows).mean()


@pytest.mark.parametrize("split", [False, True])
def test_dclw_weights_are_detached(split):
    z_a, z_b = rand_pairs(B_R, D_R, 13)
    tau, sigma = 0.3, 0.4
    fn = build("dclw", temperature=tau, sigma=sigma, negative_sum="split" if split else "joint")
    v_lib, g_lib = value_and_grads(fn, z_a, z_b)
    a, b = z_a.clone().requires_grad_(True), z_b.clone().requires_grad_(True)
    ref = dclw_reference(a, b, tau, sigma, split)
    g_ref = torch.autograd.grad(ref, (a, b))
    close(v_lib, ref.detach())
    for x, y in zip(g_lib, g_ref):
        close(x, y)


def dystress_tau(s, lo, hi):
    return lo + 0.5 * (hi - lo) * (1 - torch.cos(math.pi * s))


@pytest.mark.parametrize("tau_min,tau_max", [(0.07, 0.2), (0.1, 0.3)])
def test_dystress_row_gradients(tau_min, tau_max):
    """Detached temperature: d l_i/d s_ip = -(1 - P_ip)/tau(s_ip), d l_i/d s_in = P_in/tau(s_in)."""
    B = 5
    z_a, z_b = rand_pairs(B, 4, 2)
    _, S, grad, table = cosine_grad(build("dystress", tau_min=tau_min, tau_max=tau_max), z_a, z_b)
    G = grad * 2 * B
    tau = dystress_tau(S, tau_min, tau_max)
    P = masked_softmax(S / tau, table.pos | table.neg)
    close(G[table.pos], -(1 - P[table.pos]) / tau[table.pos])
    close(G[table.neg], P[table.neg] / tau[table.neg])


def test_dystress_detaching_the_temperature_changes_only_the_gradient():
    z_a, z_b = rand_pairs(B_R, D_R, 6)
    v_d, g_d = value_and_grads(build("dystress"), z_a, z_b)
    v_n, g_n = value_and_grads(build("dystress", detach_temperature=False), z_a, z_b)
    close(v_d, v_n)
    assert max((x - y).abs().max().item() for x, y in zip(g_d, g_n)) > 1e-2


def test_margin_single_row_example():
    """Spec 3.13 property 3: s = 5, m2 = 0.1, m3 = 0.05, theta_p = 0.6, negatives [0.1, -0.2, 0.3]."""
    s, m2, m3, theta = 5.0, 0.1, 0.05, 0.6
    sim = torch.tensor([[math.cos(theta), 0.1, -0.2, 0.3]], dtype=DT)
    pos = torch.tensor([[True, False, False, False]])
    layout = FixedTable(sim, pos, ~pos)
    fn = build("margin", temperature=1 / s, m2=m2, m3=m3, layout=layout)
    z_a, z_b = rand_pairs(2, 3, 0)
    loss = fn(z_a, z_b)
    (grad,) = torch.autograd.grad(loss, layout.sim)
    g = math.cos(m2) + math.sin(m2) / math.tan(theta)
    assert g == pytest.approx(1.140930, abs=1e-6)
    close(fn.diagnostics["margin_g_mean"], g)
    assert grad[0, 0].item() == pytest.approx(-0.879182, abs=1e-6)
    # the same from the exact gradient formulas
    psi = math.cos(theta + m2) - m3
    logits = torch.tensor([s * psi, s * 0.1, s * -0.2, s * 0.3], dtype=DT)
    Pm = torch.softmax(logits, 0)
    close(grad[0, 0], -s * (1 - Pm[0]) * g)
    close(grad[0, 1:], s * Pm[1:])
    close(loss, -torch.log(Pm[0]))
    P0 = torch.softmax(sim[0] * s, 0)
    close(fn.diagnostics["margin_r_mean"], (1 - Pm[0]) / (1 - P0[0]))


# spec 3.13, per-row gradient factors on fixture C at tau = 0.5 (rows u1..u4, v1..v4)
FIXTURE_C_U = torch.tensor([[1, 2, 2], [2, 1, -2], [0, 3, 4], [4, 0, 3]], dtype=DT)
FIXTURE_C_V = torch.tensor([[2, 2, 1], [2, -1, -2], [3, 0, 4], [4, 3, 0]], dtype=DT)
G_M2 = [1.188709, 1.118542, 1.078158, 1.078158, 1.188709, 1.118542, 1.078158, 1.078158]
R_TABLE = {
    (0.1, 0.1): [1.063480, 1.097677, 1.059783, 1.047918, 1.058583, 1.148275, 1.050312, 1.045824],
    (0.1, 0.0): [1.022461, 1.040771, 1.028353, 1.022860, 1.020790, 1.060272, 1.023974, 1.021884],
    (0.0, 0.1): [1.043520, 1.060347, 1.035023, 1.028203, 1.040221, 1.090021, 1.029584, 1.026992],
}
P0_TABLE = [0.230073, 0.313967, 0.186671, 0.151317, 0.213307, 0.455603, 0.158515, 0.144993]
PM_TABLE = [0.181198, 0.246957, 0.138048, 0.110650, 0.167220, 0.374882, 0.116178, 0.105813]


@pytest.mark.parametrize("m2,m3", list(R_TABLE))
def test_margin_per_row_factors_fixture_c(m2, m3):
    tau = 0.5
    r = torch.tensor(R_TABLE[(m2, m3)], dtype=DT)
    g = torch.tensor(G_M2, dtype=DT) if m2 else torch.ones(8, dtype=DT)
    fn = build("margin", temperature=tau, m2=m2, m3=m3)
    _, _, grad_m, table = cosine_grad(fn, FIXTURE_C_U, FIXTURE_C_V)
    assert fn.diagnostics["margin_r_mean"].item() == pytest.approx(r.mean().item(), abs=1e-6)
    assert fn.diagnostics["margin_g_mean"].item() == pytest.approx(g.mean().item(), abs=1e-6)
    _, _, grad_0, _ = cosine_grad(build("nt_xent", temperature=tau), FIXTURE_C_U, FIXTURE_C_V)
    neg_ratio = (grad_m / grad_0).masked_fill(~table.neg, float("nan"))
    # one factor r_i per row on every negative (ratios among negatives unchanged)
    row_r = torch.nanmean(neg_ratio, 1)
    close(neg_ratio[table.neg], row_r[:, None].expand_as(neg_ratio)[table.neg])
    torch.testing.assert_close(row_r, r, rtol=0, atol=1e-6)
    # positives: r_i g(theta_ip)
    torch.testing.assert_close((grad_m / grad_0)[table.pos], r * g, rtol=0, atol=2e-6)
    if (m2, m3) == (0.1, 0.1):
        assert fn.diagnostics["pos_prob_mean"].item() == pytest.approx(sum(PM_TABLE) / 8, abs=1e-6)
        nt = build("nt_xent", temperature=tau)
        nt(FIXTURE_C_U, FIXTURE_C_V)
        assert nt.diagnostics["pos_prob_mean"].item() == pytest.approx(sum(P0_TABLE) / 8, abs=1e-6)


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.1, 0.0), (1.0, 0.0, 0.1), (1.3, 0.05, 0.02), (0.8, 0.2, 0.1)])
def test_margin_exact_row_gradients(m1, m2, m3):
    """3.13 exact gradients per row: d/d cos_in = s P^m_in, d/d cos_ip = -s (1 - P^m_ip) g(theta_ip) with
    g = m1 sin(m1 theta + m2)/sin theta; r_i = (1 - P^m_ip)/(1 - P^0_ip)."""
    B, tau = 5, 0.4
    s = 1 / tau
    z_a, z_b = rand_pairs(B, 4, 12)
    fn = build("margin", temperature=tau, m1=m1, m2=m2, m3=m3)
    value, S, grad, table = cosine_grad(fn, z_a, z_b)
    G = grad * 2 * B
    theta = torch.acos(S[table.pos])
    psi = torch.cos(m1 * theta + m2) - m3
    logits = (S * s).masked_scatter(table.pos, psi * s)
    Pm = masked_softmax(logits, table.pos | table.neg)
    P0 = masked_softmax(S * s, table.pos | table.neg)
    g = m1 * torch.sin(m1 * theta + m2) / torch.sin(theta)
    close(value, -torch.log(Pm[table.pos]).mean())
    close(G[table.neg], s * Pm[table.neg])
    close(G[table.pos], -s * (1 - Pm[table.pos]) * g)
    close(fn.diagnostics["margin_g_mean"], g.mean())
    close(fn.diagnostics["margin_r_mean"], ((1 - Pm[table.pos]) / (1 - P0[table.pos])).mean())


@pytest.mark.parametrize("m2,m3", list(R_TABLE))
def test_margin_logit_scaling_alone_fixture_c(m2, m3):
    """V3 with the virtual margins (m2, m3): r_i as in the table, NT-Xent forward, row gradient r_i x NT-Xent."""
    tau = 0.5
    fn = build("margin", temperature=tau, mode="gradient_only", logit_margin=m3, logit_angle_margin=m2)
    value, _, grad, table = cosine_grad(fn, FIXTURE_C_U, FIXTURE_C_V)
    value_0, _, grad_0, _ = cosine_grad(build("nt_xent", temperature=tau), FIXTURE_C_U, FIXTURE_C_V)
    close(value, value_0)
    r = torch.tensor(R_TABLE[(m2, m3)], dtype=DT)
    assert fn.diagnostics["margin_r_mean"].item() == pytest.approx(r.mean().item(), abs=1e-6)
    ratio = grad / grad_0
    torch.testing.assert_close(ratio[table.pos], r, rtol=0, atol=1e-6)
    mask = table.pos | table.neg
    close(ratio[mask], (r[:, None] * torch.ones_like(grad))[mask].double(), 1e-6)


@pytest.mark.parametrize("m2,m3", [(0.1, 0.1), (0.2, 0.0), (0.0, 0.15), (0.3, 0.05)])
@pytest.mark.parametrize("seed", [0, 1])
def test_margin_composition_reproduces_margin_gradient(m2, m3, seed):
    tau = 0.4
    z_a, z_b = rand_pairs(B_R, D_R, seed)
    v_m, g_m = value_and_grads(build("margin", temperature=tau, m2=m2, m3=m3), z_a, z_b)
    composed = build(
        "margin", temperature=tau, mode="gradient_only", angle_margin=m2, logit_angle_margin=m2, logit_margin=m3
    )
    v_c, g_c = value_and_grads(composed, z_a, z_b)
    v_n, _ = value_and_grads(build("nt_xent", temperature=tau), z_a, z_b)
    for x, y in zip(g_c, g_m):
        close(x, y, 1e-12)
    close(v_c, v_n)
    assert v_m.item() > v_n.item() + 1e-3  # the margin changes the value, the composition does not


@pytest.mark.parametrize("w", [1.5, 2.0])
def test_margin_positive_emphasis_v1(w):
    tau = 0.4
    z_a, z_b = rand_pairs(B_R, D_R, 3)
    value, _, grad, table = cosine_grad(
        build("margin", temperature=tau, mode="gradient_only", positive_weight=w), z_a, z_b
    )
    value_0, _, grad_0, _ = cosine_grad(build("nt_xent", temperature=tau), z_a, z_b)
    close(value, value_0)
    close(grad[table.pos], w * grad_0[table.pos])
    close(grad[table.neg], grad_0[table.neg])
    # and through the embeddings the gradient differs
    _, g_w = value_and_grads(build("margin", temperature=tau, mode="gradient_only", positive_weight=w), z_a, z_b)
    _, g_0 = value_and_grads(build("nt_xent", temperature=tau), z_a, z_b)
    assert max((x - y).abs().max().item() for x, y in zip(g_w, g_0)) > 1e-3


@pytest.mark.parametrize("normalise", [False, True])
def test_margin_angle_scaling_v2(normalise):
    tau, m_a = 0.4, 0.2
    z_a, z_b = rand_pairs(B_R, D_R, 4)
    fn = build("margin", temperature=tau, mode="gradient_only", angle_margin=m_a, angle_normalise=normalise)
    value, S, grad, table = cosine_grad(fn, z_a, z_b)
    value_0, _, grad_0, _ = cosine_grad(build("nt_xent", temperature=tau), z_a, z_b)
    close(value, value_0)
    theta = torch.acos(S[table.pos])
    factor = torch.sin(theta + m_a) / torch.sin(theta)
    if normalise:
        factor = factor / factor.mean()
    close(grad[table.pos], factor * grad_0[table.pos])
    close(grad[table.neg], grad_0[table.neg])


def test_margin_angle_factor_threshold():
    """3.13 property 4: g(theta) > 1 iff theta < (pi - m2)/2; for m2 = 0.1 the spec's two values."""
    m2 = 0.1
    for theta, expected in ((1.519796, 1.000100), (1.521796, 0.999900)):
        sim = torch.tensor([[math.cos(theta), 0.0, 0.2]], dtype=DT)
        pos = torch.tensor([[True, False, False]])
        fn = build("margin", temperature=0.5, m2=m2, layout=FixedTable(sim, pos, ~pos))
        fn(*rand_pairs(2, 3, 0))
        assert fn.diagnostics["margin_g_mean"].item() == pytest.approx(expected, abs=1e-6)


def test_margin_monotone_in_margins():
    z_a, z_b = rand_pairs(B_R, D_R, 9)
    for key in ("m2", "m3"):
        values = [build("margin", temperature=0.4, **{key: m})(z_a, z_b).item() for m in (0.0, 0.05, 0.1, 0.2, 0.3)]
        assert all(a < b for a, b in zip(values, values[1:])), (key, values)


def test_margin_saturated_positive_gets_zero_gradient():
    """A positive cosine above 1 - eps (hard clamp) gets exactly zero gradient; negatives still move."""
    sim = torch.tensor([[1.0 - 1e-9, 0.3, -0.1]], dtype=DT)
    pos = torch.tensor([[True, False, False]])
    layout = FixedTable(sim, pos, ~pos)
    loss = build("margin", temperature=0.5, m2=0.1, m3=0.05, layout=layout)(*rand_pairs(2, 3, 0))
    (grad,) = torch.autograd.grad(loss, layout.sim)
    assert grad[0, 0].item() == 0.0
    assert torch.isfinite(grad).all() and grad[0, 1:].abs().min().item() > 0


@pytest.mark.parametrize("log_alpha", [0.0, 0.8, -1.2])
def test_simcse_hard_negative_weight_only_changes_own_negative_logit(log_alpha):
    B, d, tau = 5, 4, 0.2
    z_a, z_b = rand_pairs(B, d, 1)
    h_neg = rand_negatives(B, d, 1)
    fn = build("simcse", temperature=tau, hard_negative_weight=log_alpha)
    value, S, grad, table = cosine_grad(fn, z_a, z_b, negatives=h_neg)
    # the table's cosines are the plain cosines [h_i . h_j^+ | h_i . h_j^-]
    u, v, n = unit(z_a), unit(z_b), unit(h_neg)
    close(S, torch.cat([u @ v.T, u @ n.T], 1))
    offset = torch.zeros(B, 2 * B, dtype=DT)
    offset[torch.arange(B), B + torch.arange(B)] = log_alpha
    logits = S / tau + offset
    P = torch.softmax(logits, 1)
    eye = torch.eye(B, dtype=DT)
    close(value, (torch.logsumexp(logits, 1) - torch.diagonal(S) / tau).mean())
    close(grad * B, (P - torch.cat([eye, torch.zeros_like(eye)], 1)) / tau)
    # changing log alpha only moves each row's own-negative logit: the loss difference is the closed form
    plain = build("simcse", temperature=tau)(z_a, z_b, negatives=h_neg)
    lse0 = torch.logsumexp(S / tau, 1)
    own = torch.diagonal(S[:, B:]) / tau
    expected = torch.log1p((math.exp(log_alpha) - 1) * torch.exp(own - lse0)).mean()
    close(value - plain, expected)


# ---------------------------------------------------------------------------------------------------
# 4.6 U-statistic property

U_CASES = [
    ("kcl", {}),
    ("kcl", {"t": 0.7, "gamma": 3.0}),
    ("kcl", {"kernel": "log"}),
    ("kcl", {"kernel": "imq"}),
    ("kcl", {"kernel": "riesz"}),
    ("kcl", {"kernel": "gaussian_riesz"}),
    ("kcl", {"variant": "waida"}),
    ("kcl", {"variant": "waida", "kernel": "quadratic"}),
]


def _subset_mean(fn, z_a, z_b, b):
    values = [fn(z_a[list(s)], z_b[list(s)]) for s in itertools.combinations(range(z_a.shape[0]), b)]
    return torch.stack(values).mean()


@pytest.mark.parametrize("name,options", U_CASES)
@pytest.mark.parametrize("b", [2, 3, 5])
def test_kcl_is_a_u_statistic(name, options, b):
    z_a, z_b = rand_pairs(6, 3, 4)
    fn = build(name, **options)
    close(_subset_mean(fn, z_a, z_b, b), fn(z_a, z_b))


@pytest.mark.parametrize("b", [2, 3, 5])
def test_exp_uniformity_is_a_u_statistic(b):
    z_a, z_b = rand_pairs(6, 3, 5)
    fn = build("align_uniform", t=1.5)

    def exp_unif(x, y):
        fn(x, y)
        return torch.exp(fn.diagnostics["uniformity_u"])

    close(_subset_mean(exp_unif, z_a, z_b, b), exp_unif(z_a, z_b))
    fn(z_a, z_b)
    align = fn.diagnostics["align_term"]
    subsets = list(itertools.combinations(range(6), b))
    align_mean = torch.stack([(fn(z_a[list(s)], z_b[list(s)]), fn.diagnostics["align_term"])[1] for s in subsets])
    close(align_mean.mean(), align)


@pytest.mark.parametrize("b", [2, 3, 5])
def test_nt_xent_is_not_a_u_statistic(b):
    z_a, z_b = rand_pairs(6, 3, 4)
    fn = build("nt_xent", temperature=0.5)
    assert abs(_subset_mean(fn, z_a, z_b, b).item() - fn(z_a, z_b).item()) > 1e-2


# ---------------------------------------------------------------------------------------------------
# numerics (1.7)

V3_OPTIONS = {
    "temperature": 0.01,
    "mode": "gradient_only",
    "positive_weight": 1.5,
    "angle_margin": 0.1,
    "logit_margin": 0.1,
}

# (name, options, extras, compare the float32 value with float64)
NUMERIC_CASES = [
    ("nt_xent", {"temperature": 0.01}, None, True),
    ("info_nce", {"temperature": 0.01}, None, True),
    ("info_nce", {"temperature": 0.01, "direction": "u->v"}, "negatives", True),
    ("simcse", {"temperature": 0.01}, None, True),
    ("simcse", {"temperature": 0.01, "hard_negative_weight": 1.0}, "negatives", True),
    ("graphcl", {"temperature": 0.01}, None, True),
    ("dcl", {"temperature": 0.01}, None, True),
    ("dcl", {"temperature": 0.01, "negative_sum": "split"}, None, True),
    ("dclw", {"temperature": 0.01}, None, True),
    ("debiased", {"temperature": 0.01, "tau_plus": 0.1}, None, True),
    ("hcl", {"temperature": 0.01, "beta": 1.0, "tau_plus": 0.1}, None, True),
    ("hcl", {"temperature": 0.5, "beta": 200.0, "tau_plus": 0.0}, None, True),
    ("hcl", {"temperature": 0.5, "beta": 200.0, "tau_plus": 0.1}, None, True),
    ("supcon", {"temperature": 0.01}, "labels", True),
    ("scl", {"temperature": 0.01}, "labels", True),
    ("h_scl", {"temperature": 0.01, "beta": 1.0}, "labels", True),
    ("h_scl", {"beta": 200.0}, "labels", True),
    # the clamp eps defaults differ by dtype (1e-4 / 1e-7); fix it so float32 and float64 compute the same loss
    ("margin", {"temperature": 0.01, "m2": 0.1, "m3": 0.1, "clamp_eps": 1e-4}, None, True),
    ("margin", {"temperature": 0.01, "mode": "gradient_only", "positive_weight": 1.5, "angle_margin": 0.1}, None, True),
    ("margin", V3_OPTIONS, None, True),
    # MACL's eps form: rows whose 1 - P is below ~1e-7 in float32 legitimately give values in [0, 1]
    # (spec 3.14 numerics), so only finiteness is checked
    ("macl", {"temperature": 0.01}, None, False),
    ("dystress", {"tau_min": 0.01, "tau_max": 0.02}, None, True),
    ("dhel", {"temperature": 0.01}, None, True),
    ("dhel", {"temperature": 0.01, "include_augs": False}, None, True),
    ("kcl", {}, None, True),
    ("kcl", {"kernel": "imq"}, None, True),
    ("kcl", {"variant": "waida"}, None, True),
    ("align_uniform", {}, None, True),
]


def _numeric_id(case):
    name, options = (case.values if hasattr(case, "values") else case)[:2]
    return f"{name}-{'-'.join(f'{k}={v}' for k, v in options.items())}"


NUMERIC_IDS = [_numeric_id(c) for c in NUMERIC_CASES]


def _numeric_inputs(dtype):
    """Hard inputs: near-duplicate positives, an exact duplicate and an antipodal row, large raw norms."""
    B, d = 6, 5
    g = gen(21)
    z_a = torch.randn(B, d, generator=g, dtype=DT)
    z_a[1] = z_a[0]
    z_a[2] = -z_a[3]
    z_b = z_a + 1e-3 * torch.randn(B, d, generator=g, dtype=DT)
    z_a = z_a * 30.0
    negatives = torch.randn(B, d, generator=g, dtype=DT)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    return z_a.to(dtype), z_b.to(dtype), negatives.to(dtype), labels


def _numeric_call(name, options, extras, dtype, grad=True):
    z_a, z_b, negatives, labels = _numeric_inputs(dtype)
    leaves = [z_a.requires_grad_(grad), z_b.requires_grad_(grad)]
    kw = {}
    if extras == "labels":
        kw["labels"] = labels
    if extras == "negatives":
        kw["negatives"] = negatives.requires_grad_(grad)
        leaves.append(kw["negatives"])
    loss = losses.build(name, **options)(*leaves[:2], **kw)
    grads = torch.autograd.grad(loss, leaves) if grad else ()
    return loss, grads


@pytest.mark.parametrize("name,options,extras,compare", NUMERIC_CASES, ids=NUMERIC_IDS)
def test_float32_small_temperature_finite_and_accurate(name, options, extras, compare):
    loss32, grads = _numeric_call(name, options, extras, torch.float32)
    assert loss32.dtype == torch.float32
    assert torch.isfinite(loss32)
    for g in grads:
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
    loss64, grads64 = _numeric_call(name, options, extras, DT)
    assert torch.isfinite(loss64) and all(torch.isfinite(g).all() for g in grads64)
    # float32 agrees with float64 up to float32 rounding of logits of size ~1/tau
    if compare:
        assert loss32.item() == pytest.approx(loss64.item(), rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name,options,extras,compare", NUMERIC_CASES, ids=NUMERIC_IDS)
def test_half_precision_inputs_give_float32_loss(name, options, extras, compare, half):
    loss_h, grads_h = _numeric_call(name, options, extras, half)
    assert loss_h.dtype == torch.float32
    assert torch.isfinite(loss_h)
    for g in grads_h:
        assert g.dtype == half and torch.isfinite(g.float()).all()
    # the same quantised inputs in float32 give the same loss (the loss is computed in float32)
    z_a, z_b, negatives, labels = _numeric_inputs(half)
    kw = {"labels": labels} if extras == "labels" else {}
    if extras == "negatives":
        kw["negatives"] = negatives.float()
    loss_q = losses.build(name, **options)(z_a.float(), z_b.float(), **kw)
    assert loss_h.item() == pytest.approx(loss_q.item(), rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_close_to_float32_at_moderate_temperature(half):
    z_a, z_b = rand_pairs(8, 16, 0, dtype=torch.float32)
    for name, options in (("nt_xent", {"temperature": 0.2}), ("hcl", {}), ("dcl", {}), ("kcl", {}), ("macl", {})):
        fn = losses.build(name, **options)
        value_32 = fn(z_a, z_b).item()
        value_h = fn(z_a.to(half), z_b.to(half))
        assert value_h.dtype == torch.float32
        assert value_h.item() == pytest.approx(value_32, rel=3e-2, abs=3e-2), name


@pytest.mark.parametrize("dtype", [torch.float32, DT])
def test_hcl_beta_200_finite(dtype):
    z_a, z_b = rand_pairs(8, 6, 3, dtype=dtype)
    for tau_plus in (0.0, 0.1):
        loss, grads = value_and_grads(build("hcl", beta=200.0, tau_plus=tau_plus, temperature=0.5), z_a, z_b)
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    limit = hardest_negative_loss(z_a.double(), z_b.double(), 0.5).item()
    value = build("hcl", beta=200.0, tau_plus=0.0, temperature=0.5)(z_a, z_b).item()
    assert value == pytest.approx(limit, rel=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, DT])
def test_kcl_riesz_finite_on_duplicate_rows(dtype):
    """Riesz terms diverge at d = 0; the d >= 1e-6 guard keeps loss and gradient finite (values ~1e12)."""
    loss, grads = _numeric_call("kcl", {"kernel": "riesz"}, None, dtype)
    assert torch.isfinite(loss) and loss.item() > 1e11
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("logit_options", [{"logit_margin": 0.1}, {"logit_angle_margin": 0.1}])
def test_margin_logit_scaling_finite_when_positive_probability_rounds_to_one(logit_options):
    """float64, tau = 0.05, u = v = [[1, 0], [-1, 0]]: each row has positive logit 20 and negative mass
    2 e^{-20}, so P^0 = 1 in float64. The value must be NT-Xent's (log(1 + 2e^{-40})) and the gradient
    finite; r_i = Z^0/Z^m -> e^{m/tau}-like, finite."""
    u = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=DT)
    fn = build("margin", temperature=0.05, mode="gradient_only", **logit_options)
    loss, grads = value_and_grads(fn, u, u.clone())
    close(loss, math.log1p(2 * math.exp(-40)))
    assert all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(fn.diagnostics["margin_r_mean"])
