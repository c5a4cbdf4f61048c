"""GraphCL's augmentations on a whole batch (mmcl.modalities.graph.batched) against the per-graph ones: exact
per-graph behaviour on small graphs, and the same statistics on a fixed graph."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import is_undirected, to_undirected

from mmcl.modalities.graph.augment import build_augmentation
from mmcl.modalities.graph.batched import BatchedAugmentation, GraphStore, view_major, with_self_loops


def graph(n: int, extra: list[tuple[int, int]] = (), features: int = 3) -> Data:
    """A path over ``n`` nodes plus ``extra`` edges, undirected, with node features ``i`` in column 0."""
    edges = [(i, i + 1) for i in range(n - 1)] + list(extra)
    edge_index = to_undirected(torch.tensor(edges, dtype=torch.long).view(-1, 2).t(), num_nodes=n)
    x = torch.zeros(n, features)
    x[:, 0] = torch.arange(n, dtype=torch.float)
    return Data(x=x, edge_index=edge_index)


GRAPHS = [graph(10, [(0, 5), (2, 7)]), graph(7), graph(23, [(3, 19)]), graph(4), graph(1)]


def batch_of(graphs=GRAPHS) -> Data:
    return GraphStore(graphs).gather(torch.arange(len(graphs)))


def test_the_store_gathers_what_from_data_list_collates():
    order = torch.tensor([2, 0, 4, 0])
    gathered = GraphStore(GRAPHS).gather(order)
    reference = Batch.from_data_list([GRAPHS[i] for i in order])
    for key in ("x", "edge_index", "batch"):
        assert torch.equal(getattr(gathered, key), getattr(reference, key)), key
    assert gathered.num_graphs == 4


def per_graph_sizes(view: Data, graphs: int) -> list[int]:
    return torch.bincount(view.batch, minlength=graphs).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_node_drop_drops_the_per_graph_count_and_keeps_induced_edges(seed):
    torch.manual_seed(seed)
    batch = batch_of()
    view = BatchedAugmentation(["node_drop"], node_drop_ratio=0.2)(batch)
    assert per_graph_sizes(view, 5) == [n - min(int(0.2 * n), n - 1) for n in (10, 7, 23, 4, 1)]
    kept = view.x[:, 0]  # original node ids within each graph (column 0)
    for g, original in enumerate(GRAPHS):
        ids = kept[view.batch == g].long().tolist()
        offset = int((view.batch < g).sum())
        edges = {(int(a) - offset, int(b) - offset) for a, b in view.edge_index.t().tolist() if view.batch[a] == g}
        expected = {(ids.index(a), ids.index(b)) for a, b in original.edge_index.t().tolist() if a in ids and b in ids}
        assert edges == expected


@pytest.mark.parametrize("seed", range(5))
def test_edge_perturb_removes_the_per_graph_count_of_undirected_edges(seed):
    torch.manual_seed(seed)
    batch = batch_of()
    view = BatchedAugmentation(["edge_perturb"], edge_perturb_ratio=0.3)(batch)
    assert is_undirected(view.edge_index) and per_graph_sizes(view, 5) == [10, 7, 23, 4, 1]
    for g, original in enumerate(GRAPHS):
        pairs = original.edge_index.size(1) // 2
        left = int((view.batch[view.edge_index[0]] == g).sum()) // 2
        assert left == pairs - int(0.3 * pairs)
    added = BatchedAugmentation(["edge_perturb"], edge_perturb_ratio=0.0, edge_add_ratio=0.5)(batch)
    expected = 2 * sum(int(0.5 * g.edge_index.size(1) // 2) for g in GRAPHS if g.num_nodes > 1)
    assert added.edge_index.size(1) == batch.edge_index.size(1) + expected
    assert not (added.edge_index[0] == added.edge_index[1]).any()
    assert (added.batch[added.edge_index[0]] == added.batch[added.edge_index[1]]).all()  # within a graph


def test_attr_mask_replaces_the_per_graph_count_of_rows():
    torch.manual_seed(0)
    batch = batch_of()
    view = BatchedAugmentation(["attr_mask"], attr_mask_ratio=0.3)(batch)
    changed = (view.x != batch.x).any(dim=1)
    assert torch.equal(view.edge_index, batch.edge_index)
    assert torch.bincount(batch.batch[changed], minlength=5).tolist() == [int(0.3 * n) for n in (10, 7, 23, 4, 1)]


@pytest.mark.parametrize("frontier", ["grow", "start"])
def test_subgraph_keeps_a_connected_set_of_the_target_size(frontier):
    torch.manual_seed(1)
    batch = batch_of()
    view = BatchedAugmentation(["subgraph"], subgraph_keep_ratio=0.4, subgraph_frontier=frontier)(batch)
    sizes = per_graph_sizes(view, 5)
    if frontier == "grow":  # connected graphs: the set reaches its target
        assert sizes == [max(1, int(0.4 * n)) for n in (10, 7, 23, 4, 1)]
    for g in range(5):
        nodes = (view.batch == g).nonzero().flatten()
        inside = view.edge_index[:, torch.isin(view.edge_index[0], nodes)]
        reached, frontier_nodes = {int(nodes[0])}, {int(nodes[0])}
        while frontier_nodes:  # every kept node is reachable within the kept subgraph
            frontier_nodes = {int(b) for a, b in inside.t().tolist() if a in frontier_nodes} - reached
            reached |= frontier_nodes
        if frontier == "grow":
            assert reached == set(nodes.tolist())


def inclusion(per_graph: bool, names: list[str], runs: int = 3000, **strengths) -> torch.Tensor:
    """How often each node of a fixed graph is kept, over ``runs`` draws."""
    fixed = graph(12, [(0, 6), (3, 9), (1, 11)])
    counts = torch.zeros(12)
    torch.manual_seed(7)
    if per_graph:
        augment = build_augmentation(names, **strengths)
        for _ in range(runs):
            counts[augment(fixed).x[:, 0].long()] += 1
    else:
        batch = GraphStore([fixed] * runs).gather(torch.arange(runs))
        view = BatchedAugmentation(names, **strengths)(batch)
        counts += torch.bincount(view.x[:, 0].long(), minlength=12).float()
    return counts / runs


@pytest.mark.parametrize("names, strengths", [
    (["node_drop"], {"node_drop_ratio": 0.25}),
    (["subgraph"], {"subgraph_keep_ratio": 0.5}),
    (["subgraph"], {"subgraph_keep_ratio": 0.5, "subgraph_frontier": "start"}),
    (["node_drop", "subgraph"], {}),
])  # fmt: skip
def test_node_inclusion_frequencies_match_the_per_graph_augmentations(names, strengths):
    """Each node's probability to be in the view: the same for both implementations within sampling error
    (3000 draws: standard error at most 0.009; the bound is 4.5 of them)."""
    batched, per_graph = inclusion(False, names, **strengths), inclusion(True, names, **strengths)
    assert (batched - per_graph).abs().max() < 0.04, (batched, per_graph)


def test_views_are_view_major_with_self_loops_on_the_first():
    batch = batch_of()
    first = with_self_loops(batch)
    assert first.edge_index.size(1) == batch.edge_index.size(1) + batch.num_nodes
    views = view_major([first, BatchedAugmentation(["node_drop"])(batch)])
    assert views.num_graphs == 10 and views.graph_view.tolist() == [0] * 5 + [1] * 5
    assert views.batch.max() == 9 and int(views.edge_index.max()) < views.num_nodes
    assert torch.equal(views.batch[: batch.num_nodes], batch.batch)
