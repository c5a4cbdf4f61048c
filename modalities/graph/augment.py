r"""GraphCL's graph augmentations (You et al. 2020, `arXiv:2010.13902 <https://arxiv.org/abs/2010.13902>`_).

Each augmentation maps one :class:`~torch_geometric.data.Data` graph (``x`` of shape ``(N, F)``,
``edge_index`` of shape ``(2, E)``, optional ``edge_attr`` of shape ``(E, D)``) to a new graph and never
modifies its input. Node and edge selections go through torch-geometric's ``Data.subgraph`` and
``Data.edge_subgraph`` (which keep every node- and edge-level attribute consistent and relabel the
nodes), so an augmented graph is always valid: edge indices in ``[0, N')``, ``x`` with ``N' >= 1`` rows,
``edge_attr`` with one row per edge.

All randomness is drawn from torch's global generator (never Python's ``random`` or numpy), so the
engine's per-item seeding makes the views reproducible.

=================  ==================================================================  ================
augmentation       what it does                                                        GraphCL default
=================  ==================================================================  ================
``node_drop``      removes ``int(ratio * N)`` uniformly drawn nodes and their edges    ratio 0.1
``edge_perturb``   removes ``int(ratio * M)`` of the ``M`` edges (an undirected edge    ratio 0.1, no
                   is removed in both directions); optionally adds ``int(add_ratio *     additions
                   M)`` random new edges
``attr_mask``      replaces the features of ``int(ratio * N)`` nodes by draws from     ratio 0.1,
                   :math:`\mathcal{N}(\mu, \sigma^2)`                                  N(0.5, 0.5^2)
``subgraph``       grows a connected node set from a random node, each step adding a   keeps 0.2 of
                   uniformly drawn neighbour of the set, until ``int(keep_ratio * N)``  the nodes
                   nodes (or the component is exhausted); keeps the induced subgraph
``identity``       returns the graph unchanged
=================  ==================================================================  ================

The defaults are those of GraphCL's unsupervised TU code (``unsupervised_TU/aug.py``: a tenth of the
nodes or edges, subgraphs of a fifth of the nodes); GraphCL's other experiments use ``0.2`` for every
augmentation (subgraphs keeping ``0.8``). Two deliberate departures from that file, both towards the
paper's description: edge perturbation removes undirected edges in both directions (the file drops
directed entries independently), and the subgraph's frontier grows with every added node (the file's
frontier stays the first node's neighbours, a no-op ``set.union``; ``Subgraph(frontier="start")``
reproduces it).

Example:
    >>> import torch
    >>> from torch_geometric.data import Data
    >>> from mmcl.modalities.graph.augment import build_augmentation
    >>> ring = torch.arange(10)
    >>> graph = Data(x=torch.eye(10), edge_index=torch.stack([torch.cat([ring, (ring + 1) % 10]),
    ...                                                       torch.cat([(ring + 1) % 10, ring])]))
    >>> _ = torch.manual_seed(0)
    >>> augment = build_augmentation(["node_drop", "subgraph"])   # GraphCL's choice for molecules
    >>> view = augment(graph)
    >>> view.num_nodes in (2, 9), int(view.edge_index.max()) < view.num_nodes
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import is_undirected

from mmcl.contract import Fraction, NonNegativeFloat

Augmentation = Callable[[Data], Data]

#: GraphCL's unsupervised TU strengths (``unsupervised_TU/aug.py``).
GRAPHCL_TU_STRENGTHS = {"node_drop": 0.1, "edge_perturb": 0.1, "attr_mask": 0.1, "subgraph": 0.2}


@dataclass
class AugmentationStrengths:
    """How strong each augmentation is, the same for the per-graph augmentations (:func:`build_augmentation`), the
    batched ones (:class:`~mmcl.modalities.graph.batched.BatchedAugmentation`) and the graph data config (whose
    ``data.*`` keys these are); GraphCL's unsupervised TU strengths by default."""

    node_drop_ratio: Fraction = GRAPHCL_TU_STRENGTHS["node_drop"]
    edge_perturb_ratio: Fraction = GRAPHCL_TU_STRENGTHS["edge_perturb"]
    edge_add_ratio: NonNegativeFloat = 0.0
    attr_mask_ratio: Fraction = GRAPHCL_TU_STRENGTHS["attr_mask"]
    subgraph_keep_ratio: Fraction = GRAPHCL_TU_STRENGTHS["subgraph"]
    subgraph_frontier: Literal["grow", "start"] = "grow"  # start: GraphCL's TU code (start node's neighbours only)


def _check_ratio(name: str, value: float, *, low: float = 0.0, high: float = 1.0) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")
    return float(value)


class NodeDrop:
    r"""Drop ``int(ratio * N)`` nodes drawn uniformly without replacement, with their edges.

    At least one node is always kept. Output: ``x`` ``(N - k, F)``, nodes relabelled in their order.
    """

    def __init__(self, ratio: float = 0.1) -> None:
        self.ratio = _check_ratio("node_drop ratio", ratio)

    def __call__(self, data: Data) -> Data:
        n = data.num_nodes
        drop = min(int(self.ratio * n), n - 1)
        if drop <= 0:
            return data.clone()
        keep = torch.randperm(n)[drop:].sort().values
        return data.subgraph(keep)

    def __repr__(self) -> str:
        return f"NodeDrop(ratio={self.ratio})"


class EdgePerturb:
    r"""Remove ``int(ratio * M)`` of the graph's ``M`` edges and add ``int(add_ratio * M)`` random ones.

    For an undirected graph (every edge stored in both directions) ``M`` counts unordered pairs and both
    directions of a removed or added pair go together, so the view stays undirected. Added edges join two
    distinct uniformly drawn nodes (they may duplicate an existing edge, as in GraphCL's code) and get
    all-zero ``edge_attr`` rows. GraphCL's unsupervised TU code removes 10% and adds none.
    """

    def __init__(self, ratio: float = 0.1, add_ratio: float = 0.0) -> None:
        self.ratio = _check_ratio("edge_perturb ratio", ratio)
        self.add_ratio = _check_ratio("edge_perturb add_ratio", add_ratio)

    def __call__(self, data: Data) -> Data:
        edge_index, n = data.edge_index, data.num_nodes
        undirected = is_undirected(edge_index, num_nodes=n)
        if undirected:  # one id per unordered pair {u, v}; both stored directions share it
            low, high = torch.minimum(*edge_index), torch.maximum(*edge_index)
            _, pair = torch.unique(low * n + high, return_inverse=True)
        else:
            pair = torch.arange(edge_index.size(1))
        pairs = int(pair.max()) + 1 if pair.numel() else 0
        out = data.clone()
        remove = int(self.ratio * pairs)
        if remove > 0:
            removed = torch.randperm(pairs)[:remove]
            out = out.edge_subgraph(~torch.isin(pair, removed))
        add = int(self.add_ratio * pairs)
        if add > 0 and n > 1:
            source = torch.randint(n, (add,))
            target = (source + torch.randint(1, n, (add,))) % n  # never a self-loop
            new = torch.stack([source, target])
            if undirected:
                new = torch.cat([new, new.flip(0)], dim=1)
            out.edge_index = torch.cat([out.edge_index, new], dim=1)
            if out.edge_attr is not None:
                zeros = out.edge_attr.new_zeros((new.size(1), *out.edge_attr.shape[1:]))
                out.edge_attr = torch.cat([out.edge_attr, zeros])
        return out

    def __repr__(self) -> str:
        return f"EdgePerturb(ratio={self.ratio}, add_ratio={self.add_ratio})"


class AttrMask:
    r"""Replace the feature rows of ``int(ratio * N)`` uniformly drawn nodes by Gaussian noise.

    :math:`x_i \leftarrow \epsilon_i,\ \epsilon_i \sim \mathcal{N}(\mu, \sigma^2 I)` with GraphCL's
    :math:`\mu = \sigma = 0.5`; the graph's structure is unchanged.
    """

    def __init__(self, ratio: float = 0.1, mean: float = 0.5, std: float = 0.5) -> None:
        self.ratio = _check_ratio("attr_mask ratio", ratio)
        self.mean, self.std = float(mean), float(std)

    def __call__(self, data: Data) -> Data:
        if data.x is None:
            raise ValueError("attr_mask needs node features data.x")
        out = data.clone()
        count = int(self.ratio * data.num_nodes)
        if count > 0:
            nodes = torch.randperm(data.num_nodes)[:count]
            noise = torch.randn((count, *data.x.shape[1:])) * self.std + self.mean
            out.x[nodes] = noise.to(out.x.dtype)
        return out

    def __repr__(self) -> str:
        return f"AttrMask(ratio={self.ratio}, mean={self.mean}, std={self.std})"


class Subgraph:
    r"""Keep the subgraph induced by a connected node set grown from a uniformly drawn node.

    Each step adds one node drawn uniformly from the set's neighbours outside it, until the set has
    ``max(1, int(keep_ratio * N))`` nodes or has no neighbour left (a small component).
    ``frontier="start"`` reproduces GraphCL's unsupervised TU code instead, whose candidate set stays
    the start node's neighbours: the view is the start node and some of its direct neighbours.
    """

    def __init__(self, keep_ratio: float = 0.2, frontier: str = "grow") -> None:
        self.keep_ratio = _check_ratio("subgraph keep_ratio", keep_ratio)
        if frontier not in ("grow", "start"):
            raise ValueError(f"subgraph frontier must be 'grow' or 'start', got {frontier!r}")
        self.frontier = frontier

    def __call__(self, data: Data) -> Data:
        n = data.num_nodes
        target = max(1, int(self.keep_ratio * n))
        selected = torch.zeros(n, dtype=torch.bool)
        start = torch.randint(n, ())
        selected[start] = True
        row, col = data.edge_index
        source = selected  # "grow": the set's neighbourhood grows with the set
        if self.frontier == "start":
            source = torch.zeros(n, dtype=torch.bool)
            source[start] = True
        for _ in range(target - 1):
            frontier = col[source[row] & ~selected[col]].unique()
            if frontier.numel() == 0:
                break
            selected[frontier[torch.randint(frontier.numel(), ())]] = True
        return data.subgraph(selected)

    def __repr__(self) -> str:
        return f"Subgraph(keep_ratio={self.keep_ratio}, frontier={self.frontier!r})"


class Identity:
    """Return the graph unchanged (a copy)."""

    def __call__(self, data: Data) -> Data:
        return data.clone()

    def __repr__(self) -> str:
        return "Identity()"


class RandomChoice:
    """Apply one of ``augmentations``, drawn uniformly per call (GraphCL's ``random2/3/4``)."""

    def __init__(self, augmentations: Sequence[Augmentation]) -> None:
        if not augmentations:
            raise ValueError("RandomChoice needs at least one augmentation")
        self.augmentations = list(augmentations)

    def __call__(self, data: Data) -> Data:
        if len(self.augmentations) == 1:
            return self.augmentations[0](data)
        return self.augmentations[int(torch.randint(len(self.augmentations), ()))](data)

    def __repr__(self) -> str:
        return f"RandomChoice({self.augmentations})"


AUGMENTATIONS = ("node_drop", "edge_perturb", "attr_mask", "subgraph", "identity")


def check_augmentation_names(names: Sequence[str]) -> list[str]:
    """``names`` as a list if it is a non-empty list of :data:`AUGMENTATIONS`, else a ``ValueError`` naming them;
    shared by the per-graph and the batched augmentations."""
    if isinstance(names, str) or not names:
        raise ValueError(f"augmentations must be a non-empty list of names from {list(AUGMENTATIONS)}, got {names!r}")
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown graph augmentation(s) {unknown}; available: {list(AUGMENTATIONS)}")
    return list(names)


def build_augmentation(names: Sequence[str], **strengths: float | str) -> Augmentation:
    """A random choice among the named augmentations (one name: that augmentation alone), with the
    :class:`AugmentationStrengths` given as keywords (``node_drop_ratio=0.2``, ...).

    GraphCL's presets: ``random2`` = ``["node_drop", "subgraph"]`` (its rule of thumb for molecules and
    proteins), ``random3`` adds ``"edge_perturb"``, ``random4`` adds ``"attr_mask"``.
    """
    check_augmentation_names(names)
    s = AugmentationStrengths(**strengths)
    builders: dict[str, Callable[[], Augmentation]] = {
        "node_drop": lambda: NodeDrop(s.node_drop_ratio),
        "edge_perturb": lambda: EdgePerturb(s.edge_perturb_ratio, s.edge_add_ratio),
        "attr_mask": lambda: AttrMask(s.attr_mask_ratio),
        "subgraph": lambda: Subgraph(s.subgraph_keep_ratio, s.subgraph_frontier),
        "identity": Identity,
    }
    return RandomChoice([builders[name]() for name in names])


def check_graph(data: Data) -> None:
    """Raise ``ValueError`` unless ``data`` is a valid non-empty graph (used by the tests and the dataset)."""
    n = data.num_nodes
    if not n or n < 1:
        raise ValueError("graph has no nodes")
    edge_index: Tensor = data.edge_index
    if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.dtype != torch.long:
        raise ValueError(f"edge_index must be a (2, E) int64 tensor, got {edge_index.dtype} {tuple(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(f"edge_index has entries outside [0, {n})")
    if data.x is not None and data.x.size(0) != n:
        raise ValueError(f"x has {data.x.size(0)} rows for {n} nodes")
    if data.edge_attr is not None and data.edge_attr.size(0) != edge_index.size(1):
        raise ValueError(f"edge_attr has {data.edge_attr.size(0)} rows for {edge_index.size(1)} edges")
