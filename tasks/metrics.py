"""Label-free representation metrics on embeddings (evaluation spec, sections 5-8).

* ``alignment(u, v, alpha=2)``: ``mean_i ||u_i - v_i||^alpha`` of L2-normalised positive pairs.
* ``uniformity(x, t=2)``: ``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` of L2-normalised rows (Wang & Isola,
  arXiv:2005.10242). O(M^2): above ``max_samples`` (20,000) rows a seeded random subset is used.
* ``wasserstein_uniformity(x)``: W1 distance between the pairwise cosines ``{x_i . x_j : i < j}`` of the
  L2-normalised rows and the law of the inner product of two uniform points on ``S^{D-1}``, for which
  ``(1 + X) / 2 ~ Beta((D-1)/2, (D-1)/2)`` (DHEL, arXiv:2405.18045). ``mode="exact"`` integrates
  ``|F_S - F_D|`` piecewise in closed form (deterministic); ``mode="sampled"`` is the reference procedure
  (SciPy's ``wasserstein_distance`` against 10,000 seeded reference samples).
* ``effective_rank(x)``: RankMe (Garrido et al., arXiv:2210.02885): ``exp`` of the entropy of
  ``p_k = sigma_k / sum(sigma) + eps`` (renormalised), singular values of the *uncentred* matrix.
* ``rank(x)``: numerical rank of the ``(D, D)`` sample covariance (``M - 1`` normalisation), singular
  values above an absolute tolerance ``1e-5`` (pakoromilas/DHEL-KCL).

Alignment, uniformity and Wasserstein uniformity always L2-normalise their inputs; effective rank and
rank use the embeddings exactly as given (``representation_metrics(normalise=True)`` normalises them
first and says so). Every function returns a Python number; sub-sampling is seeded (``numpy``'s
``default_rng(seed)``).

Example:
    >>> import torch
    >>> from mmcl.tasks import representation_metrics
    >>> z = torch.randn(256, 32)
    >>> m = representation_metrics(z, z + 0.1 * torch.randn(256, 32))
    >>> 0 < m["alignment"] < 4 and -8 <= m["uniformity"] <= 0 and 1 <= m["effective_rank"] <= 32
    True
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import special, stats
from torch import Tensor

from mmcl.tasks._common import ArrayLike, as_features

UNIFORMITY_SAMPLES = 20_000
ERANK_SAMPLES = 25_600
REFERENCE_SAMPLES = 10_000
#: Similarities held at once by the chunked pairwise computations.
CHUNK_ELEMENTS = 1 << 24


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def subsample_rows(x: Tensor, max_rows: int | None, seed: int) -> Tensor:
    """``x`` itself when it has at most ``max_rows`` rows, else a seeded random subset (rows kept in order)."""
    if max_rows is None or x.shape[0] <= max_rows:
        return x
    index = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=max_rows, replace=False))
    return x[torch.from_numpy(index).to(x.device)]


def alignment(u: ArrayLike, v: ArrayLike, alpha: float = 2.0) -> float:
    """``mean_i ||u_i - v_i||_2^alpha`` of the L2-normalised positive pairs ``u``, ``v`` (M, D); in [0, 2^alpha]."""
    u, v = as_features("u", u), as_features("v", v)
    if u.shape != v.shape:
        raise ValueError(
            f"u and v must have the same shape (row i of each is a pair), got {tuple(u.shape)}, {tuple(v.shape)}"
        )
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha!r}")
    u, v = F.normalize(u.double(), dim=1), F.normalize(v.to(u.device).double(), dim=1)
    return (u - v).norm(dim=1).pow(alpha).mean().item()


def uniformity(x: ArrayLike, t: float = 2.0, max_samples: int | None = UNIFORMITY_SAMPLES, seed: int = 0) -> float:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` over the unordered pairs of the L2-normalised rows of ``x``.

    Args:
        x: embeddings ``(M, D)``, M >= 2.
        t: kernel scale.
        max_samples: above this many rows, a seeded random subset of that size is used (``None``: all rows).
        seed: seed of that subset.

    Returns:
        A value in ``[-4t, 0]``: 0 for a collapsed set, ``-2tM/(M-1)`` for a regular simplex.
    """
    x = as_features("x", x, min_rows=2)
    if not t > 0:
        raise ValueError(f"t must be > 0, got {t!r}")
    x = F.normalize(subsample_rows(x, max_samples, seed).to(_work_dtype(x)), dim=1)
    m = x.shape[0]
    rows = max(1, CHUNK_ELEMENTS // m)
    columns = torch.arange(m, device=x.device)
    parts = []
    for start in range(0, m - 1, rows):
        block = x[start : start + rows]
        squared = (2 - 2 * block @ x.T).clamp_min(0)
        upper = columns[None, :] > torch.arange(start, start + block.shape[0], device=x.device)[:, None]
        parts.append(torch.logsumexp((-t * squared[upper]).double(), dim=0))
    return (torch.logsumexp(torch.stack(parts), dim=0) - math.log(m * (m - 1) / 2)).item()


def effective_rank(x: ArrayLike, eps: float = 1e-7, max_samples: int | None = ERANK_SAMPLES, seed: int = 0) -> float:
    """RankMe effective rank of the embeddings ``x`` (M, D), used as given (not centred, not normalised).

    ``p_k = sigma_k / sum_j sigma_j + eps``, renormalised to sum to 1, ``erank = exp(-sum_k p_k log p_k)``
    over the ``min(M, D)`` singular values. Unlike the reference code (which rescales the singular values
    by 10 when their sum is below eps or above 1000 but divides by the sum taken before), the sum is always
    the current one, so the result is invariant to a global scale. Computed in float64 on up to
    ``max_samples`` rows (seeded subset).

    Returns:
        A value in ``[1, min(M, D)]``; NaN for an all-zero matrix.
    """
    x = as_features("x", x)
    s = torch.linalg.svdvals(subsample_rows(x, max_samples, seed).double())
    if not s.sum() > 0:
        return math.nan
    p = s / s.sum() + eps
    p = p / p.sum()
    return torch.exp(-torch.special.xlogy(p, p).sum()).item()


def rank(x: ArrayLike, tol: float = 1e-5) -> int:
    """Numerical rank of the ``(D, D)`` sample covariance of the rows of ``x`` (M, D), as given.

    Covariance with the ``M - 1`` normalisation (M >= 2); singular values ``> tol`` (absolute) are counted, as
    ``numpy.linalg.matrix_rank(np.cov(x.T), tol=1e-5)`` in the reference. At most ``min(D, M - 1)``.
    """
    x = as_features("x", x, min_rows=2)
    covariance = torch.cov(x.double().T).reshape(x.shape[1], x.shape[1])
    return int((torch.linalg.svdvals(covariance) > tol).sum())


def _pair_similarities(x: Tensor, max_pairs: int | None, seed: int) -> np.ndarray:
    """Cosines ``x_i . x_j`` (i < j) of unit rows ``x`` as float64; a seeded subset when above ``max_pairs``."""
    m = x.shape[0]
    total = m * (m - 1) // 2
    if max_pairs is not None and total > max_pairs:
        k = np.random.default_rng(seed).choice(total, size=max_pairs, replace=False)
        # linear index k of the row-major upper triangle -> (i, j)
        i = m - 2 - np.floor(np.sqrt(4.0 * m * (m - 1) - 8.0 * k - 7) / 2 - 0.5).astype(np.int64)
        j = k + i + 1 - total + (m - i) * (m - i - 1) // 2
        i_t, j_t = torch.from_numpy(i).to(x.device), torch.from_numpy(j).to(x.device)
        return (x[i_t] * x[j_t]).sum(dim=1).double().cpu().numpy()
    rows = max(1, CHUNK_ELEMENTS // m)
    columns = torch.arange(m, device=x.device)
    parts = []
    for start in range(0, m - 1, rows):
        block = x[start : start + rows]
        upper = columns[None, :] > torch.arange(start, start + block.shape[0], device=x.device)[:, None]
        parts.append((block @ x.T)[upper].double().cpu())
    return torch.cat(parts).numpy()


def _reference_cdf(x: np.ndarray, a: float) -> tuple[np.ndarray, np.ndarray]:
    """``F_D(x) = I_y(a, a)`` and ``G(x) = int_{-1}^{x} F_D = 2 y I_y(a, a) - I_y(a + 1, a)``, ``y = (1 + x) / 2``.

    ``I_y(a + 1, a) = I_y(a, a) - y^a (1 - y)^a / (a B(a, a))`` saves a second incomplete-beta evaluation.
    """
    y = np.clip((1 + x) / 2, 0.0, 1.0)
    cdf = special.betainc(a, a, y)
    with np.errstate(divide="ignore"):
        log_term = a * (np.log(y) + np.log1p(-y)) - math.log(a) - special.betaln(a, a)
    return cdf, 2 * y * cdf - (cdf - np.exp(log_term))


def _exact_w1(similarities: np.ndarray, dim: int) -> float:
    """``int_{-1}^{1} |F_S(x) - F_D(x)| dx`` with ``F_S`` the empirical CDF, integrated interval by interval."""
    a = (dim - 1) / 2
    n = similarities.size
    points = np.concatenate([[-1.0], np.clip(np.sort(similarities), -1.0, 1.0), [1.0]])
    cdf, integral = _reference_cdf(points, a)
    left, right = points[:-1], points[1:]  # F_S = level on [left, right)
    level = np.arange(n + 1) / n
    # F_D is increasing, so on each interval F_D - level changes sign at most once
    above = integral[1:] - integral[:-1] - level * (right - left)  # int (F_D - level)
    area = np.where(cdf[:-1] >= level, above, -above)
    crossing = (cdf[:-1] < level) & (cdf[1:] > level)
    if crossing.any():
        lo, hi, c = left[crossing], right[crossing], level[crossing]
        mid = np.clip(2 * special.betaincinv(a, a, c) - 1, lo, hi)
        integral_mid = _reference_cdf(mid, a)[1]
        area[crossing] = (c * (mid - lo) - (integral_mid - integral[:-1][crossing])) + (
            integral[1:][crossing] - integral_mid - c * (hi - mid)
        )
    return float(np.maximum(area, 0.0).sum())


def wasserstein_uniformity(
    x: ArrayLike,
    mode: Literal["exact", "sampled"] = "exact",
    reference_dim: int | None = None,
    seed: int = 0,
    max_pairs: int | None = None,
    num_reference_samples: int = REFERENCE_SAMPLES,
    reference_samples: np.ndarray | None = None,
) -> float:
    """W1 distance between the pairwise cosines of the L2-normalised rows of ``x`` and the uniform-sphere law.

    Args:
        x: embeddings ``(M, D)``, M >= 2; normalised here (the reference function does not).
        mode: ``"exact"`` (deterministic, closed form against the Beta CDF) or ``"sampled"`` (SciPy's
            ``wasserstein_distance`` against ``num_reference_samples`` seeded draws, as the reference).
        reference_dim: ``D`` of the reference law; default the embedding width. 128 reproduces the reference
            code on any width.
        seed: seed of the pair subset and of the reference draws.
        max_pairs: above this many pairs, a seeded subset of that size without replacement (the reference's
            option uses 50,000); ``None``: all ``M(M-1)/2`` pairs.
        num_reference_samples: reference draws in ``"sampled"`` mode.
        reference_samples: explicit reference draws for ``"sampled"`` mode (parity with another sampler).

    Returns:
        The distance, in ``[0, 2]``; 0 iff the cosines are distributed as for uniformly spread points.
    """
    x = as_features("x", x, min_rows=2)
    dim = x.shape[1] if reference_dim is None else reference_dim
    if isinstance(dim, bool) or int(dim) != dim or dim < 2:
        raise ValueError(f"reference_dim must be an integer >= 2, got {dim!r}")
    if mode not in ("exact", "sampled"):
        raise ValueError(f"mode must be 'exact' or 'sampled', got {mode!r}")
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1 or None, got {max_pairs!r}")
    similarities = _pair_similarities(F.normalize(x.to(_work_dtype(x)), dim=1), max_pairs, seed)
    if mode == "exact":
        if reference_samples is not None:
            raise ValueError("reference_samples is only used with mode='sampled'")
        return _exact_w1(similarities, int(dim))
    if reference_samples is None:
        a = (int(dim) - 1) / 2
        rng = np.random.default_rng(seed)
        reference_samples = 2 * stats.beta.rvs(a, a, size=num_reference_samples, random_state=rng) - 1
    return float(stats.wasserstein_distance(similarities, np.asarray(reference_samples, dtype=np.float64)))


def representation_metrics(
    features: ArrayLike,
    features_second_view: ArrayLike | None = None,
    normalise: bool = False,
    seed: int = 0,
    alpha: float = 2.0,
    t: float = 2.0,
    uniformity_samples: int | None = UNIFORMITY_SAMPLES,
    erank_samples: int | None = ERANK_SAMPLES,
    wasserstein_mode: Literal["exact", "sampled"] = "exact",
    reference_dim: int | None = None,
    wasserstein_max_pairs: int | None = 5_000_000,
) -> dict:
    """All metrics of one set of embeddings, with the settings that produced them.

    Args:
        features: first view ``(M, D)``; uniformity, Wasserstein uniformity, effective rank and rank use it.
        features_second_view: second view ``(M, D)`` of the same items (training augmentations); when given,
            ``alignment`` is reported.
        normalise: L2-normalise the rows before effective rank and rank (they use the embeddings as given by
            default; the other metrics always normalise).
        seed: seed of every sub-sample and of the sampled Wasserstein reference.
        alpha, t: alignment exponent and uniformity scale.
        uniformity_samples, erank_samples: row caps of the seeded subsets (spec: 20,000 and 25,600).
        wasserstein_mode, reference_dim: see ``wasserstein_uniformity``.
        wasserstein_max_pairs: pair cap for the Wasserstein uniformity (all pairs up to ~3,160 rows); its
            similarities come from the rows used for uniformity.

    Returns:
        ``{"alignment" (with a second view), "uniformity", "wasserstein_uniformity", "effective_rank", "rank",
        "n_samples", "dim", "uniformity_samples", "wasserstein_pairs", "wasserstein_mode", "reference_dim",
        "erank_samples", "rank_inputs", "uniformity_view", "seed"}``; ``rank_inputs`` is ``"as given"`` or
        ``"L2-normalised"``.
    """
    x = as_features("features", features, min_rows=2)
    out: dict = {}
    if features_second_view is not None:
        out["alignment"] = alignment(x, features_second_view, alpha)
    subset = subsample_rows(x, uniformity_samples, seed)
    out["uniformity"] = uniformity(subset, t, max_samples=None)
    m = subset.shape[0]
    pairs = m * (m - 1) // 2
    pairs = pairs if wasserstein_max_pairs is None else min(pairs, wasserstein_max_pairs)
    out["wasserstein_uniformity"] = wasserstein_uniformity(
        subset, wasserstein_mode, reference_dim, seed, max_pairs=wasserstein_max_pairs
    )
    ranked = F.normalize(x.double(), dim=1) if normalise else x
    out["effective_rank"] = effective_rank(ranked, max_samples=erank_samples, seed=seed)
    out["rank"] = rank(ranked)
    out.update(
        n_samples=x.shape[0],
        dim=x.shape[1],
        uniformity_samples=m,
        uniformity_view="first",
        wasserstein_pairs=pairs,
        wasserstein_mode=wasserstein_mode,
        reference_dim=x.shape[1] if reference_dim is None else int(reference_dim),
        erank_samples=min(x.shape[0], erank_samples or x.shape[0]),
        rank_inputs="L2-normalised" if normalise else "as given",
        seed=seed,
    )
    return out


__all__ = [
    "alignment",
    "effective_rank",
    "rank",
    "representation_metrics",
    "uniformity",
    "wasserstein_uniformity",
]
