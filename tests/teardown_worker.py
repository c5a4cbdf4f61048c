"""Run by tests/test_runs.py under ``torchrun --nproc_per_node 2``: many short gloo process groups, each torn down
as the engine tears its group down (collectives, a barrier, ``destroy_process_group``, then the DDP model freed)
inside :func:`mmcl.engine.trainer.process_group_released_last`; every second run raises after its teardown.

Usage: ``torchrun --nproc_per_node 2 teardown_worker.py FOLDER RUNS`` (FOLDER: a fresh folder for the file stores).
Without the context manager, DDP's reducer destroys each group with the GIL held, and one of the first few
runs deadlocks (within 6 runs in 3 tries of 3: the main thread joins a gloo worker that waits for the GIL); with
it every run ends.
"""

import os
import sys

import torch
import torch.distributed as dist

from mmcl.engine.trainer import process_group_released_last


def train_and_end(fail: bool, steps: int = 2) -> None:
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 8))
    for _ in range(steps):
        model(torch.randn(32, 16)).pow(2).mean().backward()
        dist.all_reduce(torch.ones(3))  # a tensor Python owns, held by gloo's worker until it lets go
    dist.barrier()
    dist.destroy_process_group()  # the reducer still owns the group; freeing the model at return destroys it
    if fail:
        raise RuntimeError("a run that fails after its last collective")  # its traceback holds the model


if __name__ == "__main__":
    folder, runs = sys.argv[1], int(sys.argv[2])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(1)
    for run in range(runs):
        dist.init_process_group("gloo", init_method=f"file://{folder}/store{run}", rank=rank, world_size=world)
        try:
            with process_group_released_last():
                train_and_end(fail=run % 2 == 1)
        except RuntimeError:
            pass
    print(f"rank {rank}: {runs} runs ended", flush=True)
