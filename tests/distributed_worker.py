"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

For every loss, each rank computes the loss of its shard of a global batch with candidates gathered
from both ranks, back-propagates through a small model wrapped in DistributedDataParallel (which
averages gradients), and compares with one process computing the loss on the whole global batch:
the mean of the ranks' losses must equal the single-process loss and the DDP-averaged gradients must
equal its gradients. Batch statistics (MACL's alignment, DCLW's weights) use the global batch.
With ``--blockwise`` the ranks force the blockwise path (blocks of 3 rows) and the reference is dense.
With ``--multiview`` the cases are the losses that take ``V > 2`` views (and multi-crop's
``global_views``): for NT-Xent and SupCon the reference is SupContrast's ``SupConLoss``
(tests/reference_code.py) on the global batch's features ``(N, V, d)``, for the others one process.
Prints one ``OK name`` / ``FAIL name ...`` line per case on rank 0 and exits non-zero on any failure.
"""

import os
import sys
from functools import partial

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mmcl import losses
from tests.reference_code import SupConLoss

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

# (loss, options, call extras, views, global views, SupContrast's (temperature, contrast_mode) or None)
MULTIVIEW_CASES = [
    ("nt_xent", {}, {}, 3, None, (0.5, "all")),
    ("nt_xent", {"temperature": 0.2}, {}, 4, None, (0.2, "all")),
    ("supcon", {}, {"labels"}, 3, None, (0.1, "all")),
    ("supcon", {"contrast_mode": "one"}, {"labels"}, 4, None, (0.1, "one")),
    ("supcon", {}, {}, 4, None, (0.1, "all")),
    ("nt_xent", {}, {}, 4, 2, None),
    ("supcon", {}, {"labels"}, 3, 2, None),
    ("dcl", {"negative_sum": "split"}, {}, 3, None, None),
    ("debiased", {}, {}, 3, None, None),
    ("hcl", {}, {}, 4, None, None),
    ("h_scl", {"beta": 1.0}, {"labels"}, 3, None, None),
    ("macl", {"batch_stat_scope": "global"}, {}, 3, None, None),
    ("margin", {"m2": 0.1, "m3": 0.1}, {}, 3, None, None),
    ("dystress", {}, {}, 3, 2, None),
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
        "x_views": torch.randn(4, GLOBAL_BATCH, D_IN, generator=generator, dtype=torch.float64),
    }


def loss_and_grads(make, loss_fn, inputs, rows, extras):
    model = make()
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


def multiview_loss_and_grads(make, loss_fn, inputs, rows, extras, views, global_views):
    """As :func:`loss_and_grads` for ``views`` views (one forward of all of them); ``loss_fn(views, labels)``."""
    model = make()
    module = model.module if isinstance(model, DistributedDataParallel) else model
    out = model(torch.cat([inputs["x_views"][k][rows] for k in range(views)])).chunk(views)
    labels = inputs["labels"][rows] if "labels" in extras else None
    loss = loss_fn(list(out), labels, global_views)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in module.parameters()]


def supcontrast(temperature: float, mode: str):
    """SupContrast's loss on the views stacked as features (N, V, d), normalised as its training code does."""
    reference = SupConLoss(temperature, mode, temperature)
    return lambda views, labels, _: reference(torch.nn.functional.normalize(torch.stack(views, 1), dim=2), labels)


def ours(loss_fn):
    return lambda views, labels, global_views: loss_fn(views=views, labels=labels, global_views=global_views)


def multiview_cases(blockwise: bool):
    """(label, reference loss, distributed loss, extras, views, global views) of every multi-view case."""
    for name, options, extras, views, global_views, reference in MULTIVIEW_CASES:
        label = f"{name} {options} V={views} global_views={global_views}"
        dense = losses.build(name, gather_distributed=False, blockwise=False, **options)
        expected = supcontrast(*reference) if reference is not None else ours(dense)
        path = {"blockwise": True, "block_size": 3} if blockwise else {}
        yield label, expected, ours(losses.build(name, **path, **options)), extras, views, global_views


def ddp_model() -> DistributedDataParallel:
    return DistributedDataParallel(make_model())


def multiview_runs(blockwise: bool, inputs, local_rows):
    """(label, reference run, distributed run) of every multi-view case."""
    for label, expected, loss_fn, extras, views, global_views in multiview_cases(blockwise):
        case = (extras, views, global_views)
        yield (
            label,
            partial(multiview_loss_and_grads, make_model, expected, inputs, slice(0, GLOBAL_BATCH), *case),
            partial(multiview_loss_and_grads, ddp_model, loss_fn, inputs, local_rows, *case),
        )


def pair_runs(blockwise: bool, inputs, local_rows):
    """(label, reference run, distributed run) of every two-view case."""
    for name, options, extras in CASES:
        if blockwise and "blockwise" not in losses.options(name):
            continue
        dense = {"blockwise": False} if blockwise else {}
        reference = losses.build(name, gather_distributed=False, **dense, **options)
        forced = {"blockwise": True, "block_size": 3} if blockwise else {}
        yield (
            f"{name} {options}",
            partial(loss_and_grads, make_model, reference, inputs, slice(0, GLOBAL_BATCH), extras),
            partial(loss_and_grads, ddp_model, losses.build(name, **forced, **options), inputs, local_rows, extras),
        )


def main(blockwise: bool, multiview: bool) -> int:
    """``blockwise``: the distributed side forces the blockwise path (blocks of 3 rows), the reference is dense;
    ``multiview``: the multi-view cases."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    inputs = global_inputs()
    shard = GLOBAL_BATCH // world
    local_rows = slice(rank * shard, (rank + 1) * shard)
    failures = 0
    runs = multiview_runs if multiview else pair_runs
    for label, reference, local in runs(blockwise, inputs, local_rows):
        failures += not _report(rank, world, label, local(), reference())
    dist.barrier()
    dist.destroy_process_group()
    return 1 if failures else 0


def _report(rank, world, label, local, reference) -> bool:
    """Compare the mean of the ranks' losses and the DDP-averaged gradients with the reference; print on rank 0."""
    (local_loss, grads), (reference_loss, reference_grads) = local, reference
    losses_of_ranks = [torch.zeros((), dtype=torch.float64) for _ in range(world)]
    dist.all_gather(losses_of_ranks, local_loss)
    mean_loss = torch.stack(losses_of_ranks).mean()
    loss_error = float((mean_loss - reference_loss).abs())
    grad_error = max(float((g - r).abs().max()) for g, r in zip(grads, reference_grads))
    grad_scale = max(float(r.abs().max()) for r in reference_grads)
    ok = loss_error < 1e-10 and grad_error < 1e-10 and grad_scale > 1e-6
    if rank == 0:
        status = "OK" if ok else "FAIL"
        print(f"{status} {label} loss_err={loss_error:.2e} grad_err={grad_error:.2e} grad_scale={grad_scale:.2e}")
    return ok


if __name__ == "__main__":
    code = main(blockwise="--blockwise" in sys.argv, multiview="--multiview" in sys.argv)
    sys.stdout.flush()
    # Skip interpreter teardown: gloo's background threads can abort in static destructors at exit.
    os._exit(code)
