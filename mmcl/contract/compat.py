"""Make torchvision importable next to a CPU-only torch.

PyPI's torchvision wheels are CUDA builds. Next to a CPU build of torch their C++ extension
(``torchvision/_C.so``) cannot load, and ``import torchvision`` then fails with
``RuntimeError: operator torchvision::nms does not exist``: torchvision registers fake (meta)
kernels for ``nms`` and ``qnms`` at import time, which needs the two operator schemas to exist.
``from transformers import BertModel`` fails the same way, because transformers imports torchvision.

:func:`ensure_torchvision_ops` defines just those two schemas when, and only when, the extension
cannot provide them. Nothing else changes: torchvision's pure-Python parts (models, transforms v2,
datasets) work as usual, and calling ``torchvision.ops.nms`` still raises, as it would on any build
without the extension. With a matching torchvision build the function does nothing.

mmcl calls it where torchvision or transformers is first needed (the vision modality's modules, the text
encoder) and the test suite's ``conftest.py`` calls it first; importing ``mmcl`` or the loss core does not.
Code that imports torchvision or transformers itself, *before* any mmcl modality, should call it first::

    from mmcl.contract import ensure_torchvision_ops

    ensure_torchvision_ops()
    import torchvision
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: dropping it would unregister the schemas


def _has_op(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _load_extension(package_dir: Path) -> None:
    for library_file in sorted(package_dir.glob("_C*.so")) + sorted(package_dir.glob("_C*.pyd")):
        try:
            torch.ops.load_library(str(library_file))
        except (OSError, RuntimeError):
            continue
        return


def ensure_torchvision_ops() -> bool:
    """Define torchvision's ``nms``/``qnms`` schemas if its C++ extension cannot load.

    Returns True when the schemas were defined here (CPU-only fallback), False when torchvision is
    absent or its extension provides them. Safe to call any number of times.
    """
    global _library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None or all(_has_op(name) for name in _SCHEMAS):
        return False
    _load_extension(Path(spec.origin).parent)
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if not missing:
        return False
    _library = torch.library.Library("torchvision", "DEF")
    for name in missing:
        _library.define(_SCHEMAS[name])
    return True
