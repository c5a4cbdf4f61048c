"""Run folders: the rules that keep a run's work from being lost or mislabelled, in one place.

The rules:

* **A new run always gets a new folder.** ``train.run_name`` names it (refused when it exists), else
  ``<modality>-<dataset>-<loss>-<time>`` with a suffix when two runs start in the same second.
* **An existing folder is continued only on request**: ``--resume`` (``resume=True``), or ``train.auto_resume``
  when it holds a checkpoint of the same config. Overrides on resume are compared with the saved config: the
  keys of :data:`RESUMABLE` (length of the run, logging, checkpointing, workers, evaluation) are accepted and
  recorded in ``run.json``; any other change is refused before anything is written.
* **One process trains in a folder at a time** (:class:`~mmcl.runs.lock.RunLock`; the lock of a process that
  died is taken over, with a note).
* Nothing of a run is deleted except the checkpoints its own rotation retires.

The engine calls :func:`open_run_folder` with the validated config's sections (a plain dict): this layer reads
and writes folders and knows nothing of how a config is validated or a model trained.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mmcl.runs import checkpoints
from mmcl.runs.files import config_file, is_run_folder, write_atomically
from mmcl.runs.lock import RunLock
from mmcl.runs.record import RunRecord
from mmcl.runs.results import truncate_metrics

log = logging.getLogger("mmcl")

#: Keys a resume may change: they cannot change what the finished steps computed.
RESUMABLE = (
    "train.max_steps",
    "train.epochs",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.num_workers",
    "train.threads",
    "train.progress_bar",
    "train.validate_every",
    "train.auto_resume",
    "train.monitor_losses",  # logged without gradient: they never change the weights
    "train.loggers",
    "train.save_optimizer_state",
    "eval.",  # every evaluation option
)


# ---------------------------------------------------------------- configs as a run folder holds them


def config_text(config: dict) -> str:
    """The YAML text of a config's sections, as ``RUN/config.yaml`` holds it."""
    return yaml.safe_dump(config, sort_keys=False)


def write_config(run_dir: Path, config: dict) -> None:
    write_atomically(config_file(run_dir), config_text(config))


def parse_saved_config(run_dir: Path) -> dict:
    """The raw sections of ``RUN/config.yaml``."""
    path = config_file(run_dir)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML ({error}); the run's config was edited by hand?") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path} does not hold a config")
    return raw


def flatten(section: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.max_steps": 10, ...}`` of a config dict (lists are values)."""
    if not isinstance(section, dict):
        return {prefix: section}
    out: dict[str, Any] = {}
    for key, value in section.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: dict, new: dict) -> dict[str, list]:
    """``{dotted key: [saved value, new value]}`` for every key whose value differs."""
    before, after = flatten(saved), flatten(new)
    return {
        key: [before.get(key), after.get(key)]
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def refused_changes(changes: dict[str, list]) -> list[str]:
    """The changed keys a resume may not change (see :data:`RESUMABLE`)."""
    return [key for key in changes if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)]


def check_resume_changes(run_dir: Path, changes: dict[str, list], at_step: int) -> None:
    """Refuse the changes a resume cannot make, listing the keys; refuse a run shortened below its finished steps."""
    refused = refused_changes(changes)
    if refused:
        listed = ", ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
        raise ValueError(
            f"--resume {run_dir}: {listed} would change what the finished steps computed; resume without them, or "
            f"start a new run (mmcl pretrain {config_file(run_dir)} ... train.run_name=NEW). A resume may change "
            f"only {', '.join(k + '*' if k.endswith('.') else k for k in RESUMABLE)}"
        )
    steps = changes.get("train.max_steps", [None, None])[1]
    if steps is not None and steps < at_step:
        raise ValueError(f"--resume {run_dir}: train.max_steps={steps} is below the {at_step} steps already done")


# ---------------------------------------------------------------- creating and continuing


def create_run_folder(output_dir: str, run_name: str | None, default_name: str) -> Path:
    """A new, empty run folder: ``output_dir/run_name``, else ``output_dir/default_name`` (suffixed when taken)."""
    output = Path(output_dir).expanduser()
    names = [run_name] if run_name else [default_name] + [f"{default_name}-{i}" for i in range(2, 100)]
    for name in names:
        folder = output / name
        try:
            folder.mkdir(parents=True, exist_ok=False)
            return folder
        except FileExistsError:
            continue
        except OSError as error:
            raise OSError(
                f"cannot create the run folder {folder} ({error.strerror}); set train.output_dir to a writable folder"
            ) from error
    raise ValueError(
        f"run folder {output / names[0]} exists: continue it with `mmcl pretrain {output / names[0]} --resume` "
        "(or train.auto_resume=true), or start a new run with another train.run_name"
    )


def open_run_folder(
    config: dict,
    run_dir: str | Path | None,
    resume: bool,
    held: contextlib.ExitStack,
    default_name: str,
    validate: Callable[[dict], Any],
) -> tuple[Path, dict | None]:
    """The run folder, locked (the lock held by ``held``), with its config written; and the checkpoint to resume
    from (``{"path", "step", "world_size"}``; None: a new run).

    Args:
        config: the validated config's sections.
        run_dir: the folder; None: ``train.output_dir/train.run_name``, else a new folder named ``default_name``.
        resume: continue the folder from its newest readable checkpoint.
        default_name: the name of a new folder when the config names none.
        validate: checks a saved config's sections (they must still name registered components, in range).
    """
    train = config["train"]
    if run_dir is None and not resume and train["auto_resume"]:
        found = _resumable_folder(config)
        if found is not None:
            run_dir, resume = found
    if resume:
        run_dir = Path(
            run_dir if run_dir is not None else Path(train["output_dir"]).expanduser() / (train["run_name"] or "")
        )
        if not is_run_folder(run_dir):
            raise FileNotFoundError(f"--resume: {run_dir} is not a run folder (it has no config.yaml)")
        held.enter_context(RunLock(run_dir))
        return run_dir, _prepare_resume(config, run_dir, validate)
    if run_dir is None:
        run_dir = create_run_folder(train["output_dir"], train["run_name"], default_name)
    else:
        run_dir = Path(run_dir)
        if run_dir.exists() and any(run_dir.iterdir()) and not _fresh_start_allowed(config, run_dir):
            raise ValueError(
                f"run folder {run_dir} exists: continue it with `mmcl pretrain {run_dir} --resume` (or "
                "train.auto_resume=true), or start a new run in another folder (train.run_name)"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
    held.enter_context(RunLock(run_dir))
    write_config(run_dir, config)
    truncate_metrics(run_dir, 0)
    RunRecord(run_dir).start_session(kind="new")
    return run_dir, None


def _resumable_folder(config: dict) -> tuple[Path, bool] | None:
    """``train.auto_resume``: the folder to continue (with a checkpoint of the same config: resume) or to restart
    (the named folder of the same config that died before its first checkpoint), else None."""
    train = config["train"]
    output = Path(train["output_dir"]).expanduser()
    if train["run_name"]:
        candidates = [output / train["run_name"]]
    else:
        candidates = sorted((p for p in output.glob("*") if is_run_folder(p)), reverse=True)
    for folder in candidates:
        if not is_run_folder(folder):
            continue
        if refused_changes(config_changes(parse_saved_config(folder), config)):
            if train["run_name"]:
                raise ValueError(
                    f"train.auto_resume: {folder} holds a run of another config; set another train.run_name"
                )
            continue
        if checkpoints.list_checkpoints(folder):
            return folder, True
        if train["run_name"]:
            return None  # same config, no checkpoint: it starts afresh in its folder
    return None


def _fresh_start_allowed(config: dict, run_dir: Path) -> bool:
    """An existing folder may take a fresh start only under ``train.auto_resume``, for the same config and when it
    holds no checkpoint (its first attempt died before saving one)."""
    if not config["train"]["auto_resume"] or checkpoints.list_checkpoints(run_dir) or not is_run_folder(run_dir):
        return False
    return not refused_changes(config_changes(parse_saved_config(run_dir), config))


def _prepare_resume(config: dict, run_dir: Path, validate: Callable[[dict], Any]) -> dict:
    """Check the resume against the saved config and checkpoint, then record it; nothing is written before."""
    candidates = checkpoints.list_checkpoints(run_dir)[::-1]
    if not candidates:
        raise FileNotFoundError(
            f"--resume: no checkpoint in {checkpoints.checkpoints_folder(run_dir)}; start the run anew instead"
        )
    path, state = checkpoints.load_newest_readable(candidates)
    if "optimizer" not in state:
        raise ValueError(
            f"--resume: {path} holds the weights only (it was written with train.save_optimizer_state=false): the "
            "optimiser state a run continues from is not there. Start a new run instead; keep "
            "train.save_optimizer_state=true (the default) for runs you may want to extend"
        )
    skipped = [p.name for p in candidates[: candidates.index(path)]]
    saved = parse_saved_config(run_dir)
    changes = config_changes(saved, config)
    if changes:  # without changes the saved config is the validated one
        validate(saved)  # the saved config itself must still be valid (registered names, ranges)
    check_resume_changes(run_dir, changes, int(state["step"]))
    write_config(run_dir, config)
    truncate_metrics(run_dir, int(state["step"]))
    RunRecord(run_dir).start_session(
        kind="resume", resumed_from=path.name, resumed_at_step=int(state["step"]), changes=changes, skipped=skipped
    )
    log.info("resumed from %s at step %d%s", path, state["step"], f" (skipped unreadable {skipped})" if skipped else "")
    return {"path": str(path), "step": int(state["step"]), "world_size": state.get("world_size")}
