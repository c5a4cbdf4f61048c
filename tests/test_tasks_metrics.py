"""Representation metrics (evaluation spec, sections 5-8): every fixture value, invariances, modes, sub-sampling."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats

import mmcl.tasks.metrics as metrics_module
from mmcl.tasks import alignment, effective_rank, rank, representation_metrics, uniformity, wasserstein_uniformity
from tests.fixtures import fixture


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return q


def simplex(b: int, d: int) -> torch.Tensor:
    """``b`` unit vectors in ``d >= b - 1`` dimensions with pairwise cosine ``-1/(b-1)`` (rows sum to zero)."""
    centred = torch.eye(b, dtype=torch.float64) - 1 / b
    basis = torch.linalg.svd(centred).U[:, : b - 1]  # orthonormal basis of the rows' span
    points = torch.zeros(b, d, dtype=torch.float64)
    points[:, : b - 1] = centred @ basis
    return unit(points)


RANDOM = torch.randn(300, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


# --- alignment and uniformity (spec 5) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name, align, unif_u, unif_v",
    [("A", 0.0, -4.0, -4.0), ("B", 0.08, -2.08, -2.08), ("C", 0.526667, -1.602115, -1.566219), ("S", 0.0, -6.0, -6.0)],
)
def test_alignment_uniformity_fixtures(name, align, unif_u, unif_v):
    u, v = fixture(name)["z_a"], fixture(name)["z_b"]
    assert alignment(u, v) == pytest.approx(align, abs=1e-6)
    assert uniformity(u) == pytest.approx(unif_u, abs=1e-6)
    assert uniformity(v) == pytest.approx(unif_v, abs=1e-6)
    # float32 and unnormalised inputs (normalised inside)
    assert uniformity(3 * u.float()) == pytest.approx(unif_u, abs=1e-5)


def test_uniformity_matches_the_pdist_formula_with_chunks(monkeypatch):
    x = unit(RANDOM)
    expected = torch.pdist(x).pow(2).mul(-2).exp().mean().log().item()
    assert uniformity(RANDOM) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(metrics_module, "CHUNK_ELEMENTS", 1000)  # 3 rows per chunk
    assert uniformity(RANDOM, t=0.5) == pytest.approx(torch.pdist(x).pow(2).mul(-0.5).exp().mean().log().item())


def test_simplex_uniformity_and_bounds():
    for b in (3, 5, 8):
        assert uniformity(simplex(b, 8), t=2) == pytest.approx(-2 * 2 * b / (b - 1), abs=1e-9)
    assert uniformity(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-12)
    assert -8 <= uniformity(RANDOM) <= 0
    assert alignment(RANDOM, -RANDOM) == pytest.approx(4.0)
    assert alignment(RANDOM, -RANDOM, alpha=1) == pytest.approx(2.0)


def test_rotation_invariance():
    r = rotation(24, seed=1)
    other = RANDOM + 0.3 * torch.randn(300, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert uniformity(RANDOM @ r) == pytest.approx(uniformity(RANDOM), abs=1e-10)
    assert alignment(RANDOM @ r, other @ r) == pytest.approx(alignment(RANDOM, other), abs=1e-10)
    assert wasserstein_uniformity(RANDOM @ r) == pytest.approx(wasserstein_uniformity(RANDOM), abs=1e-10)


def test_uniformity_subsample_is_seeded():
    a = uniformity(RANDOM, max_samples=50, seed=3)
    assert a == uniformity(RANDOM, max_samples=50, seed=3)
    assert a != uniformity(RANDOM, max_samples=50, seed=4)
    assert uniformity(RANDOM, max_samples=300) == uniformity(RANDOM, max_samples=None)


# --- effective rank (spec 7) and rank (spec 8) --------------------------------------------------------


@pytest.mark.parametrize(
    "name, view, expected",
    [("C", "z_a", 2.833975), ("C", "z_b", 2.833975), ("S", "z_a", 2.0), ("A", "z_a", 2.0), ("B", "z_a", 2.842713)],
)
def test_effective_rank_fixtures(name, view, expected):
    assert effective_rank(unit(fixture(name)[view])) == pytest.approx(expected, abs=1e-6)


def test_effective_rank_without_eps():
    assert effective_rank(unit(fixture("C")["z_a"]), eps=0.0) == pytest.approx(2.833975, abs=1e-6)


def test_effective_rank_of_simplex_and_orthonormal():
    for d in (3, 7):
        assert effective_rank(simplex(d + 1, d)) == pytest.approx(d, abs=1e-10)  # B = d + 1: exact
    for b, d in ((3, 5), (6, 6)):
        assert effective_rank(simplex(b, d)) == pytest.approx(b - 1, abs=1e-5)  # B <= d: up to the eps term
        assert effective_rank(simplex(b, d), eps=0.0) == pytest.approx(b - 1, abs=1e-10)
    for d in (2, 5, 16):
        assert effective_rank(rotation(d, seed=d)) == pytest.approx(d, abs=1e-9)


def test_effective_rank_invariances_and_bounds():
    value = effective_rank(RANDOM)
    assert 1 <= value <= 24
    assert effective_rank(RANDOM @ rotation(24, seed=3)) == pytest.approx(value, abs=1e-9)
    for scale in (1e-6, 1e4):  # no reference rescale quirk: exactly scale invariant
        assert effective_rank(scale * RANDOM) == pytest.approx(value, abs=1e-9)
    assert effective_rank(torch.ones(5, 3)) == pytest.approx(1.0, abs=1e-5)
    assert math.isnan(effective_rank(torch.zeros(4, 3)))


def test_effective_rank_subsample_is_seeded():
    assert effective_rank(RANDOM, max_samples=30, seed=1) == effective_rank(RANDOM, max_samples=30, seed=1)
    assert effective_rank(RANDOM, max_samples=30, seed=1) != effective_rank(RANDOM, max_samples=30, seed=2)


@pytest.mark.parametrize("name, expected", [("C", 3), ("S", 2), ("A", 1)])
def test_rank_fixtures(name, expected):
    assert rank(unit(fixture(name)["z_a"])) == expected


def test_rank_matches_numpy_and_bounds():
    low = RANDOM[:, :5] @ torch.randn(5, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert rank(low) == 5 == np.linalg.matrix_rank(np.cov(low.numpy().T), tol=1e-5)
    assert rank(RANDOM) == 24
    assert rank(RANDOM[:10]) == 9  # at most M - 1
    assert rank(1e-4 * RANDOM) < 24  # absolute tolerance: covariance entries ~1e-8
    assert rank(RANDOM.float()) == 24


# --- Wasserstein uniformity (spec 6) ------------------------------------------------------------------


def test_wasserstein_exact_fixtures():
    u = fixture("C")["z_a"]
    assert wasserstein_uniformity(u) == pytest.approx(71 / 225, abs=1e-9)
    assert wasserstein_uniformity(u, reference_dim=128) == pytest.approx(0.380274, abs=1e-6)
    assert wasserstein_uniformity(fixture("S")["z_a"]) == pytest.approx(1 / 6 + math.sqrt(3) / math.pi, abs=1e-9)


def test_wasserstein_sampled_mode():
    u = fixture("C")["z_a"]
    samples = np.random.default_rng(0).uniform(-1, 1, 10000)  # the D = 3 law, as in the spec
    assert wasserstein_uniformity(u, mode="sampled", reference_samples=samples) == pytest.approx(0.316772, abs=1e-6)
    sampled = wasserstein_uniformity(u, mode="sampled", seed=0)
    assert sampled == pytest.approx(71 / 225, abs=0.02)
    assert sampled == wasserstein_uniformity(u, mode="sampled", seed=0)
    assert wasserstein_uniformity(u, mode="sampled", reference_dim=128) == pytest.approx(0.380274, abs=0.02)


@pytest.mark.parametrize("dim", [2, 5, 64])
def test_wasserstein_exact_matches_numerical_integration(dim):
    x = unit(
        RANDOM[:12, :dim]
        if dim <= 24
        else torch.randn(12, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(dim))
    )
    s = np.sort((x @ x.T)[torch.triu(torch.ones(12, 12, dtype=torch.bool), 1)].numpy())
    a = (dim - 1) / 2
    points = np.concatenate([[-1.0], s, [1.0]])
    numeric = sum(
        integrate.quad(
            lambda t, c=i / s.size: abs(c - stats.beta.cdf((1 + t) / 2, a, a)), lo, hi, epsabs=1e-13, limit=200
        )[0]
        for i, (lo, hi) in enumerate(zip(points[:-1], points[1:]))
    )
    assert wasserstein_uniformity(x) == pytest.approx(numeric, abs=1e-8)


def test_wasserstein_pair_subsample():
    full = wasserstein_uniformity(RANDOM)
    assert wasserstein_uniformity(RANDOM, max_pairs=300 * 299 // 2) == full
    sub = wasserstein_uniformity(RANDOM, max_pairs=2000, seed=1)
    assert sub == wasserstein_uniformity(RANDOM, max_pairs=2000, seed=1) != full
    assert sub == pytest.approx(full, abs=0.03)
    # every sampled pair index maps into the upper triangle: the cosines are a subset of all pairs
    x = unit(RANDOM[:40])
    every = np.round((x @ x.T)[torch.triu(torch.ones(40, 40, dtype=torch.bool), 1)].numpy(), 12)
    picked = np.round(metrics_module._pair_similarities(x, 779, seed=0), 12)
    assert np.isin(picked, every).all() and np.unique(picked).size == 779


def test_wasserstein_chunked_pairs(monkeypatch):
    full = wasserstein_uniformity(RANDOM)
    monkeypatch.setattr(metrics_module, "CHUNK_ELEMENTS", 1000)
    assert wasserstein_uniformity(RANDOM) == pytest.approx(full, abs=1e-12)


def test_wasserstein_uniform_points_are_close_to_zero():
    many = torch.randn(1500, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert wasserstein_uniformity(many) < 0.01
    assert wasserstein_uniformity(torch.ones(20, 16)) == pytest.approx(1.0, abs=1e-9)  # all cosines 1: E|1 - X|


# --- representation_metrics and errors ----------------------------------------------------------------


def test_representation_metrics_together():
    u, v = fixture("C")["z_a"], fixture("C")["z_b"]
    m = representation_metrics(u, v, normalise=True)
    assert m["alignment"] == pytest.approx(0.526667, abs=1e-6)
    assert m["uniformity"] == pytest.approx(-1.602115, abs=1e-6)
    assert m["wasserstein_uniformity"] == pytest.approx(71 / 225, abs=1e-9)
    assert m["effective_rank"] == pytest.approx(2.833975, abs=1e-6) and m["rank"] == 3
    assert m["rank_inputs"] == "L2-normalised" and m["uniformity_view"] == "first"
    assert (m["n_samples"], m["dim"], m["uniformity_samples"], m["wasserstein_pairs"], m["reference_dim"]) == (
        4,
        3,
        4,
        6,
        3,
    )
    raw = representation_metrics(u)
    assert "alignment" not in raw and raw["rank_inputs"] == "as given"
    assert raw["effective_rank"] == pytest.approx(effective_rank(u)) and raw["effective_rank"] != m["effective_rank"]


def test_representation_metrics_subsamples_are_recorded():
    m = representation_metrics(RANDOM, uniformity_samples=100, erank_samples=50, wasserstein_max_pairs=1000, seed=2)
    assert (m["uniformity_samples"], m["erank_samples"], m["wasserstein_pairs"], m["seed"]) == (100, 50, 1000, 2)
    assert m["uniformity"] == uniformity(RANDOM, max_samples=100, seed=2)
    assert m == representation_metrics(
        RANDOM, uniformity_samples=100, erank_samples=50, wasserstein_max_pairs=1000, seed=2
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: alignment(RANDOM, RANDOM[:5]), "same shape"),
        (lambda: uniformity(RANDOM[:1]), "at least 2"),
        (lambda: uniformity(RANDOM, t=0), "t must"),
        (lambda: wasserstein_uniformity(RANDOM, mode="approx"), "mode"),
        (lambda: wasserstein_uniformity(RANDOM, reference_dim=1), "reference_dim"),
        (lambda: wasserstein_uniformity(RANDOM, reference_samples=np.zeros(3)), "sampled"),
        (lambda: rank(RANDOM[0]), "shape"),
        (lambda: effective_rank(RANDOM * math.inf), "NaN or inf"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
