"""Input checks and accuracy helpers shared by the evaluation tasks (features in, plain numbers out)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def as_features(name: str, x: ArrayLike, *, min_rows: int = 1) -> Tensor:
    """A finite, floating-point ``(N, F)`` tensor (numpy arrays are converted; integer dtypes become float32)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array of shape (N, F), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, F), got shape {tuple(x.shape)}; flatten extra dims first")
    if not x.is_floating_point():
        x = x.float()
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got {x.shape[0]}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has no feature columns (shape {tuple(x.shape)})")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def as_feature_pair(train_features: ArrayLike, other_name: str, other: ArrayLike) -> tuple[Tensor, Tensor]:
    """``train_features`` and ``other`` (test or query features) checked to come from the same layer."""
    x, y = as_features("train_features", train_features), as_features(other_name, other)
    if y.shape[1] != x.shape[1]:
        raise ValueError(
            f"{other_name} has {y.shape[1]} feature columns, train_features has {x.shape[1]}; "
            "they must come from the same layer"
        )
    return x, y


def as_labels(name: str, y: ArrayLike, n: int) -> Tensor:
    """An int64 ``(n,)`` tensor of class ids ``>= 0``."""
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != n:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"{name} must have shape (N,) = ({n},) like its features, got {shape}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must be integer class ids, got dtype {y.dtype}")
    y = y.long()
    if n and int(y.min()) < 0:
        raise ValueError(f"{name} must be class ids >= 0, got {int(y.min())}")
    return y


def infer_num_classes(num_classes: int | None, *labels: Tensor) -> int:
    """``num_classes`` if given (checked against the labels), else ``max label + 1`` over all label tensors."""
    present = [int(y.max()) for y in labels if y.numel()]
    if num_classes is None:
        if not present:
            raise ValueError("num_classes is required when there are no labels to infer it from")
        return max(present) + 1
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if present and max(present) >= num_classes:
        raise ValueError(f"labels contain class id {max(present)} >= num_classes = {num_classes}")
    return int(num_classes)


def ranked_classes(scores: Tensor, k: int) -> Tensor:
    """Indices ``(Q, k)`` of the ``k`` highest scores per row; equal scores are ordered by lower class index.

    Uses a stable descending sort (``torch.topk`` does not guarantee an order among ties).
    """
    return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]


def topk_accuracies(scores: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 and (when there are >= 5 classes) top-5 accuracy in percent of class scores ``(Q, C)``."""
    ranked = ranked_classes(scores, min(5, scores.shape[1]))
    hits = ranked == labels.to(ranked.device)[:, None]
    out = {"top1": 100.0 * hits[:, 0].double().mean().item()}
    if scores.shape[1] >= 5:
        out["top5"] = 100.0 * hits.any(dim=1).double().mean().item()
    return out
