"""Graph modality: GraphCL's augmentations, encoders, TU loading, the adapter and a tiny MUTAG run."""

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import erdos_renyi_graph, is_undirected, to_undirected

from mmcl.contract.adapter import Encoder, TrainBatch
from mmcl.engine.config import load_config
from mmcl.modalities.graph import (
    AttrMask,
    EdgePerturb,
    GraphAdapter,
    GraphBackbone,
    GraphDataConfig,
    GraphModelConfig,
    Identity,
    NodeDrop,
    Subgraph,
    build_augmentation,
    check_graph,
    load_graphs,
)

TU_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tu"
HAS_MUTAG = (TU_ROOT / "MUTAG" / "raw" / "MUTAG_A.txt").is_file()
needs_mutag = pytest.mark.skipif(not HAS_MUTAG, reason=f"TU data not found at {TU_ROOT}/MUTAG/raw (shared data absent)")


def random_graph(n: int, p: float, seed: int, features: int = 5, edge_dim: int | None = None) -> Data:
    torch.manual_seed(seed)
    edge_index = to_undirected(erdos_renyi_graph(n, p), num_nodes=n) if n > 1 else torch.empty(2, 0, dtype=torch.long)
    data = Data(x=torch.randn(n, features), edge_index=edge_index)
    if edge_dim is not None:
        data.edge_attr = torch.randn(edge_index.size(1), edge_dim)
    return data


# sizes from one node to 60, sparse and dense, with isolated nodes, with and without edge features
SIZES = [(1, 0.0), (2, 1.0), (3, 0.0), (7, 0.3), (12, 0.15), (25, 0.1), (60, 0.05), (30, 0.6)]
GRAPHS = [random_graph(n, p, seed=i, edge_dim=3 if i % 2 else None) for i, (n, p) in enumerate(SIZES)]
AUGMENTATIONS = {
    "node_drop": NodeDrop(0.1),
    "node_drop_heavy": NodeDrop(0.9),
    "edge_perturb": EdgePerturb(0.1),
    "edge_perturb_add": EdgePerturb(0.3, add_ratio=0.3),
    "attr_mask": AttrMask(0.1),
    "subgraph": Subgraph(0.2),
    "subgraph_tiny": Subgraph(0.0),
    "subgraph_graphcl_code": Subgraph(0.2, frontier="start"),
    "random4": build_augmentation(["node_drop", "edge_perturb", "attr_mask", "subgraph"]),
}


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_augmentations_keep_graphs_valid(name):
    augment = AUGMENTATIONS[name]
    for graph in GRAPHS:
        before = graph.clone()
        for draw in range(5):
            torch.manual_seed(draw)
            view = augment(graph)
            check_graph(view)  # edge indices in range, x rows = nodes, edge_attr rows = edges
            assert 1 <= view.num_nodes <= graph.num_nodes or name == "edge_perturb_add"
            assert view.x.shape[1:] == graph.x.shape[1:] and view.x.dtype == graph.x.dtype
            assert (view.edge_attr is None) == (graph.edge_attr is None)
            if graph.edge_attr is not None:
                assert view.edge_attr.shape[1:] == graph.edge_attr.shape[1:]
            assert is_undirected(view.edge_index, num_nodes=view.num_nodes)
        assert torch.equal(graph.x, before.x) and torch.equal(graph.edge_index, before.edge_index)  # input untouched


def test_augmentation_strengths_match_graphcl():
    graph = random_graph(40, 0.2, seed=3, edge_dim=2)  # connected at this density
    pairs = graph.num_edges // 2
    torch.manual_seed(0)
    assert NodeDrop(0.1)(graph).num_nodes == 36
    assert Subgraph(0.2)(graph).num_nodes == 8
    assert EdgePerturb(0.1)(graph).num_edges == 2 * (pairs - int(0.1 * pairs))
    assert EdgePerturb(0.1, add_ratio=0.1)(graph).num_edges == 2 * pairs
    masked = AttrMask(0.1)(graph)
    assert (masked.x != graph.x).any(dim=1).sum() == 4 and torch.equal(masked.edge_index, graph.edge_index)
    assert torch.equal(Identity()(graph).x, graph.x)


def test_subgraph_is_connected_and_node_drop_keeps_induced_edges():
    ring = torch.arange(30)
    graph = Data(x=torch.arange(30.0)[:, None], edge_index=to_undirected(torch.stack([ring, (ring + 1) % 30])))
    for seed in range(10):
        torch.manual_seed(seed)
        nodes = Subgraph(0.2)(graph).x.squeeze(1).long().sort().values  # a path of 6 consecutive ring nodes
        gaps = (nodes.roll(-1) - nodes) % 30
        assert len(nodes) == 6 and int((gaps != 1).sum()) == 1
        star = Subgraph(0.2, frontier="start")(graph).x.squeeze(1).long()  # GraphCL's code: start node + neighbours
        assert len(star) == 3 and int(((star.roll(-1) - star) % 30 != 1).sum()) == 1
        view = NodeDrop(0.1)(graph)
        kept = view.x.squeeze(1).long()
        ends = kept[view.edge_index]
        assert bool((((ends[0] - ends[1]) % 30 == 1) | ((ends[1] - ends[0]) % 30 == 1)).all())
        assert view.num_edges == 2 * sum(int((a + 1) % 30 in set(kept.tolist())) for a in kept.tolist())


def test_augmentations_are_deterministic_under_torch_seed_only():
    augment = build_augmentation(["node_drop", "edge_perturb", "attr_mask", "subgraph"], edge_add_ratio=0.2)
    graph = GRAPHS[-1]

    def views(python_seed: int) -> list[Data]:
        random.seed(python_seed)
        np.random.seed(python_seed)
        torch.manual_seed(1234)
        return [augment(graph) for _ in range(8)]

    first, second = views(0), views(99)
    for a, b in zip(first, second):
        assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)
    assert len({(v.num_nodes, v.num_edges) for v in first}) > 1  # the draws do differ between calls


@pytest.mark.parametrize("bad, match", [
    (lambda: build_augmentation(["drop_nodes"]), "unknown graph augmentation"),
    (lambda: build_augmentation([]), "non-empty list"),
    (lambda: build_augmentation("node_drop"), "non-empty list"),
    (lambda: NodeDrop(1.5), "node_drop ratio"),
    (lambda: EdgePerturb(0.1, add_ratio=-0.1), "add_ratio"),
    (lambda: Subgraph(True), "keep_ratio"),
    (lambda: Subgraph(0.2, frontier="bfs"), "frontier"),
    (lambda: AttrMask(0.1)(Data(edge_index=torch.empty(2, 0, dtype=torch.long), num_nodes=3)), "needs node features"),
])  # fmt: skip
def test_augmentation_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_check_graph_rejects_invalid_graphs():
    with pytest.raises(ValueError, match="outside"):
        check_graph(Data(x=torch.ones(2, 1), edge_index=torch.tensor([[0], [2]])))
    with pytest.raises(ValueError, match="edge_attr"):
        check_graph(Data(x=torch.ones(2, 1), edge_index=torch.tensor([[0], [1]]), edge_attr=torch.ones(2, 1)))


@pytest.mark.parametrize("encoder", ["gin", "gcn", "sage"])
@pytest.mark.parametrize("pooling, jk, width", [("sum", "cat", 96), ("mean", "last", 32), ("max", "cat", 96)])
def test_encoder_shapes(encoder, pooling, jk, width):
    torch.manual_seed(0)
    batch = Batch.from_data_list(GRAPHS)
    backbone = GraphBackbone(5, 32, 3, encoder, pooling, jk)
    out = backbone(batch)
    assert out.shape == (len(GRAPHS), width) == (len(GRAPHS), backbone.out_dim) and torch.isfinite(out).all()
    out.sum().backward()


def test_adapter_encoder_and_batches_without_files():
    model = GraphModelConfig(encoder="gin", hidden_dim=16, num_layers=2)
    adapter, graphs = synthetic_adapter(model, GraphDataConfig(dataset="SYNTH", augment_on="loader"))
    encoder = adapter.build_encoder()
    assert isinstance(encoder, Encoder)
    assert [m.out_features for m in encoder.head if hasattr(m, "out_features")] == [32, 32]
    data = adapter.train_dataset()
    torch.manual_seed(0)
    items = [data[i] for i in range(len(data))]
    assert all(torch.equal(views[0].x, graphs[i].x) for i, (views, _) in enumerate(items))  # first view unaugmented
    batch = adapter.collate_train(items)
    assert isinstance(batch, TrainBatch) and batch.n_views == 2 and batch.inputs.num_graphs == 2 * len(graphs)
    assert torch.equal(batch.labels, torch.tensor([0, 1] * 4))
    assert batch.inputs[3].num_nodes == graphs[3].num_nodes  # view-major: row i of the first half is graph i
    out = encoder(batch.to("cpu").inputs)
    assert out.shape == (16, 32)
    inputs, labels = adapter.collate_eval([adapter.eval_datasets()["all"][i] for i in range(3)])
    assert encoder.features(inputs).shape == (3, 32) and labels.tolist() == [0, 1, 0]


def test_views_drawn_on_the_device_by_default():
    """The loader only gathers graphs; augment_batch draws the views (GraphCL's self-loops on the first)."""
    data = GraphDataConfig(dataset="SYNTH", self_loops=True, augmentations=["node_drop"], node_drop_ratio=0.5)
    adapter, graphs = synthetic_adapter(GraphModelConfig(batch_norm_per_view=True), data)
    assert adapter.on_device and adapter.train_dataset()[3] == (3, 1)
    raw = adapter.collate_train([adapter.train_dataset()[i] for i in range(len(graphs))])
    assert raw.inputs.num_graphs == len(graphs) and torch.equal(raw.labels, torch.tensor([0, 1] * 4))
    torch.manual_seed(0)
    batch = adapter.augment_batch(raw)
    original = Batch.from_data_list(list(graphs))
    first = batch.inputs.batch < len(graphs)
    assert batch.n_views == 2 and batch.inputs.num_graphs == 2 * len(graphs)
    assert torch.equal(batch.inputs.x[first], original.x)  # the first view is the graph itself
    edges = batch.inputs.edge_index
    loops = edges[0] == edges[1]
    assert int(loops.sum()) == original.num_nodes and bool(first[edges[0][loops]].all())  # on the first view only
    assert torch.bincount(batch.inputs.batch[~first] - len(graphs)).tolist() == [
        g.num_nodes - min(int(0.5 * g.num_nodes), g.num_nodes - 1) for g in graphs]  # fmt: skip
    assert adapter.build_encoder()(batch.inputs).shape == (16, 96)


def synthetic_adapter(model: GraphModelConfig, data: GraphDataConfig) -> tuple[GraphAdapter, tuple[Data, ...]]:
    """An adapter over GRAPHS (labels 0, 1, 0, 1, ...) without reading any file."""
    from mmcl.modalities.graph.datasets import GraphSource

    adapter = GraphAdapter(model, data)
    graphs = tuple(replace_x(g) for g in GRAPHS)
    adapter._source = GraphSource("SYNTH", graphs, torch.tensor([0, 1] * 4), 5, 2, "attributes")
    return adapter, graphs


def test_self_loops_on_unaugmented_graphs_only():
    data = GraphDataConfig(dataset="SYNTH", self_loops=True, augmentations=["node_drop"], node_drop_ratio=0.5,
                           augment_on="loader")  # fmt: skip
    adapter, graphs = synthetic_adapter(GraphModelConfig(), data)
    torch.manual_seed(0)
    for graph, (first, second) in zip(graphs, (views for views, _ in adapter.train_dataset())):
        loops = torch.arange(graph.num_nodes).repeat(2, 1)
        assert torch.equal(first.edge_index, torch.cat([graph.edge_index, loops], dim=1))  # one loop per node
        assert not (second.edge_index[0] == second.edge_index[1]).any()  # the augmented view has none
        assert not (graph.edge_index[0] == graph.edge_index[1]).any()  # the source is untouched
    evaluated = [item[0] for item in adapter.eval_datasets()["all"]]
    assert [g.num_edges for g in evaluated] == [g.num_edges + g.num_nodes for g in graphs]


def test_batch_norm_per_view_equals_one_forward_per_view():
    torch.manual_seed(0)
    data = GraphDataConfig(dataset="SYNTH", augment_on="loader")
    adapter, graphs = synthetic_adapter(GraphModelConfig(batch_norm_per_view=True), data)
    per_view = adapter.build_encoder().backbone.double()
    separate = GraphBackbone(5, 32, 3).double()
    separate.load_state_dict(per_view.state_dict())
    torch.manual_seed(1)
    batch = adapter.collate_train([adapter.train_dataset()[i] for i in range(len(graphs))]).inputs
    views = [Batch.from_data_list(batch.index_select(range(v * len(graphs), (v + 1) * len(graphs)))) for v in (0, 1)]
    joint = per_view(batch)
    expected = torch.cat([separate(view) for view in views])
    torch.testing.assert_close(joint, expected)
    joint.square().sum().backward()
    expected.square().sum().backward()
    for name, parameter in separate.named_parameters():
        torch.testing.assert_close(per_view.get_parameter(name).grad, parameter.grad, msg=name)
    for name, buffer in separate.named_buffers():  # running statistics updated once per view
        torch.testing.assert_close(per_view.get_buffer(name), buffer, msg=name)
    per_view.eval(), separate.eval()
    torch.testing.assert_close(per_view(batch), separate(batch))  # evaluation: running statistics only
    assert joint.dtype == torch.float64
    assert not torch.allclose(separate.train()(batch), joint)  # normalising both views together differs


def replace_x(graph: Data) -> Data:
    return Data(x=graph.x, edge_index=graph.edge_index)


@pytest.mark.parametrize("override, match", [
    ("model.encoder=gat", r"unknown graph encoder 'gat' \(model.encoder\); available: \['gcn', 'gin', 'sage'\]"),
    ("model.depth=3", "unknown key"),
    ("data.node_features=random", "data.node_features='random' is not one of"),
    ("data.augmentations=[node_drop,flip]", "unknown graph augmentation"),
    ("data.subgraph_keep_ratio=2.0", "keep_ratio"),
    ("eval.graph_classification.method=knn", "is not one of"),
    ("eval.graph_classification.kernel=rbf", "unknown key"),
])  # fmt: skip
def test_config_errors(override, match):
    with pytest.raises(ValueError, match=match):
        config = load_config("configs/graph/mutag.yaml", [override])
        GraphAdapter(config.model, config.data)


def test_missing_dataset_names_the_fix(tmp_path):
    data = GraphDataConfig(dataset="MUTAG", root=str(tmp_path), cache_dir=str(tmp_path))
    adapter = GraphAdapter(GraphModelConfig(), data)
    with pytest.raises(FileNotFoundError, match=r"set data.root to a folder holding MUTAG/raw/MUTAG_A\.txt"):
        adapter.build_encoder()


@needs_mutag
def test_tu_loading_never_writes_into_the_source(tmp_path):
    root = tmp_path / "tu"
    shutil.copytree(TU_ROOT / "MUTAG", root / "MUTAG")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    graphs = load_graphs("MUTAG", str(root), str(tmp_path / "cache"))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert (len(graphs.graphs), graphs.num_features, graphs.num_classes, graphs.node_features) == (188, 7, 2, "labels")
    assert torch.bincount(graphs.labels).tolist() == [63, 125]
    for graph in graphs.graphs[:20]:
        check_graph(graph)
    degree = load_graphs("MUTAG", str(root), str(tmp_path / "cache"), node_features="degree")
    assert degree.num_features == 5 and bool((degree.graphs[0].x.sum(1) == 1).all())
    constant = load_graphs("MUTAG", str(root), str(tmp_path / "cache"), node_features="constant", edge_attributes=True)
    assert constant.num_features == 1 and constant.graphs[0].edge_attr.shape == (38, 4)
    with pytest.raises(ValueError, match="and 0 node attribute"):
        load_graphs("MUTAG", str(root), str(tmp_path / "cache"), node_features="attributes")


# The options with which the engine follows GraphCL's TU code (docs/graph.md, "Reference mode").
REFERENCE_MODE = ["data.self_loops=true", "model.batch_norm_per_view=true", "train.shuffle=once",
                  "train.drop_last=false", "data.subgraph_frontier=start"]  # fmt: skip


@needs_mutag
@pytest.mark.parametrize("mode", [[], REFERENCE_MODE], ids=["default", "reference_mode"])
def test_tiny_pretrain_and_evaluate_on_mutag(tmp_path, mode):
    from mmcl.engine.evaluate import evaluate_run
    from mmcl.engine.trainer import pretrain

    overrides = [f"data.root={TU_ROOT}", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=2",
                 "train.batch_size=64", "train.progress_bar=false", "train.log_every=1",
                 "eval.graph_classification.folds=5", "eval.graph_classification.inner_folds=3",
                 "eval.graph_classification.C=[0.1,10]", *mode]  # fmt: skip
    config = load_config("configs/graph/mutag.yaml", overrides)
    run = pretrain(config, tmp_path / "run")
    steps_per_epoch = 3 if "train.drop_last=false" in mode else 2  # 188 = 2 * 64 + 60
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2 * steps_per_epoch
    results = evaluate_run(run)["graph_classification"]
    assert (results["n"], results["embedding_dim"], len(results["per_seed"][0]["fold_accuracies"])) == (188, 96, 5)
    assert 60.0 <= results["accuracy"] <= 100.0  # MUTAG's majority class is 66.5%
    again = evaluate_run(run)["graph_classification"]
    assert again["accuracy"] == results["accuracy"]  # the encoder is frozen and the split seeded


def test_any_pyg_dataset_by_name(tmp_path):
    """data.source=pyg: torch_geometric.datasets.<name>(**dataset_options), node features from the graphs' x."""
    options = {"num_graphs": 30, "avg_num_nodes": 8, "num_channels": 3, "num_classes": 3}
    source = load_graphs("FakeDataset", None, str(tmp_path), source="pyg", dataset_options=options)
    assert (len(source.graphs), source.num_features, source.node_features) == (30, 3, "x")
    assert source.labels is not None and source.labels.shape == (30,) and source.num_classes <= 3
    with pytest.raises(ValueError, match="'NoSuchDataset' is not a torch_geometric.datasets class"):
        load_graphs("NoSuchDataset", None, str(tmp_path), source="pyg")
    with pytest.raises(ValueError, match="node_features='labels' exists for TU data only"):
        load_graphs("FakeDataset", None, str(tmp_path), node_features="labels", source="pyg", dataset_options=options)
    with pytest.raises(ValueError, match=r"unknown graph data source 'zinc' \(data.source\)"):
        load_graphs("ZINC", None, str(tmp_path), source="zinc")


@needs_mutag
def test_pyg_tudataset_equals_the_tu_source(tmp_path):
    """The same MUTAG through PyG's TUDataset (data.source=pyg, its own root) and through the TU reader."""
    root = tmp_path / "pyg"
    shutil.copytree(TU_ROOT / "MUTAG", root / "MUTAG")  # PyG writes processed/ into its root
    pyg = load_graphs("TUDataset", str(root), str(tmp_path), source="pyg", dataset_options={"name": "MUTAG"})
    tu = load_graphs("MUTAG", str(TU_ROOT), str(tmp_path / "cache"))
    assert pyg.node_features == tu.node_features == "labels"  # PyG's TUDataset tells its label columns apart too
    assert torch.equal(pyg.labels, tu.labels) and len(pyg.graphs) == len(tu.graphs) == 188
    for a, b in zip(pyg.graphs, tu.graphs):
        assert torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index)


def test_pretrain_and_evaluate_on_a_pyg_dataset(tmp_path):
    import mmcl

    config = {
        "modality": "graph",
        "model": {"hidden_dim": 8, "num_layers": 2},
        "data": {
            "source": "pyg",
            "dataset": "FakeDataset",
            "dataset_options": {"num_graphs": 40, "avg_num_nodes": 6, "num_channels": 3, "num_classes": 2},
            "cache_dir": str(tmp_path / "cache"),
        },
        "loss": {"name": "graphcl"},
        "train": {"max_steps": 2, "batch_size": 16, "cpu": True, "progress_bar": False, "output_dir": str(tmp_path)},
        "eval": {"graph_classification": {"folds": 2, "inner_folds": 2, "search": False}},
    }
    run = mmcl.pretrain(config)
    results = mmcl.evaluate(run)["graph_classification"]
    assert 0 <= results["accuracy"] <= 100 and len(run.metrics()) >= 1


@pytest.mark.parametrize(
    "encoder, options",
    [("gin", {}), ("gcn", {"pooling": "mean"}), ("sage", {"jumping_knowledge": "last", "batch_norm": False})],
)
def test_export_loads_into_the_pyg_classes_and_back_into_mmcl(encoder, options, tmp_path):
    """RUN/model of a graph run: GraphBackbone rebuilt from the exported constructor arguments, and the same network
    written with torch_geometric's own layer classes (the model card's code), load the state dict and give mmcl's
    graph embeddings; mmcl.load_encoder gives the head's too."""
    from safetensors.torch import load_file

    import mmcl
    from mmcl.modalities.graph.export import pyg_code

    dataset_options = {"num_graphs": 24, "avg_num_nodes": 7, "num_channels": 3, "num_classes": 2}
    data = GraphDataConfig(source="pyg", dataset="FakeDataset", dataset_options=dataset_options,
                           cache_dir=str(tmp_path / "cache"))  # fmt: skip
    adapter = GraphAdapter(GraphModelConfig(encoder=encoder, hidden_dim=8, num_layers=3, **options), data)
    torch.manual_seed(0)
    model = adapter.build_encoder()
    batch = Batch.from_data_list(list(adapter.source.graphs))
    with torch.no_grad():
        model.train()(batch)  # batch-norm statistics off their defaults, as training leaves them
        model.eval()
        features, embeddings = model.features(batch), model(batch)
    folder = adapter.export(model, tmp_path / "model")
    manifest = json.loads((folder / "mmcl_export.json").read_text())
    arguments = manifest["backbone"]["arguments"]
    assert arguments["in_dim"] == 3 and arguments["encoder"] == encoder and manifest["node_features"]["kind"] == "x"
    with torch.no_grad():
        backbone = GraphBackbone(**arguments)
        backbone.load_state_dict(load_file(folder / "backbone.safetensors"))  # strict
        torch.testing.assert_close(backbone.eval()(batch), features, rtol=0, atol=0)
        namespace: dict = {}
        exec(pyg_code(folder), namespace)  # torch_geometric's GINConv/GCNConv/SAGEConv, no mmcl
        plain = namespace["backbone"](batch.x, batch.edge_index, batch.batch)
        torch.testing.assert_close(plain, features, rtol=0, atol=1e-6)
        loaded = mmcl.load_encoder(folder)
        torch.testing.assert_close(loaded.features(batch), features, rtol=0, atol=0)
        torch.testing.assert_close(loaded(batch), embeddings, rtol=0, atol=0)
