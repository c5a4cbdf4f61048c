"""Input validation shared by every loss: clear errors that name the parameter and the fix."""

from __future__ import annotations

import inspect
import numbers

import torch
from torch import Tensor


def check_embeddings(z_a: Tensor, z_b: Tensor) -> None:
    for name, z in (("z_a", z_a), ("z_b", z_b)):
        if not isinstance(z, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (N, d), got {type(z).__name__}")
        if z.dim() != 2:
            raise ValueError(f"{name} must have shape (N, d), got shape {tuple(z.shape)}; flatten extra dims first")
        if not z.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {z.dtype}")
    if z_a.shape != z_b.shape:
        raise ValueError(
            f"z_a and z_b must have the same shape (row i of each is a positive pair), "
            f"got {tuple(z_a.shape)} and {tuple(z_b.shape)}"
        )
    if z_a.shape[0] == 0:
        raise ValueError("z_a and z_b are empty (N = 0); pass at least one pair")
    for name, z in (("z_a", z_a), ("z_b", z_b)):
        if not bool(torch.isfinite(z).all()):
            raise ValueError(f"{name} contains NaN or inf; check the encoder output (learning rate, mixed precision)")


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
