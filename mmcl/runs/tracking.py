"""Experiment trackers: any of Accelerate's (``train.loggers``), each given the run's hyperparameters, and
TensorBoard's HParams view fed with the evaluation results, so that runs compare there.

* ``train.loggers`` names Accelerate trackers (``tensorboard``, ``wandb``, ``mlflow``, ...); ``[]`` logs to
  ``metrics.jsonl`` only. An unknown or uninstalled one is refused before the run folder is created.
* Every tracker receives the flattened config (``loss.temperature``, ``train.batch_size``, ...) as its
  hyperparameters (Accelerate's ``store_init_configuration``) and the training curves.
* TensorBoard: the hyperparameters are written into ``RUN/tensorboard`` itself, as the HParams plugin's session
  record, beside the curves (``SummaryWriter.add_hparams``, which Accelerate uses, writes them into a separate
  sub-folder, whose session then has no metrics). Each evaluation stored in ``eval.json`` adds its headline
  numbers there as scalars ``eval/<task>/<metric>`` (``eval_random_init/...`` for the baseline) at the step of the
  checkpoint it scored. ``tensorboard --logdir runs`` then lists every run in the HParams tab, one row each, with
  its hyperparameters, final training metrics and evaluation results.
* ``wandb`` runs offline (``RUN/wandb``; ``wandb sync`` uploads it later) unless ``WANDB_MODE`` says otherwise or
  you are logged in (``WANDB_API_KEY`` or ``wandb login``): an offline machine never waits on the network.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmcl.runs.files import TENSORBOARD, tensorboard_folder
from mmcl.runs.folder import flatten

log = logging.getLogger("mmcl")

#: pip names of trackers whose package name differs from the tracker's.
_PACKAGES = {"comet_ml": "comet-ml"}


def check_loggers(names: Sequence[str]) -> None:
    """Refuse a ``train.loggers`` entry that is not an Accelerate tracker, or whose package is not installed."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    installed = {str(tracker) for tracker in get_available_trackers()}
    builtin = {"aim", "comet_ml", "mlflow", "tensorboard", "wandb", "clearml", "dvclive", "swanlab", "trackio"}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(
                f"train.loggers: {name!r} is not one of Accelerate's trackers {sorted(LOGGER_TYPE_TO_CLASS)}; fix the "
                "name, or set train.loggers=[] to log to metrics.jsonl only"
            )
        if name in builtin and name not in installed:
            raise ValueError(
                f"train.loggers: {name} is not installed; pip install {_PACKAGES.get(name, name)}, or remove it from "
                "train.loggers"
            )


def log_with(names: Sequence[str], run_dir: Path) -> list | None:
    """Accelerator's ``log_with``: TensorBoard as a tracker instance writing to ``RUN/tensorboard``, the others by
    name (started by :func:`start`); None for no tracker."""
    from accelerate.tracking import TensorBoardTracker

    trackers = [TensorBoardTracker(TENSORBOARD, run_dir) if name == "tensorboard" else name for name in names]
    return trackers or None


def start(accelerator: Any, config: dict, run_dir: Path) -> None:
    """Start the accelerator's trackers (project ``mmcl``, run named after its folder) and give each the run's
    hyperparameters; on the main process."""
    wandb = {"name": run_dir.name, "dir": str(run_dir), **_wandb_mode()}
    if wandb.get("mode") == "offline" and "wandb" in [str(t) for t in accelerator.log_with]:
        log.info("wandb: offline (not logged in): %s/wandb; `wandb sync` uploads it later", run_dir)
    accelerator.init_trackers("mmcl", init_kwargs={"wandb": wandb})
    values = hyperparameters(config)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            if accelerator.is_main_process:
                write_session_start(tracker.writer, values)
        else:
            tracker.store_init_configuration(values)


def hyperparameters(config: dict) -> dict[str, bool | int | float | str]:
    """The config flattened to dotted keys with the value types trackers take: lists and mappings as JSON text,
    unset (None) keys left out.

    >>> hyperparameters({"loss": {"name": "hcl", "beta": 1.0}, "train": {"max_steps": None, "loggers": ["wandb"]}})
    {'loss.name': 'hcl', 'loss.beta': 1.0, 'train.loggers': '["wandb"]'}
    """
    values: dict[str, bool | int | float | str] = {}
    for key, value in flatten(config).items():
        if value is None:
            continue
        values[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return values


def write_session_start(writer: Any, values: dict) -> None:
    """The HParams plugin's session record (``_hparams_/session_start_info``) in ``writer``'s own folder, so the
    session's metrics are the scalars beside it."""
    from torch.utils.tensorboard.summary import hparams

    _, session_start, _ = hparams(values, {})
    writer.file_writer.add_summary(session_start)
    writer.flush()


def log_evaluation(run_dir: Path, encoder: str, results: dict[str, dict], step: int) -> None:
    """Each task's headline numbers as TensorBoard scalars in ``RUN/tensorboard``: ``eval/<task>/<metric>`` for a
    trained checkpoint, ``eval_random_init/...`` for the random-init baseline, at ``step``."""
    from torch.utils.tensorboard import SummaryWriter

    from mmcl.tasks import get_task

    prefix = "eval_random_init" if encoder == "random_init" else "eval"
    with SummaryWriter(str(tensorboard_folder(run_dir))) as writer:
        for task, result in results.items():
            for key, value in get_task(task).headline_values(result).items():
                writer.add_scalar(f"{prefix}/{task}/{key.replace('.', '/')}", value, global_step=step)


def _wandb_mode() -> dict[str, str]:
    """``{"mode": "offline"}`` unless ``WANDB_MODE`` is set or credentials are (``WANDB_API_KEY``, ``~/.netrc``)."""
    if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
        return {}
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return {}
    except (OSError, netrc.NetrcParseError):
        pass
    return {"mode": "offline"}
