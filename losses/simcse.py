"""SimCSE, unsupervised and supervised.

Reference: Gao, Yao, Chen, "SimCSE: Simple Contrastive Learning of Sentence Embeddings", EMNLP 2021,
arXiv:2104.08821 (code: princeton-nlp/SimCSE, ``cl_forward``).

Unsupervised (the same sentence encoded twice, dropout as augmentation), one direction:

.. math::
    \\ell_i = -\\frac{\\cos(h_i, h_i^+)}{\\tau} + \\operatorname{lse}_j \\frac{\\cos(h_i, h_j^+)}{\\tau}

Supervised (NLI triplets, ``negatives = h^-``): every row also holds all ``B`` hard negatives, the
anchor's own one with the logit offset ``log alpha = hard_negative_weight``:

.. math::
    \\ell_i = -\\frac{\\cos(h_i, h_i^+)}{\\tau} + \\log \\sum_j \\Big(e^{\\cos(h_i,h_j^+)/\\tau}
    + \\alpha^{1[j=i]} e^{\\cos(h_i,h_j^-)/\\tau}\\Big)

Data: ``(z_a, z_b)`` = (sentence, dropout copy) or (premise, entailment); optional ``negatives`` =
contradictions ``(N, d)``; more views are refused (a cross-view table). Minimum batch: 2 pairs.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> loss_fn = losses.build("simcse")
    >>> premise, entail, contra = torch.randn(3, 8, 32).unbind(0)
    >>> loss = loss_fn(premise, entail, negatives=contra)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmcl.losses.core import ContrastiveLoss
from mmcl.losses.parts.layouts import CrossViewLayout
from mmcl.losses.parts.temperature import TemperatureRule
from mmcl.losses.registry import register_loss

if TYPE_CHECKING:
    from typing import Unpack

    from mmcl.losses.execution import BlockwiseOptions


@register_loss(
    "simcse",
    paper="SimCSE, Gao et al. 2021 (arXiv:2104.08821)",
    inputs="pairs (+ optional hard negatives)",
    search_space={"temperature": {"log": [0.01, 0.5]}},
)
class SimCSELoss(ContrastiveLoss):
    """SimCSE (module docstring).

    Args:
        hard_negative_weight: ``log alpha``, added to the logit of each anchor's own hard negative (supervised
            SimCSE's ``--hard_negative_weight``; 0: weight 1).
        symmetric: also the second view's rows as anchors (SimCSE uses one direction).
    """

    def __init__(
        self,
        temperature: float | dict | TemperatureRule = 0.05,
        hard_negative_weight: float = 0.0,
        symmetric: bool = False,
        **execution: Unpack[BlockwiseOptions],
    ) -> None:
        super().__init__(
            CrossViewLayout("symmetric" if symmetric else "u->v", hard_negative_weight),
            temperature,
            accepts_negatives=True,
            **execution,
        )
