r"""GraphCL's augmentations on a whole batch of graphs at once, vectorised over the graphs, on the batch's device.

The per-graph augmentations of :mod:`~mmcl.modalities.graph.augment` call ``Data.subgraph`` once per graph in the
data loader (about 35 ms for a batch of 128 NCI1 graphs here, more than the model's step). This module draws the
same views with masks over the batch's nodes and edges: each graph of the batch gets one augmentation drawn
uniformly from the list (GraphCL's ``random2/3/4``), and each augmentation keeps the per-graph semantics, on
every graph it was drawn for at once:

* ``node_drop``: ``min(int(ratio * n), n - 1)`` of the graph's ``n`` nodes, uniformly (a random key per node,
  ranked within its graph);
* ``edge_perturb``: ``int(ratio * m)`` of its ``m`` undirected edges (both directions together), and
  ``int(add_ratio * m)`` random new ones between distinct nodes of the graph;
* ``attr_mask``: the features of ``int(ratio * n)`` nodes replaced by :math:`\mathcal{N}(0.5, 0.5^2)` draws;
* ``subgraph``: a node set grown from a uniformly drawn start node, one uniformly drawn frontier node per graph
  per round (all graphs in the same round), until ``max(1, int(keep_ratio * n))`` nodes or no frontier left;
  ``frontier="start"`` keeps the frontier to the start node's neighbours (GraphCL's code).

Written by hand because PyG's utilities work on one graph (``subgraph``, ``dropout_node``) or draw per edge
rather than a fixed count per graph (``dropout_edge``); ``add_self_loops`` and ``scatter`` are PyG's.
The whole dataset lives in one flat :class:`GraphStore`, so that a batch is gathered with index arithmetic
instead of ``Batch.from_data_list``.

Shapes: a batch is a :class:`~torch_geometric.data.Data` with ``x`` ``(N, F)``, ``edge_index`` ``(2, E)`` over
the batch's nodes, ``batch`` ``(N,)`` graph ids, ``num_graphs`` ``B`` and optionally ``edge_attr`` ``(E, D)``.

Example:
    >>> import torch
    >>> from torch_geometric.data import Data
    >>> from mmcl.modalities.graph.batched import BatchedAugmentation, GraphStore
    >>> ring = torch.arange(10)
    >>> graph = Data(x=torch.eye(10), edge_index=torch.stack([torch.cat([ring, (ring + 1) % 10]),
    ...                                                       torch.cat([(ring + 1) % 10, ring])]))
    >>> batch = GraphStore([graph] * 4).gather(torch.arange(4))
    >>> _ = torch.manual_seed(0)
    >>> view = BatchedAugmentation(["node_drop"], node_drop_ratio=0.1)(batch)
    >>> view.num_graphs, view.num_nodes, torch.bincount(view.batch).tolist()
    (4, 36, [9, 9, 9, 9])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import add_self_loops, is_undirected, scatter

from mmcl.modalities.graph.augment import AugmentationStrengths, check_augmentation_names


class GraphStore:
    """A dataset of graphs as flat tensors: ``x`` of every node, ``edge_index`` over all nodes, and the offsets
    of each graph's nodes and edges, so that any batch is a gather."""

    def __init__(self, graphs: Sequence[Data]) -> None:
        nodes = torch.tensor([g.num_nodes for g in graphs])
        edges = torch.tensor([g.edge_index.size(1) for g in graphs])
        self.node_ptr = torch.cat([torch.zeros(1, dtype=torch.long), nodes.cumsum(0)])
        self.edge_ptr = torch.cat([torch.zeros(1, dtype=torch.long), edges.cumsum(0)])
        self.x = torch.cat([g.x for g in graphs])
        self.edge_index = torch.cat([g.edge_index + int(start) for g, start in zip(graphs, self.node_ptr)], dim=1)
        attrs = [getattr(g, "edge_attr", None) for g in graphs]
        self.edge_attr = torch.cat(attrs) if all(a is not None for a in attrs) else None

    def gather(self, indices: Tensor) -> Data:
        """The graphs ``indices`` as one batch (in that order)."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        node_ids, node_graph = _ranges(self.node_ptr, indices)
        edge_ids, edge_graph = _ranges(self.edge_ptr, indices)
        counts = self.node_ptr[indices + 1] - self.node_ptr[indices]
        new_start = counts.cumsum(0) - counts
        shift = new_start - self.node_ptr[indices]  # old global id -> id within the batch, per graph
        edge_index = self.edge_index[:, edge_ids] + shift[edge_graph]
        edge_attr = self.edge_attr[edge_ids] if self.edge_attr is not None else None
        return _batch(self.x[node_ids], edge_index, node_graph, len(indices), edge_attr)


def _ranges(ptr: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """The concatenated ranges ``ptr[i]:ptr[i+1]`` for ``i`` in ``indices``, and each element's position in it."""
    starts, counts = ptr[indices], ptr[indices + 1] - ptr[indices]
    owner = torch.repeat_interleave(torch.arange(len(indices)), counts)
    offsets = counts.cumsum(0) - counts
    return starts[owner] + torch.arange(int(counts.sum())) - offsets[owner], owner


def _batch(x: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int, edge_attr: Tensor | None) -> Data:
    data = Data(x=x, edge_index=edge_index, batch=batch, num_graphs=num_graphs)
    if edge_attr is not None:
        data.edge_attr = edge_attr
    return data


def ranks_within(keys: Tensor, group: Tensor, groups: int) -> Tensor:
    """The rank (0 = smallest) of each key among the keys of its group."""
    order = torch.argsort(keys)
    order = order[torch.argsort(group[order], stable=True)]
    counts = torch.bincount(group, minlength=groups)
    starts = counts.cumsum(0) - counts
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(len(order), device=keys.device) - starts[group[order]]
    return ranks


class BatchedAugmentation:
    """One of ``names`` drawn per graph, applied to every graph of a batch at once (module docstring)."""

    def __init__(self, names: Sequence[str], **strengths: float | str) -> None:
        self.names = check_augmentation_names(names)
        self.strengths = AugmentationStrengths(**strengths)

    def __call__(self, batch: Data) -> Data:
        graphs, device = int(batch.num_graphs), batch.x.device
        choice = torch.randint(len(self.names), (graphs,), device=device)
        counts = torch.bincount(batch.batch, minlength=graphs)
        keep_nodes = torch.ones(batch.num_nodes, dtype=torch.bool, device=device)
        keep_edges = torch.ones(batch.edge_index.size(1), dtype=torch.bool, device=device)
        x, added = batch.x, None
        for k, name in enumerate(self.names):
            chosen = choice == k
            if name == "node_drop":
                keep_nodes &= self._node_drop(batch, chosen, counts)
            elif name == "subgraph":
                keep_nodes &= self._subgraph(batch, chosen, counts)
            elif name == "attr_mask":
                x = self._attr_mask(batch, x, chosen, counts)
            elif name == "edge_perturb":
                kept, added = self._edge_perturb(batch, chosen, counts)
                keep_edges &= kept
        return _induced(batch, x, keep_nodes, keep_edges, added)

    def _node_drop(self, batch: Data, chosen: Tensor, counts: Tensor) -> Tensor:
        drop = torch.minimum((self.strengths.node_drop_ratio * counts).long(), counts - 1) * chosen
        ranks = ranks_within(torch.rand(batch.num_nodes, device=counts.device), batch.batch, len(counts))
        return ranks >= drop[batch.batch]

    def _attr_mask(self, batch: Data, x: Tensor, chosen: Tensor, counts: Tensor) -> Tensor:
        count = (self.strengths.attr_mask_ratio * counts).long() * chosen
        ranks = ranks_within(torch.rand(batch.num_nodes, device=counts.device), batch.batch, len(counts))
        masked = ranks < count[batch.batch]
        x = x.clone()
        noise = torch.randn((int(masked.sum()), *x.shape[1:]), device=x.device) * 0.5 + 0.5
        x[masked] = noise.to(x.dtype)
        return x

    def _edge_perturb(self, batch: Data, chosen: Tensor, counts: Tensor) -> tuple[Tensor, Tensor | None]:
        row, col = batch.edge_index
        n = batch.num_nodes
        if is_undirected(batch.edge_index, num_nodes=n):  # one id per unordered pair: both directions together
            _, pair = torch.unique(torch.minimum(row, col) * n + torch.maximum(row, col), return_inverse=True)
        else:
            pair = torch.arange(row.numel(), device=row.device)
        pairs = int(pair.max()) + 1 if pair.numel() else 0
        pair_graph = torch.zeros(pairs, dtype=torch.long, device=row.device)
        pair_graph[pair] = batch.batch[row]
        per_graph = torch.bincount(pair_graph, minlength=len(counts))
        remove = (self.strengths.edge_perturb_ratio * per_graph).long() * chosen
        removed = ranks_within(torch.rand(pairs, device=row.device), pair_graph, len(counts)) < remove[pair_graph]
        return ~removed[pair], self._added_edges(batch, chosen, counts, per_graph)

    def _added_edges(self, batch: Data, chosen: Tensor, counts: Tensor, pairs: Tensor) -> Tensor | None:
        add = (self.strengths.edge_add_ratio * pairs).long() * (chosen & (counts > 1))
        if int(add.sum()) == 0:
            return None
        graph = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), add)
        start = counts.cumsum(0) - counts
        source = (torch.rand(len(graph), device=graph.device) * counts[graph]).long()
        shift = 1 + (torch.rand(len(graph), device=graph.device) * (counts[graph] - 1)).long()
        target = (source + shift) % counts[graph]  # never a self-loop
        new = torch.stack([source, target]) + start[graph]
        return torch.cat([new, new.flip(0)], dim=1)

    def _subgraph(self, batch: Data, chosen: Tensor, counts: Tensor) -> Tensor:
        device, graphs = counts.device, len(counts)
        target = torch.clamp((self.strengths.subgraph_keep_ratio * counts).long(), min=1)
        start = counts.cumsum(0) - counts + (torch.rand(graphs, device=device) * counts).long()
        selected = torch.zeros(batch.num_nodes, dtype=torch.bool, device=device)
        selected[start[chosen]] = True
        grow = self.strengths.subgraph_frontier == "grow"
        source = selected if grow else selected.clone()  # "start": the start nodes only
        size = chosen.long()
        row, col = batch.edge_index
        rounds = int(target[chosen].max()) - 1 if bool(chosen.any()) else 0
        for _ in range(rounds):
            active = chosen & (size < target)
            frontier = torch.zeros_like(selected)
            frontier[col[source[row] & ~selected[col] & active[batch.batch[col]]]] = True
            if not bool(frontier.any()):
                break
            keys = torch.rand(batch.num_nodes, device=device).masked_fill(~frontier, -1.0)
            best = scatter(keys, batch.batch, dim=0, dim_size=graphs, reduce="max")
            picked = frontier & (keys == best[batch.batch])
            selected |= picked
            size += torch.bincount(batch.batch[picked], minlength=graphs)
        return selected | ~chosen[batch.batch]


def _induced(batch: Data, x: Tensor, keep_nodes: Tensor, keep_edges: Tensor, added: Tensor | None) -> Data:
    """The batch restricted to the kept nodes and edges (node ids renumbered), with the added edges."""
    row, col = batch.edge_index
    keep_edges = keep_edges & keep_nodes[row] & keep_nodes[col]
    new_id = torch.cumsum(keep_nodes.long(), 0) - 1
    edge_index = new_id[batch.edge_index[:, keep_edges]]
    edge_attr = batch.edge_attr[keep_edges] if getattr(batch, "edge_attr", None) is not None else None
    if added is not None:  # edge_perturb keeps every node of its graphs
        edge_index = torch.cat([edge_index, new_id[added]], dim=1)
        if edge_attr is not None:
            edge_attr = torch.cat([edge_attr, edge_attr.new_zeros((added.size(1), *edge_attr.shape[1:]))])
    return _batch(x[keep_nodes], edge_index, batch.batch[keep_nodes], int(batch.num_graphs), edge_attr)


def with_self_loops(batch: Data) -> Data:
    """A self-loop on every node (GraphCL's TU loader: ``data.self_loops``)."""
    edge_index, edge_attr = add_self_loops(
        batch.edge_index, getattr(batch, "edge_attr", None), num_nodes=batch.num_nodes
    )
    return _batch(batch.x, edge_index, batch.batch, int(batch.num_graphs), edge_attr)


def view_major(views: Sequence[Data]) -> Data:
    """The views (each a batch of the same ``B`` graphs) as one batch of ``V * B`` graphs, view-major, with
    ``graph_view`` ``(V * B,)`` the view of each graph (for per-view batch norm)."""
    offsets = torch.tensor([0] + [v.num_nodes for v in views[:-1]]).cumsum(0).tolist()
    graphs = int(views[0].num_graphs)
    x = torch.cat([v.x for v in views])
    edge_index = torch.cat([v.edge_index + offset for v, offset in zip(views, offsets)], dim=1)
    batch = torch.cat([v.batch + i * graphs for i, v in enumerate(views)])
    attrs = [getattr(v, "edge_attr", None) for v in views]
    edge_attr = torch.cat(attrs) if all(a is not None for a in attrs) else None
    out = _batch(x, edge_index, batch, graphs * len(views), edge_attr)
    out.graph_view = torch.arange(len(views), device=x.device).repeat_interleave(graphs)
    return out
