"""Atomic checkpoints: written to a temporary file, then renamed; loaded with ``weights_only=True``.

A run folder holds ``config.yaml``, ``metrics.jsonl``, TensorBoard logs and ``checkpoints/step_NNNNNNNN.pt``;
with ``train.validate_every`` also ``checkpoints/best.pt`` (the encoder weights with the best validation score).
A process killed while saving leaves only a ``.tmp`` file, so the previous checkpoint stays the latest.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

PATTERN = re.compile(r"step_(\d{8})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:08d}.pt"


def best_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "best.pt"


def save_checkpoint(state: dict, run_dir: Path, step: int, keep: int = 2) -> Path:
    path = _save_atomically(state, checkpoint_path(run_dir, step))
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def save_best(state: dict, run_dir: Path) -> Path:
    """``checkpoints/best.pt``: ``{"model", "step", "metric", "value"}`` of the best validation so far."""
    return _save_atomically(state, best_path(run_dir))


def _save_atomically(state: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    for stale in path.parent.glob("*.tmp"):  # left by a process killed while saving; only rank 0 saves
        stale.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    found = [p for p in folder.glob("step_*.pt") if PATTERN.search(p.name)] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(PATTERN.search(p.name).group(1)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def resolve(run_or_checkpoint: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint file) from either; a run folder means its best checkpoint when it selected one
    on validation (``train.validate_every``), else its latest."""
    target = Path(run_or_checkpoint)
    if target.is_file():
        run_dir = target.parent.parent if target.parent.name == "checkpoints" else target.parent
        return run_dir, target
    if target.is_dir():
        if best_path(target).is_file():
            return target, best_path(target)
        latest = latest_checkpoint(target)
        if latest is None:
            raise FileNotFoundError(f"run folder {target} has no checkpoints/step_*.pt")
        return target, latest
    raise FileNotFoundError(f"{target} is neither a run folder nor a checkpoint file")
