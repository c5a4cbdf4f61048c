"""GraphCL's SVC protocol (evaluation spec, section 4): separable data, shuffled labels, options, the task."""

import pytest
import torch
from torch_geometric.data import Data

from mmcl.tasks import EvalContext, get_task
from mmcl.tasks.graph_classification import C_GRID, GraphClassificationOptions, cross_validated_accuracy


def clusters(n_classes: int, n: int, dim: int, spread: float, seed: int, shuffle_labels: bool = False):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % n_classes  # balanced
    x = 4 * torch.randn(n_classes, dim, generator=g)[labels] + spread * torch.randn(n, dim, generator=g)
    if shuffle_labels:
        labels = labels[torch.randperm(n, generator=g)]
    return x, labels


def test_separable_data_is_near_perfect():
    x, y = clusters(3, 150, 8, 1.0, seed=0)
    result = cross_validated_accuracy(x, y, seeds=[0, 1])
    assert result["accuracy"] >= 98.0 and result["num_classes"] == 3 and result["n"] == 150
    assert len(result["per_seed"]) == 2 and all(len(run["fold_accuracies"]) == 10 for run in result["per_seed"])
    assert all(c in C_GRID for run in result["per_seed"] for c in run["C"])
    assert result["std_over_seeds"] is not None and result["std_ddof"] == 0 and result["gamma"] == "scale"


@pytest.mark.parametrize("method", ["svc", "logreg"])
def test_shuffled_labels_give_chance(method):
    x, y = clusters(2, 240, 8, 1.0, seed=1, shuffle_labels=True)
    result = cross_validated_accuracy(x, y, method=method, seeds=[0, 1, 2])
    assert abs(result["accuracy"] - 50.0) < 8.0


def test_logreg_and_fixed_classifier_on_separable_data():
    x, y = clusters(2, 100, 6, 1.0, seed=2)
    assert cross_validated_accuracy(x, y, method="logreg", standardize=True)["accuracy"] >= 98.0
    fixed = cross_validated_accuracy(x, y, search=False)
    assert fixed["accuracy"] >= 98.0 and fixed["per_seed"][0]["C"] == [10.0] * 10 and fixed["C_grid"] is None


def test_seeded_splits_are_reproducible_and_differ_between_seeds():
    x, y = clusters(2, 120, 4, 4.0, seed=3)  # overlapping clusters: fold accuracies vary
    a, b = cross_validated_accuracy(x, y, seeds=[5]), cross_validated_accuracy(x, y, seeds=[5])
    assert a["per_seed"] == b["per_seed"]
    c = cross_validated_accuracy(x, y, seeds=[6])
    assert c["per_seed"][0]["fold_accuracies"] != a["per_seed"][0]["fold_accuracies"]


def test_labels_are_reencoded():
    x, y = clusters(2, 60, 4, 1.0, seed=4)
    shifted = cross_validated_accuracy(x, y * 7 + 3, folds=5, inner_folds=3)
    plain = cross_validated_accuracy(x, y, folds=5, inner_folds=3)
    assert shifted["num_classes"] == 2 and shifted["accuracy"] == plain["accuracy"]


@pytest.mark.parametrize("kwargs, match", [
    ({"folds": 1}, "folds must be an integer >= 2"),
    ({"inner_folds": True}, "inner_folds"),
    ({"method": "knn"}, "method must be"),
    ({"C": []}, "C must be"),
    ({"seeds": []}, "at least one"),
])  # fmt: skip
def test_option_errors(kwargs, match):
    x, y = clusters(2, 40, 4, 1.0, seed=5)
    with pytest.raises(ValueError, match=match):
        cross_validated_accuracy(x, y, **kwargs)


def test_data_errors():
    x, y = clusters(2, 40, 4, 1.0, seed=5)
    with pytest.raises(ValueError, match="smallest class has 3"):
        cross_validated_accuracy(x, torch.cat([torch.ones(3), torch.zeros(37)]).long())
    with pytest.raises(ValueError, match="two classes"):
        cross_validated_accuracy(x, torch.zeros(40, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        cross_validated_accuracy(torch.full((40, 4), float("nan")), y)


def test_registered_task_on_synthetic_graphs():
    """Paths vs. cliques through a random GIN: the task embeds the adapter's "all" split and separates them."""
    from mmcl.modalities.graph import GraphAdapter, GraphDataConfig, GraphModelConfig
    from mmcl.modalities.graph.datasets import GraphSource

    graphs, labels = [], []
    for i in range(60):
        n = 4 + i % 5
        nodes = torch.arange(n)
        if i % 2:
            edges = torch.combinations(nodes).T
        else:
            edges = torch.stack([nodes[:-1], nodes[1:]])
        graphs.append(Data(x=torch.ones(n, 1), edge_index=torch.cat([edges, edges.flip(0)], dim=1)))
        labels.append(i % 2)
    adapter = GraphAdapter(GraphModelConfig(hidden_dim=16, num_layers=2), GraphDataConfig(dataset="SYNTH"))
    adapter._source = GraphSource("SYNTH", tuple(graphs), torch.tensor(labels), 1, 2, "constant")
    torch.manual_seed(0)
    encoder = adapter.build_encoder().eval()
    task = get_task("graph_classification")
    assert "graph_classification" in type(adapter).default_eval_tasks and task.options is GraphClassificationOptions
    context = EvalContext(encoder, adapter, torch.device("cpu"), batch_size=16, seed=3)
    result = task.run(context, GraphClassificationOptions(folds=5, inner_folds=3, C=[1.0, 100.0]))
    assert result["accuracy"] >= 95.0 and result["per_seed"][0]["seed"] == 3 and result["embedding_dim"] == 32
    head = task.run(context, GraphClassificationOptions(folds=5, search=False, layer="head", split_seeds=[0, 1]))
    assert head["layer"] == "head" and [run["seed"] for run in head["per_seed"]] == [0, 1]


def test_parallel_folds_equal_the_serial_run():
    """The outer folds in two processes give exactly the serial result (every fold fitted with one thread)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(60, 6, generator=generator) + 0.4, torch.randn(60, 6, generator=generator) - 0.4])
    y = torch.cat([torch.zeros(60), torch.ones(60)]).long()
    options = {"folds": 4, "inner_folds": 3, "C": [0.1, 1.0, 10.0], "seeds": (0, 1)}
    serial = cross_validated_accuracy(x, y, n_jobs=1, **options)
    parallel = cross_validated_accuracy(x, y, n_jobs=2, **options)
    assert parallel == serial and len(serial["per_seed"]) == 2 and len(serial["per_seed"][0]["C"]) == 4


def test_the_folds_pass_through_the_progress_as_they_finish():
    """``progress`` sees every outer fold (seeds x folds, with their number) and changes nothing."""
    x, y = clusters(2, 80, 6, 1.0, seed=4)
    seen = []

    def progress(items, total=None):
        for item in items:
            seen.append(total)
            yield item

    options = {"folds": 4, "inner_folds": 3, "C": [0.1, 1.0], "seeds": (0, 1), "n_jobs": 2}
    assert cross_validated_accuracy(x, y, progress=progress, **options) == cross_validated_accuracy(x, y, **options)
    assert seen == [8] * 8
