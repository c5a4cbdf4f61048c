"""V >= 2 views of the same instances (docs/multiview.md): the call forms, the extension of each loss, the
losses that refuse, multi-crop's ``global_views`` and the diagnostics, in float64.

NT-Xent and SupCon are checked against SupContrast's code in ``test_loss_oracles.py``; here every other
multi-view loss is checked against its formula written out row by row (``reference`` below, the spec's
coupled and decoupled forms of section 1.4 on the stacked-views table of section 1.1), on both paths.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmcl import losses

DT = torch.float64
N, D = 7, 5
LABELS = torch.tensor([3, -1, 3, 7, -1, -1, 3])
MULTIVIEW = ["nt_xent", "dcl", "debiased", "hcl", "supcon", "scl", "h_scl", "margin", "macl", "dystress"]
PAIRS_ONLY = {
    "info_nce": "CrossViewLayout",
    "simcse": "CrossViewLayout",
    "graphcl": "CrossViewLayout",
    "dclw": "positive weights",
    "dhel": "WithinViewLayout",
    "kcl": "alignment kernel",
    "align_uniform": "alignment",
}
PATHS = {"dense": {"blockwise": False}, "blockwise": {"blockwise": True, "block_size": 3}}


def make_views(V: int, n: int = N, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, D, generator=g, dtype=DT)
    return [(base + 0.8 * torch.randn(n, D, generator=g, dtype=DT)) * (k + 1) for k in range(V)]


def value_and_grads(fn, views):
    leaves = [v.detach().clone().requires_grad_() for v in views]
    value = fn(leaves)
    return value.detach(), torch.autograd.grad(value, leaves)


def assert_same(a, b, tol=1e-10):
    torch.testing.assert_close(a[0], b[0], rtol=tol, atol=tol)
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x, y, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------
# The formulas, row by row


def stacked(views, global_views=None):
    """Cosines of the anchors (every view) against the candidates (the first ``global_views`` views) and the
    instance and view of each."""
    z = [F.normalize(v, dim=1) for v in views]
    V, G, n = len(z), global_views or len(z), z[0].shape[0]
    sim = torch.cat(z) @ torch.cat(z[:G]).T
    ids = lambda views: (torch.arange(n).repeat(views), torch.arange(views).repeat_interleave(n))  # noqa: E731
    return sim, *ids(V), *ids(G)


def reference(
    views, tau, beta=0.0, tau_plus=0.0, macl=False, m2=0.0, m3=0.0, decoupled=False, split=False, global_views=None
):
    """Spec 1.4 on the stacked table: for anchor a, positives P(a) (its instance's other views), negatives
    N(a) (other instances), ``t_ap = -l_ap + log(sum_{p' in P} e^{l_ap'} + M~_a)`` (coupled, every positive in
    the denominator) with ``M_a = n sum_N w e^l`` (``w`` the tilt's softmax over N) debiased as Chuang et al.
    with the mean of the row's positives; MACL multiplies each term by ``sg(1 / (1 - e^{-t}))``; decoupled:
    ``-mean_P l_ap + log M_a`` (split: one log-sum-exp per candidate view). Mean over anchors."""
    sim, a_inst, a_view, c_inst, c_view = stacked(views, global_views)
    rows = []
    for a in range(sim.shape[0]):
        own = (c_inst == a_inst[a]) & (c_view == a_view[a])
        pos, neg = (c_inst == a_inst[a]) & ~own, c_inst != a_inst[a]
        cos_p = sim[a][pos]
        l_pos = (torch.cos(torch.acos(cos_p) + m2) - m3) / tau if (m2 or m3) else cos_p / tau
        l_neg = sim[a][neg] / tau
        if decoupled:
            if split:
                mass = sum(torch.logsumexp(sim[a][neg & (c_view == k)] / tau, 0) for k in c_view.unique())
            else:
                mass = torch.logsumexp(l_neg, 0)
            rows.append(-l_pos.mean() + mass)
            continue
        n = neg.sum().to(DT)
        M = n * (torch.softmax(beta * l_neg, 0) * torch.exp(l_neg)).sum()
        if tau_plus:
            M = torch.maximum((M - tau_plus * n * torch.exp(l_pos).mean()) / (1 - tau_plus), n * math.exp(-1 / tau))
        t = -l_pos + torch.log(torch.exp(l_pos).sum() + M)
        if macl:
            t = t / (1 - torch.exp(-t.detach()))
        rows.append(t.mean())
    return torch.stack(rows).mean()


def scl_reference(views, labels, tau, beta, positives="labels"):
    """H-SCL's code on the stacked table: label-aware negatives, nominal ``n = V (N - 1)``, one term per (anchor,
    positive) pair with only that positive in its denominator, mean over pairs."""
    sim, a_inst, a_view, c_inst, c_view = stacked(views)
    y_a, y_c = labels[a_inst], labels[c_inst]
    nominal = len(views) * (views[0].shape[0] - 1)
    terms = []
    for a in range(sim.shape[0]):
        own = (c_inst == a_inst[a]) & (c_view == a_view[a])
        same = (c_inst == a_inst[a]) if positives == "augmentation" else (y_c == y_a[a])
        pos, neg = same & ~own, y_c != y_a[a]
        if not neg.any():
            continue
        l_neg = sim[a][neg] / tau
        M = nominal * (torch.softmax(beta * l_neg, 0) * torch.exp(l_neg)).sum()
        for l_p in sim[a][pos] / tau:
            terms.append(-l_p + torch.log(torch.exp(l_p) + M))
    return torch.stack(terms).mean()


# (loss, options, reference options)
REFERENCE_CASES = [
    ("nt_xent", {"temperature": 0.4}, {"tau": 0.4}),
    ("dystress", {"tau_min": 0.3, "tau_max": 0.3}, {"tau": 0.3}),
    ("debiased", {"temperature": 0.5, "tau_plus": 0.1}, {"tau": 0.5, "tau_plus": 0.1}),
    ("debiased", {"temperature": 0.5, "tau_plus": 0.6}, {"tau": 0.5, "tau_plus": 0.6}),  # floors active
    ("hcl", {"temperature": 0.5, "beta": 1.0, "tau_plus": 0.1}, {"tau": 0.5, "beta": 1.0, "tau_plus": 0.1}),
    ("hcl", {"temperature": 0.5, "beta": 3.0, "tau_plus": 0.0}, {"tau": 0.5, "beta": 3.0}),
    ("macl", {"temperature": 0.3, "alpha": 0.0}, {"tau": 0.3, "macl": True}),
    ("margin", {"temperature": 0.5, "m2": 0.1, "m3": 0.1}, {"tau": 0.5, "m2": 0.1, "m3": 0.1}),
    ("dcl", {"temperature": 0.3}, {"tau": 0.3, "decoupled": True}),
    ("dcl", {"temperature": 0.3, "negative_sum": "split"}, {"tau": 0.3, "decoupled": True, "split": True}),
]


@pytest.mark.filterwarnings("error")  # no fallback to the dense path
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("V,global_views", [(3, None), (4, None), (4, 2), (3, 2)])
@pytest.mark.parametrize("name,options,expected", REFERENCE_CASES)
def test_multiview_losses_follow_their_formula(name, options, expected, V, global_views, path):
    views = make_views(V)
    fn = losses.build(name, **options, **PATHS[path])
    ours = value_and_grads(lambda x: fn(*x, global_views=global_views), views)
    assert_same(ours, value_and_grads(lambda x: reference(x, global_views=global_views, **expected), views))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("V", [3, 4])
@pytest.mark.parametrize(
    "name,options,expected",
    [
        ("scl", {}, {"tau": 0.5, "beta": 0.0}),
        ("h_scl", {"beta": 1.0}, {"tau": 0.5, "beta": 1.0}),
        ("h_scl", {"beta": 1.0, "positives": "augmentation"}, {"tau": 0.5, "beta": 1.0, "positives": "augmentation"}),
    ],
)
def test_multiview_scl_follows_the_h_scl_code(name, options, expected, V, path):
    views = make_views(V)
    fn = losses.build(name, **options, **PATHS[path])
    ours = value_and_grads(lambda x: fn(*x, labels=LABELS), views)
    assert_same(ours, value_and_grads(lambda x: scl_reference(x, LABELS, **expected), views))


@pytest.mark.parametrize("V", [3, 4])
def test_without_tilt_and_debiasing_the_family_is_nt_xent(V):
    """Every row but the anchor in each denominator, for every NT-Xent-layout loss: beta = tau_plus = 0 and
    identity margins give NT-Xent (SupContrast's loss), as with two views."""
    views = make_views(V, seed=2)
    expected = value_and_grads(lambda x: losses.build("nt_xent", temperature=0.5)(*x), views)
    for name, options in [
        ("hcl", {"beta": 0.0, "tau_plus": 0.0}),
        ("debiased", {"tau_plus": 0.0}),
        ("margin", {}),
        ("macl", {"alpha": 0.0, "reweight": False, "temperature": 0.5}),
        ("supcon", {"temperature": 0.5}),
    ]:
        ours = value_and_grads(lambda x: losses.build(name, **options)(*x), views)  # noqa: B023
        assert_same(ours, expected)


def test_macl_alignment_is_the_mean_over_every_pair_of_views():
    views = make_views(3, seed=5)
    fn = losses.build("macl")
    fn(*views)
    z = [F.normalize(v, dim=1) for v in views]
    pairs = [(z[a] * z[b]).sum(1) for a in range(3) for b in range(a + 1, 3)]
    torch.testing.assert_close(fn.diagnostics["alignment_A"], torch.cat(pairs).mean())


# ---------------------------------------------------------------------------------------------------
# Call forms


def _extras(name, n=N):
    return {"labels": LABELS[:n]} if name in ("supcon", "scl", "h_scl") else {}


@pytest.mark.parametrize("name", losses.available())
def test_two_views_in_every_form_are_the_classic_pair(name):
    """``views=[a, b]`` and SupContrast's features ``(N, 2, d)`` give the value and gradients of
    ``loss_fn(a, b)`` bit for bit."""
    a, b = make_views(2, seed=3)
    extras = _extras(name)
    classic = value_and_grads(lambda x: losses.build(name)(x[0], x[1], **extras), [a, b])
    for form in (
        lambda x: losses.build(name)(views=x, **extras),
        lambda x: losses.build(name)(z_a=x[0], z_b=x[1], **extras),
        lambda x: losses.build(name)(torch.stack(x, 1), **extras),
    ):
        ours = value_and_grads(form, [a, b])
        assert torch.equal(ours[0], classic[0])
        assert all(torch.equal(x, y) for x, y in zip(ours[1], classic[1]))


def test_multiview_call_forms_agree():
    views = make_views(4, seed=1)
    fn = losses.build("supcon")
    expected = fn(*views, labels=LABELS).item()
    assert fn(views=views, labels=LABELS).item() == expected
    assert fn(views=tuple(views), labels=LABELS).item() == expected
    assert fn(torch.stack(views, 1), LABELS).item() == expected  # SupContrast: criterion(features, labels)
    assert fn(torch.stack(views, 1), labels=LABELS).item() == expected
    assert fn(*views, LABELS).item() == expected  # labels positionally after the views
    view_major = torch.cat(views)  # an engine's stacked batch
    assert fn(views=view_major.chunk(4), labels=LABELS).item() == expected


def test_old_positional_labels_and_negatives_still_work():
    a, b = make_views(2)
    negatives = make_views(1, seed=9)[0]
    supcon = losses.build("supcon")
    assert supcon(a, b, LABELS).item() == supcon(a, b, labels=LABELS).item()
    simcse = losses.build("simcse")
    assert simcse(a, b, None, negatives).item() == simcse(a, b, negatives=negatives).item()


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda fn, v: fn(v[0], views=v), "either positionally .* or as views="),
        (lambda fn, v: fn(views=torch.stack(v)), "views must be a list or tuple"),
        (lambda fn, v: fn(*v, LABELS, None, None), "at most two positional arguments"),
        (lambda fn, v: fn(*v, LABELS, labels=LABELS), "labels was passed both positionally and by keyword"),
        (lambda fn, v: fn(views=v[:1]), "at least two views"),
        (lambda fn, v: fn(v[0][:, None]), "at least two views"),
        (lambda fn, v: fn(v[0], v[1], v[2][:-1]), r"z_1 and z_3 must have the same shape"),
        (lambda fn, v: fn(v[0], v[1], v[2].long()), "z_3 must be a floating-point tensor"),
        (lambda fn, v: fn(v[0], v[1], v[2] * float("nan")), "z_3 contains NaN or inf"),
    ],
)
def test_malformed_calls_say_what_to_pass(call, match):
    with pytest.raises(ValueError, match=match):
        call(losses.build("supcon"), make_views(3))


@pytest.mark.parametrize("name,why", PAIRS_ONLY.items())
def test_pair_losses_refuse_more_views(name, why):
    with pytest.raises(ValueError, match=f"{name} is defined for two views: .*{why}.*; got 3 views") as error:
        losses.build(name)(*make_views(3))
    assert "Call it on each pair of views" in str(error.value)


def test_gradient_only_margins_refuse_more_views():
    with pytest.raises(ValueError, match="margin is defined for two views: the gradient-only margin effects"):
        losses.build("margin", mode="gradient_only", positive_weight=2.0)(*make_views(3))


@pytest.mark.parametrize("name", MULTIVIEW)
def test_multiview_losses_take_more_views(name):
    fn = losses.build(name)
    assert fn.max_views is None  # what an engine reads before it stacks V views
    assert torch.isfinite(fn(*make_views(3), **_extras(name)))


@pytest.mark.parametrize("name", PAIRS_ONLY)
def test_pair_losses_say_so_before_a_call(name):
    assert losses.build(name).max_views == 2


# ---------------------------------------------------------------------------------------------------
# Multi-crop


@pytest.mark.parametrize("name", MULTIVIEW)
def test_all_views_global_is_the_plain_call(name):
    views = make_views(4, seed=6)
    fn = losses.build(name)
    assert fn(*views, global_views=4, **_extras(name)).item() == fn(*views, **_extras(name)).item()


def test_local_crops_are_anchors_against_the_global_views_only():
    """With global_views = 2 a local view's rows never enter another row's terms: moving a local view
    changes only the terms of its own rows, which are the terms of the (global views + that view) table."""
    views = make_views(4, seed=7)
    fn = losses.build("nt_xent", temperature=0.5)
    full = fn(*views, global_views=2)
    with_one_local = [fn(views[0], views[1], local, global_views=2) for local in views[2:]]
    globals_only = fn(views[0], views[1])
    # per-view means: (2 global views + 2 local) / 4; each 3-view call has 2 global + 1 local view
    expected = (2 * globals_only + sum(3 * v - 2 * globals_only for v in with_one_local)) / 4
    torch.testing.assert_close(full, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [1, 5, True, 2.0, "2"])
def test_global_views_must_be_between_two_and_v(bad):
    with pytest.raises(ValueError, match=r"global_views must be an integer from 2 to the number of views \(4\)"):
        losses.build("nt_xent")(*make_views(4), global_views=bad)


# ---------------------------------------------------------------------------------------------------
# Diagnostics


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("V,global_views", [(3, None), (4, 2)])
def test_diagnostics_count_the_multiview_table(V, global_views, path):
    views = make_views(V, seed=8)
    fn = losses.build("nt_xent", **PATHS[path])
    fn(*views, global_views=global_views)
    G = global_views or V
    diagnostics = fn.diagnostics
    positives = (G * (G - 1) + (V - G) * G) / V  # global rows: G - 1 positives; local rows: G
    assert diagnostics["n_anchors"].item() == V * N
    assert diagnostics["pos_per_row_mean"].item() == pytest.approx(positives)
    assert diagnostics["neg_per_row_min"].item() == G * (N - 1)
    sim, a_inst, a_view, c_inst, c_view = stacked(views, global_views)
    own = (a_inst[:, None] == c_inst) & (a_view[:, None] == c_view)
    pos = (a_inst[:, None] == c_inst) & ~own
    assert diagnostics["pos_cos_mean"].item() == pytest.approx(sim[pos].mean().item(), rel=1e-12)
    assert diagnostics["neg_cos_mean"].item() == pytest.approx(sim[a_inst[:, None] != c_inst].mean().item(), rel=1e-12)
    best = sim.masked_fill(~pos, -2).amax(1)
    hardest = sim.masked_fill(pos | own, -2).amax(1)
    assert diagnostics["contrastive_acc"].item() == pytest.approx((best > hardest).double().mean().item())
