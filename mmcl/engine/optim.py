"""Optimisers (AdamW, Adam, SGD, LARS) and the warmup + cosine learning-rate schedule.

Written here rather than taken from a library, on purpose:

* LARS: torch has none, and the libraries that do (solo-learn, lightly) are not dependencies of mmcl.
* The schedule: ``transformers``' ``get_cosine_schedule_with_warmup`` (and ``get_cosine_with_min_lr_schedule_with
  _warmup``) warm up as ``step / warmup_steps``, so the first step trains at a learning rate of 0, where mmcl's warm
  up as ``(step + 1) / warmup_steps`` (the last warm-up step reaches ``optim.lr``); and its linear decay has no
  floor (``optim.min_lr_ratio``). Using them would change every run with a warm-up (the quickstart's published
  numbers among them); after the warm-up the cosine is the same.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmcl.engine.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al. 2017, arXiv:1708.03888).

    Each parameter's update is scaled by ``trust_coefficient * ||w|| / (||g|| + weight_decay * ||w||)``;
    parameter groups with ``lars_exclude=True`` (biases and norm layers, as in SimCLR) skip the scaling
    and the weight decay.
    """

    def __init__(
        self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust_coefficient: float = 0.001
    ):
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient, lars_exclude=False
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    grad = grad * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def parameter_groups(model: nn.Module, config: OptimConfig) -> list[dict]:
    if not config.exclude_bias_and_norm:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


def build_optimizer(model: nn.Module, config: OptimConfig, loss: nn.Module | None = None) -> torch.optim.Optimizer:
    """The optimiser of ``model``'s parameters and the trained parameters of ``loss`` (a learnable temperature),
    the latter in a group of their own without weight decay (open_clip excludes ``logit_scale`` from it too)."""
    groups = parameter_groups(model, config)
    loss_parameters = [p for p in loss.parameters() if p.requires_grad] if loss is not None else []
    if loss_parameters:
        groups.append({"params": loss_parameters, "weight_decay": 0.0, "lars_exclude": True})
    if config.name != "lars":
        for group in groups:
            group.pop("lars_exclude", None)
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay, betas=tuple(config.betas))
    if config.name == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, betas=tuple(config.betas))
    if config.name == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return LARS(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        trust_coefficient=config.lars_trust_coefficient,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int):
    """Linear warmup (:meth:`~mmcl.engine.config.OptimConfig.warmup_for` the run), then cosine or linear decay to
    ``min_lr_ratio * lr`` (or constant)."""
    warmup = config.warmup_for(total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if config.schedule == "linear":  # transformers' default, which SimCSE uses
            return config.min_lr_ratio + (1 - config.min_lr_ratio) * (1 - progress)
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
