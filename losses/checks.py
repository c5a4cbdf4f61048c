"""Input validation shared by every loss: clear errors that name the parameter and the fix."""

from __future__ import annotations

import inspect
import numbers

import torch
from torch import Tensor


def view_names(count: int) -> list[str]:
    """How errors name the views: ``z_a``, ``z_b`` for a pair, ``z_1`` .. ``z_V`` for more."""
    return ["z_a", "z_b"] if count == 2 else [f"z_{k + 1}" for k in range(count)]


def check_views(views: list, max_views: int | None = None, pairs_only: str | None = None) -> None:
    """``V >= 2`` floating tensors of one shape ``(N, d)``, ``N >= 1``, finite; at most ``max_views`` of them
    (``pairs_only`` says why a loss takes two)."""
    if len(views) < 2:
        raise ValueError(
            f"a contrastive loss needs at least two views of the same instances, got {len(views)}; pass "
            "loss_fn(z_a, z_b), loss_fn(z_1, ..., z_V), loss_fn(views=[...]) or features of shape (N, V, d)"
        )
    names = view_names(len(views))
    for name, z in zip(names, views):
        if not isinstance(z, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (N, d), got {type(z).__name__}")
        if z.dim() != 2:
            raise ValueError(f"{name} must have shape (N, d), got shape {tuple(z.shape)}; flatten extra dims first")
        if not z.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
    for name, z in zip(names[1:], views[1:]):
        if z.shape != views[0].shape:
            raise ValueError(
                f"{names[0]} and {name} must have the same shape (row i of each is a view of instance i), "
                f"got {tuple(views[0].shape)} and {tuple(z.shape)}"
            )
    if views[0].shape[0] == 0:
        raise ValueError(f"{' and '.join(names)} are empty (N = 0); pass at least one instance")
    if max_views is not None and len(views) > max_views:
        raise ValueError(
            f"{pairs_only}; got {len(views)} views. Call it on each pair of views, or use a loss that takes "
            "V views (nt_xent, supcon, scl, h_scl, dcl, debiased, hcl, margin, macl, dystress)"
        )
    for name, z in zip(names, views):
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"{name} contains NaN or inf; check the encoder output (learning rate, mixed precision)")


def check_global_views(global_views, n_views: int) -> int | None:
    """Multi-crop's number of global views: None (every view), or an integer in ``[2, V]``."""
    if global_views is None:
        return None
    if (
        isinstance(global_views, bool)
        or not isinstance(global_views, numbers.Integral)
        or not 2 <= global_views <= n_views
    ):
        raise ValueError(
            f"global_views must be an integer from 2 to the number of views ({n_views}), got {global_views!r}: "
            "the first global_views views are the global crops, the rest local crops"
        )
    return int(global_views)


def check_labels(labels: Tensor, n: int) -> None:
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.shape[0] != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a tensor of shape (N,) = ({n},), got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers (class ids), got dtype {labels.dtype}")


def check_negatives(negatives: Tensor, n: int, d: int) -> None:
    if not isinstance(negatives, Tensor) or negatives.dim() != 2 or negatives.shape != (n, d):
        shape = tuple(negatives.shape) if isinstance(negatives, Tensor) else type(negatives).__name__
        raise ValueError(f"negatives must have shape (N, d) = ({n}, {d}) like z_a, got {shape}")
    if not bool(torch.isfinite(negatives).all()):
        raise ValueError("negatives contains NaN or inf")


def check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def compute_dtype(z: Tensor) -> torch.dtype:
    """float32 for half-precision inputs (mixed precision), the input's own dtype otherwise."""
    return torch.float32 if z.dtype in (torch.float16, torch.bfloat16) else z.dtype


def normalise(z: Tensor, eps: float = 1e-12) -> Tensor:
    """Row-wise L2 normalisation in at least float32: ``z / max(||z||, eps)``."""
    return torch.nn.functional.normalize(z.to(compute_dtype(z)), dim=1, eps=eps)


def construct(kind: str, cls: type, options: dict):
    """``cls(**options)`` from a config dict, with a ValueError that lists the valid keys."""
    valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown {kind} option(s) {unknown} for {cls.__name__}; valid: {valid}")
    try:
        return cls(**options)
    except TypeError as error:
        raise ValueError(f"{kind} {cls.__name__}: {error}; valid options: {valid}") from None
