"""mmcl's modality-agnostic contrastive loss core.

Every loss takes two views of the same ``N`` instances, ``z_a`` and ``z_b`` of shape ``(N, d)`` (row
``i`` of each is a positive pair), plus ``labels`` ``(N,)`` for supervised losses and ``negatives``
``(N, d)`` for losses that take hard negatives, and returns a scalar. The detached diagnostics of the
last call are in ``loss_fn.diagnostics``. Losses whose math extends take ``V >= 2`` views:
``loss_fn(z_1, ..., z_V)``, ``loss_fn(views=[...])`` or SupContrast's features ``(N, V, d)``, and
multi-crop's ``global_views`` (docs/multiview.md, :mod:`mmcl.losses.inputs`).

>>> import torch
>>> from mmcl import losses
>>> losses.available()[:3]
['nt_xent', 'info_nce', 'simcse']
>>> loss_fn = losses.build("hcl", beta=1.0, tau_plus=0.1)
>>> loss = loss_fn(torch.randn(8, 16), torch.randn(8, 16))

The losses are presets of :class:`ContrastiveLoss` assembled from the parts in :mod:`mmcl.losses.parts`;
new combinations are one line, e.g. MACL's temperature on DHEL:
``mmcl.losses.build("dhel", temperature={"rule": "macl", "temperature": 0.3})``.
"""

# isort: off
# Registration order is the order of available() and of the README table: keep it.
from mmcl.losses import nt_xent, info_nce, simcse, graphcl, dcl, debiased, hcl, supcon, scl  # noqa: F401
from mmcl.losses import margin, macl, dystress, dhel, kcl, align_uniform, clip  # noqa: F401

# isort: on
from mmcl.losses.core import ContrastiveLoss, EmbeddingLoss
from mmcl.losses.distributed import gather, gather_with_grad
from mmcl.losses.parts.weights import MACLWeights, PositiveWeights
from mmcl.losses.registry import (
    available,
    build,
    describe_options,
    format_options,
    format_table,
    info,
    options,
    register_loss,
)

__all__ = [
    "ContrastiveLoss",
    "EmbeddingLoss",
    "MACLWeights",
    "PositiveWeights",
    "available",
    "build",
    "describe_options",
    "format_options",
    "format_table",
    "gather",
    "gather_with_grad",
    "info",
    "options",
    "register_loss",
]
