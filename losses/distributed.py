"""Gather embeddings across processes with gradients that match a single process on the global batch.

Under data parallelism each process computes the loss of its *local* anchors against the candidates
of the *global* batch. :func:`gather_with_grad` concatenates every rank's rows along dim 0 and, in the
backward pass, sums the gradients that every rank's loss sends to each shard (a reduce-scatter with
``sum``) before handing each rank the gradient of its own rows. With each rank's loss scaled so that
the mean of the ranks' losses is the global loss, and gradients averaged across ranks (DDP), the
parameter gradients equal those of one process computing the loss on the concatenated batch.

Popular implementations got this wrong by returning only the local gradient (off by the world size) or
by gathering labels in a different order than embeddings; labels and hard negatives are gathered here
with the same rank order as the embeddings.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed import _functional_collectives as funcol


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather ``x`` (N_local, ...) from every rank into (world_size * N_local, ...), rank order, with gradient."""
    if world_size() == 1:
        return x
    return funcol.wait_tensor(funcol.all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD))


def gather(x: Tensor) -> Tensor:
    """All-gather without gradient (labels, detached keys), same rank order as :func:`gather_with_grad`."""
    if world_size() == 1:
        return x
    return funcol.wait_tensor(funcol.all_gather_single(x.detach().contiguous(), 0, dist.group.WORLD))


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of a (detached) tensor over ranks: global counts for exact means over uneven selections."""
    if world_size() == 1:
        return x
    return funcol.wait_tensor(funcol.all_reduce(x.detach(), "sum", dist.group.WORLD))


def check_equal_local_sizes(n_local: int) -> None:
    """Raise unless every rank holds ``n_local`` rows (an all-gather needs equal shards)."""
    if world_size() == 1:
        return
    sizes = gather(torch.tensor([n_local], device=_device()))
    if bool((sizes != n_local).any()):
        raise ValueError(
            f"every process must contribute the same number of rows to a gathered loss, got {sizes.tolist()}; "
            "use drop_last=True in the data loader"
        )


def _device() -> torch.device:
    backend = dist.get_backend()
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
