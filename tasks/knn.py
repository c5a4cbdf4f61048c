"""Weighted k-nearest-neighbour classifier on frozen features (evaluation spec, section 2).

The formula is the one shared by joshr17/HCL, rjiang03/H-SCL, sadimanna/DySTreSS and lightly-ai/lightly.
Bank and queries are L2-normalised here; for a query ``q`` with cosines ``c_j = q . f_j`` to the bank,

.. math::
    \\operatorname{score}(c) = \\sum_{j \\in \\operatorname{top-}k} 1[y_j = c]\\, e^{c_j / T},
    \\qquad \\hat y = \\arg\\max_c \\operatorname{score}(c).

Ties between classes are broken towards the lower class index, for the prediction and for the top-5
ranking (the reference codes use an unstable sort). Among bank entries with exactly the same cosine at
the k-th position, which ones are kept is ``torch.topk``'s choice.

Presets (``KNN_PRESETS``): ``default`` k = 200, T = 0.1 (lightly; DySTreSS's CIFAR monitor); ``hcl``
k = 200, T = 0.5 (HCL, H-SCL and debiased use the *training* temperature, 0.5 in their runs: pass yours);
``lightly_small`` k = 20, T = 0.1 (lightly's Imagenette and ImageNet-100 benchmarks).

Memory: the queries are processed in chunks, so at most ``chunk_size x M`` similarities exist at once.

Example:
    >>> import torch
    >>> from mmcl.tasks import knn_accuracy
    >>> bank, bank_y = torch.randn(500, 32), torch.randint(0, 10, (500,))
    >>> result = knn_accuracy(bank, bank_y, torch.randn(100, 32), torch.randint(0, 10, (100,)), num_classes=10)
    >>> sorted(result)[:3]
    ['k', 'n_test', 'n_train']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcl.tasks._common import ArrayLike, as_feature_pair, as_features, as_labels, infer_num_classes, topk_accuracies

KNN_PRESETS: dict[str, dict[str, float]] = {
    "default": {"k": 200, "temperature": 0.1},
    "hcl": {"k": 200, "temperature": 0.5},
    "lightly_small": {"k": 20, "temperature": 0.1},
}

#: Similarities held at once when ``chunk_size`` is not given (64 Mi entries: 256 MiB in float32).
CHUNK_ELEMENTS = 1 << 26


def _check_knn_options(k: int, temperature: float) -> tuple[int, float]:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return int(k), float(temperature)


@torch.no_grad()
def knn_predict(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    query_features: ArrayLike,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int | None = None,
) -> Tensor:
    """Class scores of the weighted k-NN classifier.

    Args:
        train_features: feature bank ``(M, F)`` (normalised here).
        train_labels: bank labels ``(M,)`` in ``[0, num_classes)``.
        query_features: queries ``(Q, F)`` (normalised here).
        num_classes: ``C``.
        k: neighbours kept per query; capped at ``M``.
        temperature: ``T`` of the ``exp(c / T)`` weights.
        chunk_size: queries per chunk; default ``max(1, 2**26 // M)``.

    Returns:
        ``(Q, C)`` scores (float32; float64 for float64 inputs or T < 1/80) on the features' device; the prediction
        is ``scores.argmax(1)`` (``torch.argmax`` returns the first maximum, i.e. the lower class index).
    """
    bank, queries = as_feature_pair(train_features, "query_features", query_features)
    labels = as_labels("train_labels", train_labels, bank.shape[0]).to(bank.device)
    num_classes = infer_num_classes(num_classes, labels)
    k, temperature = _check_knn_options(k, temperature)
    k = min(k, bank.shape[0])
    # exp(1/T) overflows float32 below T = 1/88: use float64 there
    floor = torch.float64 if temperature < 1 / 80 else torch.float32
    dtype = torch.promote_types(torch.promote_types(bank.dtype, queries.dtype), floor)
    bank = F.normalize(bank.to(dtype), dim=1)
    queries = F.normalize(queries.to(device=bank.device, dtype=dtype), dim=1)
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // bank.shape[0])
    elif isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    scores = []
    for chunk in queries.split(int(chunk_size)):
        similarity, index = (chunk @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        chunk_scores = torch.zeros(chunk.shape[0], num_classes, dtype=dtype, device=bank.device)
        scores.append(chunk_scores.scatter_add_(1, labels[index], weights))
    return torch.cat(scores)


def knn_accuracy(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    num_classes: int | None = None,
    k: int | None = None,
    temperature: float | None = None,
    preset: str = "default",
    chunk_size: int | None = None,
) -> dict:
    """Top-1 / top-5 accuracy (%) of the weighted k-NN classifier on the test split.

    Args:
        train_features, train_labels: the bank ``(M, F)``, ``(M,)``: the training split, test-time transform.
        test_features, test_labels: ``(Q, F)``, ``(Q,)``.
        num_classes: ``C``; default ``max label + 1`` over both splits.
        k, temperature: override the preset's values.
        preset: a name of ``KNN_PRESETS``.
        chunk_size: see ``knn_predict``.

    Returns:
        ``{"top1", "top5" (only when C >= 5), "k" (after capping at M), "temperature", "preset", "num_classes",
        "n_train", "n_test"}``; accuracies in percent, ties between classes broken towards the lower index.
    """
    if preset not in KNN_PRESETS:
        raise ValueError(f"preset must be one of {sorted(KNN_PRESETS)}, got {preset!r}")
    k = KNN_PRESETS[preset]["k"] if k is None else k
    temperature = KNN_PRESETS[preset]["temperature"] if temperature is None else temperature
    train_features = as_features("train_features", train_features)
    test_features = as_features("test_features", test_features)
    train_y = as_labels("train_labels", train_labels, train_features.shape[0])
    test_y = as_labels("test_labels", test_labels, test_features.shape[0])
    num_classes = infer_num_classes(num_classes, train_y, test_y)
    scores = knn_predict(train_features, train_y, test_features, num_classes, k, temperature, chunk_size)
    return {
        **topk_accuracies(scores, test_y),
        "k": min(int(k), train_features.shape[0]),
        "temperature": float(temperature),
        "preset": preset,
        "num_classes": num_classes,
        "n_train": train_features.shape[0],
        "n_test": test_features.shape[0],
    }
