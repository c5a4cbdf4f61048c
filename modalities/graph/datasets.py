"""TU graph-classification datasets (Morris et al. 2020) from a local folder, through torch-geometric.

``root`` holds one folder per dataset in the TU text format, ``<root>/<NAME>/raw/<NAME>_A.txt``,
``<NAME>_graph_indicator.txt``, ``<NAME>_graph_labels.txt`` and optional ``_node_labels``,
``_node_attributes``, ``_edge_labels``, ``_edge_attributes`` files (``<root>/<NAME>/<NAME>_A.txt`` is
accepted too). Nothing is ever written under ``root``: torch-geometric's ``TUDataset`` writes a
``processed/`` folder next to ``raw/``, so the raw files are copied to ``<cache_dir>/tu/<key>/<NAME>/raw``
(``cache_dir`` defaults to ``~/.cache/mmcl``; ``key`` identifies the ``root`` folder) and read there; a
changed source file (size or modification time) is copied again and the processed data rebuilt. With
``download=True`` a dataset missing from ``root`` is downloaded from the TU server into the cache.

Node features (``node_features``):

===========================  =========================================================================
``auto``                     node labels (one-hot) if the dataset has them, else continuous node
                             attributes, else ``constant``; GraphCL/InfoGraph's choice for MUTAG,
                             PROTEINS, NCI1 (which have node labels)
``labels``                   one-hot node labels only (torch-geometric's ``use_node_attr=False``)
``attributes``               continuous node attributes only (PROTEINS: 1, ENZYMES: 18)
``labels_and_attributes``    both, attributes first
``degree``                   one-hot node degree, clipped at ``max_degree`` (default: the dataset's)
``constant``                 a single feature equal to 1 (GraphCL's code does this for every dataset
                             but MUTAG, PTC_MR, DD, PROTEINS, NCI1, NCI109, ENZYMES included)
===========================  =========================================================================

Graph labels are re-encoded to ``0..C-1`` (GraphCL's ``LabelEncoder``).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import degree

NODE_FEATURES = ("auto", "labels", "attributes", "labels_and_attributes", "degree", "constant")


@dataclass(frozen=True)
class TUGraphs:
    """A loaded TU dataset: ``Data(x (N, F) float, edge_index (2, E)[, edge_attr (E, D)])`` graphs, labels ``(G,)``."""

    name: str
    graphs: tuple[Data, ...]
    labels: Tensor
    num_features: int
    num_classes: int
    node_features: str  # what ``auto`` resolved to


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "mmcl"


def find_raw_folder(root: str | Path, name: str) -> Path | None:
    """The folder holding ``<name>_A.txt`` under ``root`` (``<root>/<name>/raw`` or ``<root>/<name>``), if any."""
    for folder in (Path(root).expanduser() / name / "raw", Path(root).expanduser() / name):
        if (folder / f"{name}_A.txt").is_file():
            return folder
    return None


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (several runs may prepare the same cache at once)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sync_raw(source: Path, name: str, target_root: Path) -> None:
    """Copy the dataset's TU files from ``source`` to ``target_root/<name>/raw``; drop stale processed data."""
    raw = target_root / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    changed = False
    for file in sorted(source.glob(f"{name}_*.txt")):
        copy = raw / file.name
        stat = file.stat()
        if copy.is_file() and (copy.stat().st_size, copy.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            continue
        partial = raw / f".{file.name}.partial"
        shutil.copy2(file, partial)  # keeps the modification time, which tells a stale copy apart
        os.replace(partial, copy)
        changed = True
    if changed:
        shutil.rmtree(target_root / name / "processed", ignore_errors=True)


def _tu_dataset(name: str, root: str, cache_dir: str | None, download: bool):
    from torch_geometric.datasets import TUDataset

    source = find_raw_folder(root, name)
    if source is not None:
        key = hashlib.sha1(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:12]
        target = cache_root(cache_dir) / "tu" / key
        with _locked(target):
            _sync_raw(source, name, target)
            return TUDataset(str(target), name, use_node_attr=True, use_edge_attr=True)
    if not download:
        expected = Path(root) / name / "raw" / f"{name}_A.txt"
        raise FileNotFoundError(
            f"TU dataset {name!r} not found under data.root={root!r} (expected {expected}); point data.root at a "
            f"folder holding {name}/raw/ (e.g. data.root=../shared/data/tu) or set data.download=true"
        )
    target = cache_root(cache_dir) / "tu" / "download"
    with _locked(target):
        return TUDataset(str(target), name, use_node_attr=True, use_edge_attr=True)


def _node_features(mode: str, graph: Data, n_attr: int, n_labels: int, max_degree: int) -> Tensor:
    n = graph.num_nodes
    if mode == "constant":
        return torch.ones(n, 1)
    if mode == "degree":
        deg = degree(graph.edge_index[0], n, dtype=torch.long).clamp(max=max_degree)
        return F.one_hot(deg, max_degree + 1).float()
    x = graph.x.float()
    if mode == "labels":
        return x[:, n_attr:]
    if mode == "attributes":
        return x[:, :n_attr]
    return x  # labels_and_attributes


@functools.lru_cache(maxsize=8)
def load_tu(
    name: str,
    root: str,
    cache_dir: str | None = None,
    download: bool = False,
    node_features: str = "auto",
    edge_attributes: bool = False,
    max_degree: int | None = None,
) -> TUGraphs:
    """Load a TU dataset as in-memory graphs with the chosen node features (cached per process)."""
    if node_features not in NODE_FEATURES:
        raise ValueError(f"data.node_features={node_features!r} is not one of {list(NODE_FEATURES)}")
    dataset = _tu_dataset(name, root, cache_dir, download)
    n_labels, n_attr = dataset.num_node_labels, dataset.num_node_attributes
    mode = node_features
    if mode == "auto":
        mode = "labels" if n_labels else "attributes" if n_attr else "constant"
    missing = {"labels": n_labels == 0, "attributes": n_attr == 0, "labels_and_attributes": n_labels + n_attr == 0}
    if missing.get(mode):
        raise ValueError(f"data.node_features={mode!r}: dataset {name!r} has {n_labels} node label column(s) and "
                         f"{n_attr} node attribute(s); use 'degree' or 'constant'")  # fmt: skip
    raw = [dataset[i] for i in range(len(dataset))]
    if mode == "degree" and max_degree is None:
        max_degree = max(int(degree(g.edge_index[0], g.num_nodes).max()) if g.num_edges else 0 for g in raw)
    graphs = []
    for graph in raw:
        data = Data(x=_node_features(mode, graph, n_attr, n_labels, max_degree or 0), edge_index=graph.edge_index)
        if edge_attributes and graph.edge_attr is not None:
            data.edge_attr = graph.edge_attr.float()
        graphs.append(data)
    _, labels = torch.unique(dataset.y, sorted=True, return_inverse=True)
    return TUGraphs(name, tuple(graphs), labels, graphs[0].x.size(1), int(labels.max()) + 1, mode)
