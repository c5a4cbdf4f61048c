"""Cross-modal retrieval on held-out pairs: recall@k and MRR in both directions, beside chance.

CLIP's zero-shot retrieval protocol (Radford et al. 2021, arXiv:2103.00020, section 3.1.4 and Table 13): embed the
``n`` held-out pairs with both towers, L2-normalise, and for each query of one tower rank the ``n`` candidates of the
other by cosine; pair ``i``'s match is candidate ``i``. With ``r_i`` the rank of the match (1 = first),

.. math::
    \\text{recall@}k = \\frac1n \\sum_i [r_i \\le k], \\qquad \\text{MRR} = \\frac1n \\sum_i \\frac{1}{r_i}

in percent, for ``a -> b`` (queries from tower a) and ``b -> a``, and their mean. Chance (candidates in random
order): recall@k = k/n and MRR = H_n/n (``H_n`` the harmonic number). Ties (several candidates with the match's
cosine, e.g. identical texts) are broken at random in expectation: with ``g`` candidates above the match and ``t``
others level with it, ``r`` is uniform on ``g+1 .. g+t+1``, so ``[r <= k]`` counts ``clip((k - g) / (t + 1), 0, 1)``
and ``1/r`` its mean over that range (neither optimistic nor pessimistic: tied duplicates score chance among
themselves).

The adapter's ``test`` split gives ``((item_a, item_b), i)`` items whose collated inputs the encoder maps to
``(2B, d)`` view-major rows (``modality: paired``): the first ``B`` from tower a, the next ``B`` from tower b.

Example:
    >>> import torch
    >>> from mmcl.tasks.retrieval import retrieval_metrics
    >>> a = torch.eye(3)
    >>> result = retrieval_metrics(a, a[[0, 2, 1]], ks=(1,))  # pairs 1 and 2 swapped in b
    >>> result["a_to_b"]["recall@1"], round(result["chance"]["mrr"], 2)
    (33.33333333333333, 61.11)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from mmcl.contract import PositiveInt
from mmcl.tasks.registry import EvalContext, register_task


@dataclass
class RetrievalOptions:
    split: str = "test"  # the adapter's evaluation split of pairs
    ks: list[PositiveInt] = field(default_factory=lambda: [1, 5, 10])


def match_ranks(queries: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """For query ``i`` against candidate ``i``: ``g_i`` candidates with a higher cosine and ``t_i`` other ones level
    with it (both ``(n,)``, float64 comparisons of the normalised rows)."""
    q, c = F.normalize(queries.double(), dim=1), F.normalize(candidates.double(), dim=1)
    scores = q @ c.T
    match = scores.diagonal().unsqueeze(1)
    greater = (scores > match).sum(1)
    level = (scores == match).sum(1) - 1
    return greater, level


def _direction(queries: Tensor, candidates: Tensor, ks: Sequence[int]) -> dict[str, float]:
    greater, level = match_ranks(queries, candidates)
    result = {}
    for k in ks:
        hit = ((k - greater).double() / (level + 1).double()).clamp(0, 1)
        result[f"recall@{k}"] = 100.0 * float(hit.mean())
    reciprocal = [_mean_reciprocal(int(g) + 1, int(g) + int(t) + 1) for g, t in zip(greater, level)]
    result["mrr"] = 100.0 * sum(reciprocal) / len(reciprocal)
    return result


def _mean_reciprocal(first: int, last: int) -> float:
    """The mean of ``1/r`` for ``r`` in ``first .. last``."""
    return sum(1.0 / r for r in range(first, last + 1)) / (last - first + 1)


def retrieval_metrics(z_a: Tensor, z_b: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Recall@k and MRR (%) of ``a -> b`` and ``b -> a`` for the pairs ``(z_a[i], z_b[i])`` ``(n, d)``, their mean,
    and chance (module docstring)."""
    if z_a.dim() != 2 or z_a.shape != z_b.shape or z_a.shape[0] < 2:
        raise ValueError(f"retrieval needs two (n, d) embeddings of the same shape with n >= 2, got "
                         f"{tuple(z_a.shape)} and {tuple(z_b.shape)}")  # fmt: skip
    n = z_a.shape[0]
    a_to_b, b_to_a = _direction(z_a, z_b, ks), _direction(z_b, z_a, ks)
    chance = {f"recall@{k}": 100.0 * min(k, n) / n for k in ks}
    chance["mrr"] = 100.0 * _mean_reciprocal(1, n)
    mean = {key: (a_to_b[key] + b_to_a[key]) / 2 for key in a_to_b}
    return {"a_to_b": a_to_b, "b_to_a": b_to_a, "mean": mean, "chance": chance, "n": n}


@torch.no_grad()
def embed_pairs(context: EvalContext, split: str) -> tuple[Tensor, Tensor]:
    """Both towers' embeddings ``(n, d)`` of the split's pairs, in order: the encoder's view-major rows, halved."""
    splits = context.adapter.eval_datasets()
    if split not in splits:
        raise ValueError(f"eval.retrieval.split={split!r}: the {context.adapter.name} modality has the evaluation "
                         f"splits {sorted(splits)}; retrieval needs pairs (modality: paired)")  # fmt: skip
    encoder = context.encoder.eval()
    a, b = [], []
    loader = DataLoader(splits[split], batch_size=context.batch_size, collate_fn=context.adapter.collate_eval)
    for inputs, _ in context.progress(loader, f"embed the pairs of split {split}"):
        first, second = encoder(inputs.to(context.device)).float().cpu().chunk(2)
        a.append(first)
        b.append(second)
    return torch.cat(a), torch.cat(b)


@register_task(
    "retrieval",
    RetrievalOptions,
    headline=("a_to_b.recall@1", "b_to_a.recall@1", "mean.recall@10", "mean.mrr", "chance.mrr"),
    primary="mean.mrr",
    protocol="cross-modal retrieval on the {split} pairs: recall@{ks} and MRR (%), both directions, cosine",
)
def retrieval(context: EvalContext, options: RetrievalOptions) -> dict:
    z_a, z_b = embed_pairs(context, options.split)
    return retrieval_metrics(z_a, z_b, options.ks)
