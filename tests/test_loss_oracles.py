"""The loss core against the reference code, copied verbatim below, in float64: values and gradients.

* Multi-view NT-Xent and SupCon: HobbitLong/SupContrast's ``SupConLoss`` (tests/reference_code.py) on
  features ``(N, V, d)``, with and without labels, contrast modes all and one, ``V`` in {3, 4}, dense and
  blockwise; solo-learn's ``simclr_loss_func`` (the same file) for what it computes beyond two views.
* MACL: chenhaoxing/MACL ``macl.py`` (the official function, commit 82d3fb5) and lightly-ai/lightly
  ``lightly/loss/macl_loss.py`` (``MACLLoss.forward``, commit e8d317f), spec 3.14: ``eps = 0`` is the
  official code, ``eps = 1e-8`` lightly's port, and on a batch with ``1 - P`` near 1e-8 the two differ.

The copied functions keep their authors' code unchanged.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mmcl import losses
from tests.reference_code import SupConLoss, simclr_loss_func

DT = torch.float64


# ---------------------------------------------------------------------------------------------------
# chenhaoxing/MACL, macl.py (Huang et al., ICML 2023), verbatim.


def MACL(pos, neg, tau_0, alpha, A0):
    # alignment-adaptive temperature
    A = torch.mean(pos.detach())
    tau = tau_0 * (1.0 + alpha * (A - A0))

    logits = torch.cat([pos, neg], dim=1) / tau
    P = torch.softmax(logits, dim=1)[:, 0]

    # reweighting and loss computation
    V = 1.0 / (1.0 - P)
    loss = -V.detach() * torch.log(P)

    return loss.mean()


# lightly-ai/lightly, lightly/loss/macl_loss.py, MACLLoss.forward, verbatim (its eps is 1e-8).


def lightly_macl(z0: Tensor, z1: Tensor, temperature: float = 0.1, alpha: float = 0.5, A_0: float = 0.0) -> Tensor:
    eps = 1e-8
    # Normalize embeddings
    z0 = F.normalize(z0, dim=-1, p=2)
    z1 = F.normalize(z1, dim=-1, p=2)

    # Concatenate embeddings
    out = torch.cat([z0, z1], dim=0)
    batch_size = z0.shape[0]
    n_samples = len(out)

    # Compute similarity matrix
    cov = out @ out.T

    # Get positive and negative pairs
    mask = cov.new_ones(cov.shape, dtype=torch.bool)
    mask.diagonal()[:] = False
    mask.diagonal(batch_size)[:] = False
    mask.diagonal(-batch_size)[:] = False
    neg = cov.masked_select(mask).view(n_samples, -1)

    # Get positive pairs from upper and lower diagonals
    u_b = torch.diag(cov, batch_size)
    l_b = torch.diag(cov, -batch_size)
    pos = torch.cat([u_b, l_b], dim=0).reshape(n_samples, 1)

    # Calculate model-aware temperature
    A = torch.mean(pos.detach())
    t = temperature * (1 + alpha * (A - A_0))

    # 6) Compute stable log_softmax
    logits = torch.cat([pos, neg], dim=1) / t
    log_prob = F.log_softmax(logits, dim=1)

    # 7) Extract log probability of the positive pair
    log_pos_prob = log_prob[:, 0]

    # 8) Compute P and V
    P = log_pos_prob.exp()
    V = 1.0 / (1.0 - P + eps)  # add eps to avoid division-by-zero

    # 9) Compute final loss
    loss: Tensor = -V.detach() * log_pos_prob

    return loss.mean()


def official_macl_cross_view(z_a: Tensor, z_b: Tensor, tau_0: float, alpha: float, A0: float) -> Tensor:
    """The official function on the cross-view ``u -> v`` table (positives on the diagonal)."""
    u, v = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
    cos = u @ v.T
    off = ~torch.eye(cos.shape[0], dtype=torch.bool)
    return MACL(cos.diagonal()[:, None], cos[off].view(cos.shape[0], -1), tau_0, alpha, A0)


def saturated_batch(B: int = 4, d: int = 6) -> tuple[Tensor, Tensor]:
    """Row 0's positive is 0.995-aligned and its negatives orthogonal: at tau = 0.05, ``1 - P_0`` is about
    3 e^{-19.9} = 7e-9; the other rows are ordinary."""
    g = torch.Generator().manual_seed(7)
    z_a = torch.randn(B, d, generator=g, dtype=DT)
    z_b = z_a + 0.8 * torch.randn(B, d, generator=g, dtype=DT)
    z_a[0] = torch.zeros(d, dtype=DT).index_fill_(0, torch.tensor([0]), 1.0)
    z_b[0] = z_a[0] * 0.995 + torch.zeros(d, dtype=DT).index_fill_(0, torch.tensor([1]), (1 - 0.995**2) ** 0.5)
    z_a[1:, 0] = 0.0  # every other row orthogonal to row 0's direction ...
    z_b[1:, :2] = 0.0  # ... and to its partner's plane
    return z_a, z_b


def value_and_grads(fn, *leaves):
    leaves = [x.detach().clone().requires_grad_() for x in leaves]
    value = fn(*leaves)
    return value.detach(), torch.autograd.grad(value, leaves)


def assert_close_value_and_grads(ours, reference, tol=1e-9):
    torch.testing.assert_close(ours[0], reference[0], rtol=tol, atol=tol)
    for a, b in zip(ours[1], reference[1]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_saturated_batch_has_one_minus_p_near_1e_8():
    z_a, z_b = saturated_batch()
    fn = losses.build("macl", temperature=0.05, alpha=0.0, layout={"name": "cross_view", "direction": "u->v"})
    fn(z_a, z_b)
    assert 1e8 < fn.diagnostics["row_weight_max"].item() < 1e9


def ordinary_batch(B: int = 6, d: int = 5) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(3)
    z_a = torch.randn(B, d, generator=g, dtype=DT)
    return z_a, z_a + 0.8 * torch.randn(B, d, generator=g, dtype=DT)


BATCHES = {"saturated": saturated_batch, "ordinary": ordinary_batch}


@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.parametrize("batch", BATCHES)
def test_macl_default_is_the_official_code(alpha, batch):
    """eps = 0 (the default) and ``1 - P = -expm1(-t)``: the official function's value and gradients (its
    ``1 - softmax`` carries a relative error of about 1e-16 / (1 - P) = 1e-8 on the saturated row)."""
    z_a, z_b = BATCHES[batch]()
    layout = {"name": "cross_view", "direction": "u->v"}
    ours = value_and_grads(losses.build("macl", temperature=0.05, alpha=alpha, layout=layout), z_a, z_b)
    official = value_and_grads(lambda a, b: official_macl_cross_view(a, b, 0.05, alpha, 0.0), z_a, z_b)
    assert_close_value_and_grads(ours, official, tol=1e-6)


def test_lightly_eps_moves_the_saturated_batch_away_from_the_official_code():
    """The spec's measurement (3.14): lightly's eps = 1e-8 moves the loss and its gradient by 10%+ here."""
    z_a, z_b = saturated_batch()
    layout = {"name": "cross_view", "direction": "u->v"}
    exact = value_and_grads(losses.build("macl", temperature=0.05, alpha=0.0, layout=layout), z_a, z_b)
    eps = value_and_grads(losses.build("macl", temperature=0.05, alpha=0.0, layout=layout, eps=1e-8), z_a, z_b)
    assert abs(eps[0] / exact[0] - 1) > 0.1
    grad_change = max((a - b).norm() / b.norm() for a, b in zip(eps[1], exact[1]))
    assert grad_change > 0.3


@pytest.mark.parametrize("batch", BATCHES)
def test_macl_with_lightly_eps_is_lightly(batch):
    z_a, z_b = BATCHES[batch]()
    ours = value_and_grads(losses.build("macl", eps=1e-8), z_a, z_b)
    assert_close_value_and_grads(ours, value_and_grads(lightly_macl, z_a, z_b))


def test_macl_weight_is_exact_where_p_is_within_1e_13_of_one():
    """Row 0's positive logit is 30 above its one negative: ``1 - P = 1 / (1 + e^30)``, so its weight is
    ``1 + e^30`` to rounding; ``1 - exp(-t)`` would lose about 3 of its 16 digits."""
    tau = 0.05
    z_a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=DT)
    z_b = torch.tensor([[1.0, 0.0], [1 - 30 * tau, (1 - (1 - 30 * tau) ** 2) ** 0.5]], dtype=DT)
    fn = losses.build("macl", temperature=tau, alpha=0.0, layout={"name": "cross_view", "direction": "u->v"})
    fn(z_a, z_b)
    expected = 1 + torch.exp(torch.tensor(30.0, dtype=DT))
    torch.testing.assert_close(fn.diagnostics["row_weight_max"], expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------------
# Multi-view NT-Xent and SupCon: SupContrast's SupConLoss (tests/reference_code.py, verbatim) on features
# (N, V, d), normalised as SupContrast's training code does, in float64.

LABELS = torch.tensor([3, -1, 3, 7, -1, -1, 3, 7, 3])  # unsorted, negative and non-contiguous class ids


def features(V: int, N: int = 9, d: int = 5, seed: int = 0) -> Tensor:
    """Raw views with different row scales (the loss normalises; SupContrast gets them normalised)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, 1, d, generator=g, dtype=DT)
    views = base + 0.9 * torch.randn(N, V, d, generator=g, dtype=DT)
    return views * torch.exp(torch.randn(N, V, 1, generator=g, dtype=DT))


def supcontrast(temperature: float, mode: str = "all", base: float | None = None):
    reference = SupConLoss(temperature, mode, temperature if base is None else base)
    return lambda f, labels=None: reference(F.normalize(f, dim=2), labels=labels)


PATHS = {"dense": {"blockwise": False}, "blockwise": {"blockwise": True, "block_size": 4}}
MULTIVIEW_ORACLE = [
    # (loss, options, labels, SupContrast's temperature, contrast_mode, base_temperature)
    ("nt_xent", {"temperature": 0.5}, None, 0.5, "all", None),
    ("nt_xent", {"temperature": 0.07}, None, 0.07, "all", None),
    ("supcon", {"temperature": 0.1}, None, 0.1, "all", None),
    ("supcon", {"temperature": 0.1}, LABELS, 0.1, "all", None),
    ("supcon", {"temperature": 0.2, "base_temperature": 0.07}, LABELS, 0.2, "all", 0.07),
    ("supcon", {"temperature": 0.1, "contrast_mode": "one"}, LABELS, 0.1, "one", None),
    ("supcon", {"temperature": 0.1, "contrast_mode": "one"}, None, 0.1, "one", None),
    ("supcon", {"temperature": 0.1}, torch.zeros(9, dtype=torch.long), 0.1, "all", None),  # one class
]


@pytest.mark.filterwarnings("error")  # blockwise=True falls back to the dense path with a warning
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("V", [3, 4])
@pytest.mark.parametrize("name,options,labels,tau,mode,base", MULTIVIEW_ORACLE)
def test_multiview_equals_supcontrast(name, options, labels, tau, mode, base, V, path):
    f = features(V)
    fn = losses.build(name, **options, **PATHS[path])
    ours = value_and_grads(lambda x: fn(x, labels=labels), f)
    reference = value_and_grads(lambda x: supcontrast(tau, mode, base)(x, labels), f)
    assert_close_value_and_grads(ours, reference, tol=1e-12)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("V", [3, 4])
def test_multiview_blockwise_default_blocks_and_tiles_equal_supcontrast(V, monkeypatch):
    """A larger batch in several default blocks (the row-block runner; the symmetric one serves two views)."""
    import mmcl.losses.blockwise.engine as engine

    monkeypatch.setattr(engine, "BLOCK_ENTRIES", 700)
    f, labels = features(V, N=33, d=7, seed=4), torch.arange(33) % 5
    for name, options, y in (("nt_xent", {"temperature": 0.3}, None), ("supcon", {"temperature": 0.3}, labels)):
        ours = value_and_grads(lambda x: losses.build(name, blockwise=True, **options)(x, labels=y), f)  # noqa: B023
        reference = value_and_grads(lambda x: supcontrast(0.3)(x, y), f)  # noqa: B023
        assert_close_value_and_grads(ours, reference, tol=1e-12)


def test_solo_learn_is_supcon_for_two_views_and_l_in_beyond():
    """solo-learn's simclr_loss_func sums a row's positives inside the log (SupCon's L_in); for two views it
    is NT-Xent, for V > 2 it is below SupContrast's L_out (which mmcl computes) by at least log(V - 1)
    (Jensen: mean_p -log P_p >= -log mean_p P_p)."""
    for V in (2, 3, 4):
        f = features(V)
        z, indexes = torch.cat(f.unbind(1)), torch.arange(f.shape[0]).repeat(V)
        solo = simclr_loss_func(z, indexes, temperature=0.5).item()
        ours = losses.build("nt_xent", temperature=0.5)(f).item()
        if V == 2:
            assert ours == pytest.approx(solo, rel=1e-13)
        else:
            assert ours - solo > math.log(V - 1) + 1e-3
