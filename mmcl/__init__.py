"""mmcl: multimodal contrastive representation learning.

One namespace: the loss core :mod:`mmcl.losses` (torch only), the modalities :mod:`mmcl.modalities`, the
evaluation tasks :mod:`mmcl.tasks`, the plug-in contract :mod:`mmcl.contract` and the engine
:mod:`mmcl.engine`. The Python API is :func:`pretrain`, :func:`evaluate` and :func:`load_encoder`::

    import mmcl

    run = mmcl.pretrain("quickstart", ["train.max_steps=20"])
    results = mmcl.evaluate(run, tasks=["knn"])
    encoder = mmcl.load_encoder(run)

Importing ``mmcl`` is cheap (no torch): the API is imported on first use, so ``mmcl --help`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_API = {
    "pretrain": "mmcl.engine.api",
    "evaluate": "mmcl.engine.api",
    "load_encoder": "mmcl.engine.api",
    "load_plugins": "mmcl.engine.plugins",
    "Run": "mmcl.engine.api",
}
__all__ = ["Run", "__version__", "evaluate", "load_encoder", "load_plugins", "pretrain"]

if TYPE_CHECKING:
    from mmcl.engine.api import Run, evaluate, load_encoder, pretrain
    from mmcl.engine.plugins import load_plugins


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mmcl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
