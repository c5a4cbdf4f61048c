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
from mmcl.runs.files import config_file, evaluations_file, export_folder, is_run_folder, write_atomically
from mmcl.runs.lock import RunLock
from mmcl.runs.record import RunRecord
from mmcl.runs.results import read_metrics, truncate_metrics

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
    world_size: int = 1,
    allow_world_size_change: bool = False,
) -> tuple[Path, dict | None]:
    """The run folder, locked (the lock held by ``held``), with its config written; and the checkpoint to resume
    from (``{"path", "step", "world_size"}``; None: a new run). Everything is checked before anything is written.

    Args:
        config: the validated config's sections.
        run_dir: the folder; None: ``train.output_dir/train.run_name``, else a new folder named ``default_name``.
        resume: continue the folder from its newest readable checkpoint.
        default_name: the name of a new folder when the config names none.
        validate: checks a saved config's sections (they must still name registered components, in range).
        world_size, allow_world_size_change: the number of processes of this session, and whether a resume may
            change it (it changes the global batch).
    """
    train = config["train"]
    if run_dir is None and not resume and train["auto_resume"]:
        found = _resumable_folder(config)
        if found is not None:
            run_dir, resume = found
    if run_dir is None and train["run_name"]:
        run_dir = Path(train["output_dir"]).expanduser() / train["run_name"]
    if resume:
        if run_dir is None or not is_run_folder(run_dir):
            raise FileNotFoundError(f"--resume: {run_dir} is not a run folder (it has no config.yaml)")
        held.enter_context(RunLock(run_dir))
        start = _prepare_resume(config, Path(run_dir), validate, world_size, allow_world_size_change)
        return Path(run_dir), start
    if run_dir is None:
        run_dir = create_run_folder(train["output_dir"], None, default_name)
        held.enter_context(RunLock(run_dir))
    else:
        run_dir = _make_folder(Path(run_dir))
        held.enter_context(RunLock(run_dir))
        _claim_unstarted(run_dir)  # under the lock: a run that started meanwhile is never restarted
    write_config(run_dir, config)
    truncate_metrics(run_dir, 0)
    RunRecord(run_dir).start_session(kind="new")
    return run_dir, None


def check_resume_request(config: dict, run_dir: str | Path | None) -> None:
    """Refuse a resume whose config changes what the finished steps computed: read-only, the first check of a
    resume (:func:`open_run_folder` checks it again under the lock, with the checkpoint)."""
    train = config["train"]
    folder = (
        Path(run_dir) if run_dir is not None else Path(train["output_dir"]).expanduser() / (train["run_name"] or "")
    )
    if is_run_folder(folder):
        if not checkpoints.list_checkpoints(folder):
            raise _no_checkpoint(folder)
        check_resume_changes(folder, config_changes(parse_saved_config(folder), config), at_step=0)


def has_started(run_dir: Path) -> bool:
    """Whether a folder holds anything of a run worth keeping: a checkpoint, an evaluation or an export. A run
    that failed or was stopped before its first checkpoint has not: it may be started again under its name."""
    return bool(
        checkpoints.list_checkpoints(run_dir)
        or checkpoints.best_path(run_dir).is_file()
        or evaluations_file(run_dir).is_file()
        or export_folder(run_dir).exists()
    )


def _make_folder(run_dir: Path) -> Path:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"cannot create the run folder {run_dir} ({error.strerror}); set train.output_dir to a writable folder"
        ) from error
    return run_dir


def _claim_unstarted(run_dir: Path) -> None:
    """Refuse a folder holding a run that started; note the earlier attempt of one that did not."""
    if has_started(run_dir):
        raise ValueError(
            f"run folder {run_dir} exists: continue it with `mmcl pretrain {run_dir} --resume` (or "
            "train.auto_resume=true), or start a new run with another train.run_name"
        )
    earlier = RunRecord(run_dir).read_or_empty().get("sessions") or []
    if earlier:
        last = earlier[-1]
        log.warning("note: %s held a run that never saved a checkpoint (%s%s); it starts again", run_dir,
                    last.get("status", "unknown"), f": {last['error']}" if last.get("error") else "")  # fmt: skip


def _resumable_folder(config: dict) -> tuple[Path, bool] | None:
    """``train.auto_resume``: the folder of the same config holding a checkpoint to resume, else None (a named
    folder that never started is then started again)."""
    train = config["train"]
    output = Path(train["output_dir"]).expanduser()
    if train["run_name"]:
        candidates = [output / train["run_name"]]
    else:
        candidates = sorted((p for p in output.glob("*") if is_run_folder(p)), reverse=True)
    for folder in candidates:
        if not is_run_folder(folder) or not has_started(folder):
            continue
        if refused_changes(config_changes(parse_saved_config(folder), config)):
            if train["run_name"]:
                raise ValueError(
                    f"train.auto_resume: {folder} holds a run of another config; set another train.run_name"
                )
            continue
        if checkpoints.list_checkpoints(folder):
            return folder, True
    return None


def _prepare_resume(
    config: dict, run_dir: Path, validate: Callable[[dict], Any], world_size: int, allow_world_size_change: bool
) -> dict:
    """Check the resume against the saved config, checkpoint, ``run.json``, ``metrics.jsonl`` and the number of
    processes, then record it; nothing is written before every check has passed."""
    candidates = checkpoints.list_checkpoints(run_dir)[::-1]
    if not candidates:
        raise _no_checkpoint(run_dir)
    path, state = checkpoints.load_newest_readable(candidates)
    if "optimizer" not in state:
        raise ValueError(
            f"--resume: {path} holds the weights only (it was written with train.save_optimizer_state=false): the "
            "optimiser state a run continues from is not there. Start a new run instead; keep "
            "train.save_optimizer_state=true (the default) for runs you may want to extend"
        )
    step = int(state["step"])
    _check_world_size(run_dir, state.get("world_size"), world_size, allow_world_size_change, config)
    skipped = [p.name for p in candidates[: candidates.index(path)]]
    saved = parse_saved_config(run_dir)
    changes = config_changes(saved, config)
    if changes:  # without changes the saved config is the validated one
        validate(saved)  # the saved config itself must still be valid (registered names, ranges)
    check_resume_changes(run_dir, changes, step)
    record = RunRecord(run_dir)
    record.read()  # a damaged run.json is refused here, before anything is written
    read_metrics(run_dir)  # likewise a damaged metrics.jsonl (a line cut short at its end is dropped)
    write_config(run_dir, config)
    truncate_metrics(run_dir, step)
    record.start_session(kind="resume", resumed_from=path.name, resumed_at_step=step, changes=changes, skipped=skipped)
    log.info("resumed from %s at step %d%s", path, step, f" (skipped unreadable {skipped})" if skipped else "")
    return {"path": str(path), "step": step, "world_size": state.get("world_size")}


def _check_world_size(run_dir: Path, saved: int | None, world_size: int, allowed: bool, config: dict) -> None:
    if saved is not None and saved != world_size and not allowed:
        batch = config["train"]["batch_size"]
        raise ValueError(
            f"--resume {run_dir}: the run was trained with {saved} process(es) and is resumed with {world_size}: the "
            f"global batch (train.batch_size x processes) would change from {saved * batch} to {world_size * batch}. "
            f"Resume with {saved} process(es), or pass --allow-world-size-change to accept it"
        )


def _no_checkpoint(run_dir: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"--resume: no checkpoint in {checkpoints.checkpoints_folder(run_dir)}: the run never saved one; start it "
        f"again without --resume (mmcl pretrain {run_dir})"
    )
