"""Atomic checkpoints that degrade gracefully: written to a temporary file then renamed; read with
``weights_only=True``; an unreadable newest checkpoint is skipped for the newest readable one.

``RUN/checkpoints/step_NNNNNNNN.pt`` holds the model, optimiser, scheduler and loss states, the step, the world
size and the best validation so far (the run's last one without the optimiser and scheduler states under
``train.save_optimizer_state=false``: weights only, not resumable); ``best.pt`` (with ``train.validate_every``) the
weights with the best validation score. A process killed while saving leaves only a ``.tmp`` file, so the previous
checkpoint stays the latest; a checkpoint cut short by a full disk or a copy error is skipped on resume and
evaluation, with a note.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from mmcl.runs.files import checkpoints_folder, process_alive

log = logging.getLogger("mmcl")
PATTERN = re.compile(r"step_(\d{8})\.pt$")
_TMP = re.compile(r"\.(\d+)\.tmp$")


class UnreadableCheckpoint(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint)."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoints_folder(run_dir) / f"step_{step:08d}.pt"


def best_path(run_dir: Path) -> Path:
    return checkpoints_folder(run_dir) / "best.pt"


def save_checkpoint(state: dict, run_dir: Path, step: int, keep: int = 2) -> Path:
    """Write ``step_NNNNNNNN.pt`` atomically, then retire the checkpoints beyond the newest ``keep`` readable ones.

    The checkpoint just written is always kept. Unreadable ones are never counted among the kept: an unreadable
    file of a later step (left by an earlier session) stays until training overwrites it, and one older than the
    oldest kept readable checkpoint is retired with them.
    """
    path = _save_atomically(state, checkpoint_path(run_dir, step))
    kept = []
    for candidate in reversed(list_checkpoints(run_dir)):  # newest first
        if len(kept) < keep and (candidate == path or is_readable(candidate)):
            kept.append(candidate)
        elif len(kept) == keep or _step_of(candidate) < step:
            candidate.unlink(missing_ok=True)
    return path


def is_readable(path: Path) -> bool:
    """Whether a checkpoint file loads (memory-mapped: its tensors are not read, so this is cheap)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        return False
    return isinstance(state, dict) and "model" in state


def _step_of(path: Path) -> int:
    return int(PATTERN.search(path.name).group(1))


def save_best(state: dict, run_dir: Path) -> Path:
    """``checkpoints/best.pt``: ``{"model", "step", "metric", "value"}`` of the best validation so far."""
    return _save_atomically(state, best_path(run_dir))


def _save_atomically(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(
            f"cannot write checkpoint {path} ({error.strerror or error}); the previous checkpoint is intact: free "
            "space or make the folder writable, then resume with --resume"
        ) from error
    _remove_stale_temporaries(path.parent)
    return path


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove the ``.tmp`` files of processes that no longer run (killed while saving); never a live one's."""
    for tmp in folder.glob("*.tmp"):
        match = _TMP.search(tmp.name)
        if match and not _alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    # this process's own leftovers (a save that failed) are stale
    return pid != os.getpid() and process_alive(pid)


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = checkpoints_folder(run_dir)
    found = [p for p in folder.glob("step_*.pt") if PATTERN.search(p.name)] if folder.is_dir() else []
    return sorted(found, key=_step_of)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's state (tensors on ``map_location``), read with ``weights_only=True``."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for a damaged file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        if "weights_only" in str(error):
            reason = "it holds objects other than tensors and plain values"
        raise UnreadableCheckpoint(f"checkpoint {path} cannot be read: {reason}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UnreadableCheckpoint(f"checkpoint {path} cannot be read: it is not an mmcl checkpoint")
    return state


def load_newest_readable(candidates: list[Path]) -> tuple[Path, dict]:
    """The first of ``candidates`` (newest first) that can be read, with its state; each one skipped is logged."""
    errors = []
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except UnreadableCheckpoint as error:
            log.warning("warning: skipped %s (%s)", path.name, str(error).split(": ", 1)[-1])
            errors.append(str(error))
    raise UnreadableCheckpoint("no readable checkpoint: " + "; ".join(errors) if errors else "no checkpoint")


def load_model_state(model: nn.Module, state: dict, path: Path) -> None:
    """Load a checkpoint's weights into ``model``; a clear error when they do not fit its shapes or are not finite."""
    damaged = [
        name for name, value in state["model"].items() if value.is_floating_point() and not value.isfinite().all()
    ]
    if damaged:
        named = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
        raise ValueError(
            f"checkpoint {path} holds non-finite weights (NaN or inf in {named}); it cannot be evaluated or resumed: "
            "use an earlier checkpoint of the run (checkpoints/step_*.pt)"
        )
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        details = "; ".join(line.strip() for line in str(error).splitlines()[1:4])
        raise ValueError(
            f"checkpoint {path} does not fit the model its run's config builds ({details}); evaluate or resume it "
            "with the config it was trained with (its run folder's config.yaml)"
        ) from None


def resolve(run_or_checkpoint: str | Path) -> tuple[Path, list[Path]]:
    """(run folder, candidate checkpoint files newest first) of a run folder or a checkpoint file.

    A run folder means its best checkpoint when it selected one on validation (``train.validate_every``), else its
    latest; the older ones follow, for when the first cannot be read.
    """
    target = Path(run_or_checkpoint)
    if target.is_file():
        run_dir = target.parent.parent if target.parent == checkpoints_folder(target.parent.parent) else target.parent
        return run_dir, [target]
    if target.is_dir():
        steps = list_checkpoints(target)[::-1]
        candidates = ([best_path(target)] if best_path(target).is_file() else []) + steps
        if not candidates:
            raise FileNotFoundError(f"run folder {target} has no checkpoints/step_*.pt (did its training start?)")
        return target, candidates
    raise FileNotFoundError(f"{target} is neither a run folder nor a checkpoint file")
