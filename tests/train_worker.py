"""Runs ``mmcl.trainer.pretrain`` from a saved config, for tests that need a separate process.

Usage: ``python train_worker.py CONFIG RUN_DIR [--resume] [--allow-world-size-change] [--crash-on-save N]``
(the flags as the CLI's). ``--crash-on-save N``
makes the N-th checkpoint save write half of its temporary file and then kill the process, as a power
cut or ``kill -9`` during saving would.
"""

import os
import sys

import torch

from mmcl.engine.config import load_config
from mmcl.engine.trainer import pretrain
from mmcl.logs import configure_logging
from mmcl.runs import checkpoints as checkpoint


def crash_on_save(n: int) -> None:
    real_save, calls = torch.save, {"count": 0}

    def half_written_save(state, handle, *args, **kwargs):
        calls["count"] += 1
        if calls["count"] < n:
            return real_save(state, handle, *args, **kwargs)
        handle.write(b"\x80\x02 half a checkpoint")
        handle.flush()
        os._exit(9)

    checkpoint.torch.save = half_written_save


if __name__ == "__main__":
    configure_logging()
    config_file, run_dir, *flags = sys.argv[1:]
    if "--crash-on-save" in flags:
        crash_on_save(int(flags[flags.index("--crash-on-save") + 1]))
    try:
        pretrain(
            load_config(config_file),
            run_dir,
            resume="--resume" in flags,
            allow_world_size_change="--allow-world-size-change" in flags,
        )
    except KeyboardInterrupt as stop:
        print(f"stopped: {stop}", flush=True)
        os._exit(130)
    os._exit(0)  # skip interpreter teardown (gloo can abort at exit)
