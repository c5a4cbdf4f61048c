"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

For every loss, each rank computes the loss of its shard of a global batch with candidates gathered
from both ranks, back-propagates through a small model wrapped in DistributedDataParallel (which
averages gradients), and compares with one process computing the loss on the whole global batch:
the mean of the ranks' losses must equal the single-process loss and the DDP-averaged gradients must
equal its gradients. Batch statistics (MACL's alignment, DCLW's weights) use the global batch.
With ``--blockwise`` the ranks force the blockwise path (blocks of 3 rows) and the reference is dense.
Prints one ``OK name`` / ``FAIL name ...`` line per case on rank 0 and exits non-zero on any failure.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mmcl import losses

CASES = [
    ("nt_xent", {}, {}),
    ("info_nce", {"direction": "symmetric"}, {}),
    ("info_nce", {"direction": "u->v"}, {"negatives"}),
    ("simcse", {}, {}),
    ("simcse", {"hard_negative_weight": 1.0}, {"negatives"}),
    ("graphcl", {}, {}),
    ("dcl", {}, {}),
    ("dcl", {"negative_sum": "split"}, {}),
    ("dclw", {"batch_stat_scope": "global"}, {}),
    ("debiased", {}, {}),
    ("hcl", {}, {}),
    ("hcl", {"detach_weights": True}, {}),
    ("supcon", {}, {"labels"}),
    ("supcon", {"contrast_mode": "one"}, {"labels"}),
    ("scl", {}, {"labels"}),
    ("h_scl", {"beta": 1.0}, {"labels"}),
    ("h_scl", {"beta": 1.0, "positives": "augmentation"}, {"labels"}),
    ("margin", {"m2": 0.1, "m3": 0.1}, {}),
    ("margin", {"mode": "gradient_only", "positive_weight": 1.5, "angle_margin": 0.1, "logit_margin": 0.1}, {}),
    ("macl", {"batch_stat_scope": "global"}, {}),
    ("macl", {"batch_stat_scope": "global", "layout": {"name": "cross_view", "direction": "symmetric"}}, {}),
    ("dystress", {}, {}),
    ("dhel", {}, {}),
    ("dhel", {"include_augs": False}, {}),
    ("kcl", {}, {}),
    ("kcl", {"variant": "waida"}, {}),
    ("align_uniform", {}, {}),
]

GLOBAL_BATCH, D_IN, D_OUT = 8, 6, 5


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, 7), torch.nn.Tanh(), torch.nn.Linear(7, D_OUT)).double()


def global_inputs() -> dict:
    generator = torch.Generator().manual_seed(1)
    return {
        "x_a": torch.randn(GLOBAL_BATCH, D_IN, generator=generator, dtype=torch.float64),
        "x_b": torch.randn(GLOBAL_BATCH, D_IN, generator=generator, dtype=torch.float64),
        "x_neg": torch.randn(GLOBAL_BATCH, D_IN, generator=generator, dtype=torch.float64),
        "labels": torch.tensor([0, 1, 2, 0, 1, 1, 2, 0]),
    }


def loss_and_grads(model, loss_fn, inputs, rows, extras):
    model.zero_grad()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    # One forward for both views (and negatives) as a trainer does: DDP allows one forward per backward.
    stacked = torch.cat(
        [inputs["x_a"][rows], inputs["x_b"][rows]] + ([inputs["x_neg"][rows]] if "negatives" in extras else [])
    )
    out = model(stacked)
    n = len(range(*rows.indices(GLOBAL_BATCH)))
    kwargs = {}
    if "labels" in extras:
        kwargs["labels"] = inputs["labels"][rows]
    if "negatives" in extras:
        kwargs["negatives"] = out[2 * n :]
    loss = loss_fn(out[:n], out[n : 2 * n], **kwargs)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in module.parameters()]


def main(blockwise: bool) -> int:
    """``blockwise``: the distributed side forces the blockwise path (blocks of 3 rows), the reference is dense."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    inputs = global_inputs()
    shard = GLOBAL_BATCH // world
    local_rows = slice(rank * shard, (rank + 1) * shard)
    failures = 0
    for name, options, extras in CASES:
        label = f"{name} {options}"
        if blockwise and "blockwise" not in losses.options(name):
            continue
        path = {"blockwise": False} if blockwise else {}
        reference_loss, reference_grads = loss_and_grads(
            make_model(),
            losses.build(name, gather_distributed=False, **path, **options),
            inputs,
            slice(0, GLOBAL_BATCH),
            extras,
        )
        model = DistributedDataParallel(make_model())
        path = {"blockwise": True, "block_size": 3} if blockwise else {}
        local_loss, grads = loss_and_grads(model, losses.build(name, **path, **options), inputs, local_rows, extras)
        losses_of_ranks = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
        dist.all_gather(losses_of_ranks, local_loss)
        mean_loss = torch.stack(losses_of_ranks).mean()
        loss_error = float((mean_loss - reference_loss).abs())
        grad_error = max(float((g - r).abs().max()) for g, r in zip(grads, reference_grads))
        grad_scale = max(float(r.abs().max()) for r in reference_grads)
        ok = loss_error < 1e-10 and grad_error < 1e-10 and grad_scale > 1e-6
        failures += not ok
        if rank == 0:
            status = "OK" if ok else "FAIL"
            print(f"{status} {label} loss_err={loss_error:.2e} grad_err={grad_error:.2e} grad_scale={grad_scale:.2e}")
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    code = main(blockwise="--blockwise" in sys.argv)
    sys.stdout.flush()
    # Skip interpreter teardown: gloo's background threads can abort in static destructors at exit.
    os._exit(code)
