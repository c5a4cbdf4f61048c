"""The spec's test fixtures (../shared/spec/losses.md, section 2), in float64."""

import math

import torch

DT = torch.float64


def fixture(name: str) -> dict:
    if name == "A":
        u = torch.eye(2, dtype=DT)
        return {"z_a": u, "z_b": u.clone()}
    if name == "B":
        u = torch.tensor([[3, 4, 0], [0, 3, 4], [4, 0, 3]], dtype=DT)
        v = torch.tensor([[4, 3, 0], [0, 4, 3], [3, 0, 4]], dtype=DT)
        return {"z_a": u, "z_b": v}
    if name == "C":
        u = torch.tensor([[1, 2, 2], [2, 1, -2], [0, 3, 4], [4, 0, 3]], dtype=DT)
        v = torch.tensor([[2, 2, 1], [2, -1, -2], [3, 0, 4], [4, 3, 0]], dtype=DT)
        return {"z_a": u, "z_b": v}
    if name == "S":
        k = torch.arange(3, dtype=DT)
        u = torch.stack([torch.cos(2 * math.pi * k / 3), torch.sin(2 * math.pi * k / 3)], 1)
        return {"z_a": u, "z_b": u.clone()}
    raise KeyError(name)


LABELS_C = torch.tensor([0, 1, 0, 1])
NEGATIVES_C = torch.tensor([[0, 0, 1], [1, 0, 0], [0, 1, 0], [1, 1, 1]], dtype=DT)
