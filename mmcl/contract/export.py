"""What every export folder (``RUN/model``) shares, whatever its modality: the manifest and the weight files.

A modality writes its trained encoder in its ecosystem's own format (sentence-transformers, torchvision, PyG
layouts) and, beside it, ``mmcl_export.json``: the modality's name (so :func:`mmcl.load_encoder` finds the adapter
that reads the folder back), the format version and the constructor options of what it wrote. Weights are
safetensors files: plain tensors, no pickled code, loadable by ``safetensors.torch.load_file`` anywhere.

>>> import tempfile, torch
>>> from pathlib import Path
>>> folder = Path(tempfile.mkdtemp())
>>> _ = write_manifest(folder, "vision", head={"out_dim": 4})
>>> read_manifest(folder)["modality"], read_manifest(folder)["head"]
('vision', {'out_dim': 4})
>>> layer = torch.nn.Linear(3, 4)
>>> _ = save_weights(layer, folder / "head.safetensors")
>>> sorted(load_weights(folder / "head.safetensors"))
['bias', 'weight']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor, nn

#: The manifest of an export folder.
MANIFEST = "mmcl_export.json"
#: Bumped when a modality's export changes in a way older readers cannot load.
FORMAT_VERSION = 1


def write_manifest(folder: Path, modality: str, **content: Any) -> Path:
    """Write ``folder/mmcl_export.json``: ``{"modality", "format_version", **content}`` (JSON values only)."""
    path = Path(folder) / MANIFEST
    manifest = {"modality": modality, "format_version": FORMAT_VERSION, **content}
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def update_manifest(folder: Path, **content: Any) -> Path:
    """Add or replace top-level entries of an export folder's manifest (the engine records the run there)."""
    manifest = read_manifest(folder)
    manifest.update(content)
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(folder: Path) -> dict:
    """The manifest of an export folder; a clear error when ``folder`` is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not an mmcl export folder (it has no {MANIFEST}); give a run's model/ folder, a run "
            "folder or a checkpoint file"
        )
    manifest = json.loads(path.read_text())
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version={version!r} is newer than this mmcl reads ({FORMAT_VERSION}); upgrade mmcl"
        )
    return manifest


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an mmcl export (its manifest)."""
    return (Path(folder) / MANIFEST).is_file()


def save_weights(module_or_state: nn.Module | dict[str, Tensor], path: Path) -> Path:
    """A module's state dict (or a state dict) as a safetensors file: detached, contiguous CPU copies, so views
    and shared storage (which safetensors refuses) are written as plain tensors."""
    from safetensors.torch import save_file

    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    save_file({key: value.detach().cpu().contiguous().clone() for key, value in state.items()}, str(path))
    return Path(path)


def load_weights(path: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors (on the CPU)."""
    from safetensors.torch import load_file

    return load_file(str(path))
