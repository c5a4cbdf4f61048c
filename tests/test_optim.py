"""Optimisers and the learning-rate schedule, against hand computations."""

import math

import pytest
import torch
from torch import nn

from mmcl.engine.config import OptimConfig
from mmcl.engine.optim import LARS, build_optimizer, build_scheduler, parameter_groups


def test_lars_scales_each_update_by_the_trust_ratio():
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))  # ||w|| = 5
    w.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)  # ||g|| = 1
    optimizer = LARS([w], lr=0.1, momentum=0.9, weight_decay=0.0, trust_coefficient=0.01)
    optimizer.step()
    expected = torch.tensor([3.0, 4.0], dtype=torch.float64) - 0.1 * 0.01 * 5 * torch.tensor([0.6, 0.8])
    assert torch.allclose(w.detach(), expected, atol=1e-15)
    w.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)
    norm = torch.linalg.vector_norm(w.detach())
    buffer = 0.9 * 0.01 * 5 * torch.tensor([0.6, 0.8], dtype=torch.float64) + 0.01 * norm * torch.tensor([0.6, 0.8])
    before = w.detach().clone()
    optimizer.step()
    assert torch.allclose(w.detach(), before - 0.1 * buffer, atol=1e-15)


def test_lars_weight_decay_enters_the_trust_ratio_and_excluded_groups_are_plain_sgd():
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    w.grad, b.grad = torch.zeros(2, dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    optimizer = LARS(
        [{"params": [w]}, {"params": [b], "lars_exclude": True, "weight_decay": 0.0}],
        lr=0.5,
        weight_decay=0.1,
        trust_coefficient=0.001,
    )
    optimizer.step()
    # g = 0 + 0.1 w; trust = 0.001 * ||w|| / ||0.1 w|| = 0.01; update = lr * trust * 0.1 w
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64) * (1 - 0.5 * 0.01 * 0.1))
    assert b.item() == pytest.approx(1.0 - 0.5 * 2.0)


def test_biases_and_norm_parameters_skip_weight_decay():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, OptimConfig())
    assert [p.shape for p in decay["params"]] == [(4, 3), (2, 4)]
    assert len(no_decay["params"]) == 4 and no_decay["weight_decay"] == 0.0
    optimizer = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    assert "lars_exclude" not in optimizer.param_groups[1]


@pytest.mark.parametrize(
    "name, kind", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD), ("lars", LARS)]
)
def test_build_optimizer_by_name(name, kind):
    assert isinstance(build_optimizer(nn.Linear(2, 2), OptimConfig(name=name)), kind)


def test_warmup_then_cosine_schedule():
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=2.0)
    scheduler = build_scheduler(optimizer, OptimConfig(lr=2.0, warmup_steps=4, min_lr_ratio=0.1), total_steps=14)
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    for step in range(4, 14):
        progress = (step - 4) / 10
        assert rates[step] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))
    constant = build_scheduler(torch.optim.SGD([parameter], lr=1.0), OptimConfig(schedule="constant"), 10)
    assert constant.get_last_lr() == [1.0]


def test_linear_decay_schedule():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=3.0)
    scheduler = build_scheduler(optimizer, OptimConfig(lr=3.0, schedule="linear", warmup_steps=2), total_steps=8)
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([1.5, 3.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5])


def test_a_warmup_ratio_follows_the_runs_length_rounded_up_as_hugging_face_does():
    quickstart = OptimConfig(warmup_ratio=0.065)
    assert [quickstart.warmup_for(total) for total in (150, 40, 10, 1)] == [10, 3, 1, 1]
    assert OptimConfig(warmup_ratio=0.07).warmup_for(100) == 7  # 0.07 * 100 is 7.000000000000001 in floats
    assert OptimConfig(warmup_steps=5, warmup_ratio=None).warmup_for(1000) == 5
    assert OptimConfig().warmup_for(1000) == 0
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, OptimConfig(lr=1.0, warmup_ratio=0.25, schedule="constant"), total_steps=8)
    rates = []
    for _ in range(4):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.5, 1.0, 1.0, 1.0])  # 2 warm-up steps of 8
