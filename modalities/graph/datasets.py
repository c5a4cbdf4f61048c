"""Graph datasets: TU text files (the default), any ``torch_geometric.datasets`` dataset, or your own.

``data.source`` picks a registered source (:func:`register_source`): ``tu`` (default) reads
``data.dataset`` in the TU format from ``data.root``; ``pyg`` instantiates
``torch_geometric.datasets.<data.dataset>(root, **data.dataset_options)``; a plug-in's source returns its
own graphs. Every source gives :class:`~torch_geometric.data.Data` graphs with an optional graph-level
``y``; :func:`load_graphs` turns them into a :class:`GraphSource` with the chosen node features.

TU graph-classification datasets (Morris et al. 2020), read from a local folder through torch-geometric:

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
``x``                        the graphs' own ``x`` (any source; ``auto`` picks it outside TU data)
===========================  =========================================================================

``labels``, ``attributes`` and ``labels_and_attributes`` exist for TU data only. Integer graph labels
(one per graph) are re-encoded to ``0..C-1`` (GraphCL's ``LabelEncoder``); graphs without them (regression
targets, no ``y``) train with unsupervised losses only.

Example: a plug-in source of ring graphs, used with ``data.source=rings``::

    from mmcl.modalities.graph import register_source

    @register_source("rings")
    def rings(dataset, root, cache_dir, download, count: int = 100):
        ...  # return a list of Data(x=..., edge_index=..., y=...)
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import degree

from mmcl.contract import Registry

NODE_FEATURES = ("auto", "labels", "attributes", "labels_and_attributes", "degree", "constant", "x")
_TU_ONLY = ("labels", "attributes", "labels_and_attributes")

SourceLoader = Callable[..., Sequence[Data]]
SOURCES: Registry[SourceLoader] = Registry("graph data source", config_key="data.source")


def register_source(name: str) -> Callable[[SourceLoader], SourceLoader]:
    """Decorator registering ``loader(dataset, root, cache_dir, download, **options) -> graphs`` as ``data.source``.

    ``dataset`` is ``data.dataset``, ``root`` is ``data.root`` (None when unset), ``cache_dir`` is where
    anything derived may be written (never next to the source), ``options`` are ``data.dataset_options``.
    The graphs are :class:`~torch_geometric.data.Data` with ``edge_index``, optional ``x`` and an optional
    graph-level ``y``.
    """
    return SOURCES.register(name)


@dataclass(frozen=True)
class GraphSource:
    """Loaded graphs: ``Data(x (N, F) float, edge_index (2, E)[, edge_attr (E, D)])``, labels ``(G,)`` or None."""

    name: str
    graphs: tuple[Data, ...]
    labels: Tensor | None  # class ids 0..C-1; None when the graphs carry no integer graph labels
    num_features: int
    num_classes: int  # 0 without labels
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
    sources = {file.name for file in source.glob(f"{name}_*.txt")}
    stale = [copy for copy in raw.glob(f"{name}_*.txt") if copy.name not in sources]  # deleted from the source
    for copy in stale:
        copy.unlink()
    changed = bool(stale)
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


@register_source("tu")
def tu_dataset(dataset: str, root: str | None, cache_dir: str | None, download: bool) -> Sequence[Data]:
    """The TU dataset ``dataset`` from ``root`` (read only; copied into the cache), or downloaded into the cache."""
    from torch_geometric.datasets import TUDataset

    source = find_raw_folder(root, dataset) if root is not None else None
    if source is not None:
        key = hashlib.sha1(str(Path(root).expanduser().resolve()).encode()).hexdigest()[:12]
        target = cache_root(cache_dir) / "tu" / key
        with _locked(target):
            _sync_raw(source, dataset, target)
            try:
                return TUDataset(str(target), dataset, use_node_attr=True, use_edge_attr=True)
            except (ValueError, IndexError, RuntimeError) as error:  # a truncated or inconsistent file
                shutil.rmtree(target / dataset / "processed", ignore_errors=True)
                raise ValueError(
                    f"TU dataset {dataset!r}: the files in {source} are inconsistent ({type(error).__name__}: "
                    f"{error}); check that every {dataset}_*.txt file is complete"
                ) from None
    if not download:
        where = "data.root is not set" if root is None else f"not found under data.root={root!r}"
        raise FileNotFoundError(
            f"TU dataset {dataset!r}: {where}; set data.root to a folder holding {dataset}/raw/{dataset}_A.txt "
            "(the TU text format) or set data.download=true"
        )
    target = cache_root(cache_dir) / "tu" / "download"
    with _locked(target):
        return TUDataset(str(target), dataset, use_node_attr=True, use_edge_attr=True)


@register_source("pyg")
def pyg_dataset(dataset: str, root: str | None, cache_dir: str | None, download: bool, **options) -> Sequence[Data]:
    """``torch_geometric.datasets.<dataset>(root, **options)``; ``root`` is PyG's own folder (raw/ and processed/,
    written by PyG), by default ``<cache_dir>/pyg/<dataset>``."""
    import torch_geometric.datasets as pyg_datasets

    factory = getattr(pyg_datasets, dataset, None)
    if not inspect.isclass(factory):
        raise ValueError(
            f"data.dataset={dataset!r} is not a torch_geometric.datasets class; e.g. {pyg_datasets.__all__[:8]}"
        )
    if "root" in inspect.signature(factory).parameters:
        options["root"] = str(Path(root).expanduser() if root else cache_root(cache_dir) / "pyg" / dataset)
    return factory(**options)


def _node_features(mode: str, graph: Data, n_attr: int, n_labels: int, max_degree: int) -> Tensor:
    n = graph.num_nodes
    if mode == "x":
        return graph.x.float().view(n, -1)
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


def load_graphs(
    dataset: str,
    root: str | None,
    cache_dir: str | None = None,
    download: bool = False,
    node_features: str = "auto",
    edge_attributes: bool = False,
    max_degree: int | None = None,
    source: str = "tu",
    dataset_options: dict | None = None,
) -> GraphSource:
    """Load ``dataset`` from the registered ``source`` as in-memory graphs with the chosen node features.

    Cached per process (a pretraining run and its evaluation read the data once).
    """
    options = json.dumps(dataset_options or {}, sort_keys=True)
    files = _source_files(dataset, root) if source == "tu" else ()  # a changed TU file is read again
    return _load_graphs(
        dataset, root, cache_dir, download, node_features, edge_attributes, max_degree, source, options, files
    )


def _source_files(dataset: str, root: str | None) -> tuple:
    folder = find_raw_folder(root, dataset) if root is not None else None
    if folder is None:
        return ()
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.glob(f"{dataset}_*.txt")))


@functools.lru_cache(maxsize=8)
def _load_graphs(
    dataset: str,
    root: str | None,
    cache_dir: str | None,
    download: bool,
    node_features: str,
    edge_attributes: bool,
    max_degree: int | None,
    source: str,
    dataset_options: str,
    source_files: tuple,
) -> GraphSource:
    if node_features not in NODE_FEATURES:
        raise ValueError(f"data.node_features={node_features!r} is not one of {list(NODE_FEATURES)}")
    loaded = SOURCES.get(source)(dataset, root, cache_dir, download, **json.loads(dataset_options))
    raw = [loaded[i] for i in range(len(loaded))]
    if not raw:
        raise ValueError(f"data.source={source!r} gave no graphs for data.dataset={dataset!r}")
    mode = _resolve_node_features(node_features, loaded, raw, dataset)
    if mode == "degree" and max_degree is None:
        max_degree = max(int(degree(g.edge_index[0], g.num_nodes).max()) if g.num_edges else 0 for g in raw)
    counts = (getattr(loaded, "num_node_attributes", 0), getattr(loaded, "num_node_labels", 0))
    graphs = []
    for graph in raw:
        data = Data(x=_node_features(mode, graph, *counts, max_degree or 0), edge_index=graph.edge_index)
        if edge_attributes and graph.edge_attr is not None:
            data.edge_attr = graph.edge_attr.float()
        graphs.append(data)
    labels = _class_labels(raw)
    num_classes = int(labels.max()) + 1 if labels is not None else 0
    return GraphSource(dataset, tuple(graphs), labels, graphs[0].x.size(1), num_classes, mode)


def _resolve_node_features(mode: str, loaded: Sequence[Data], raw: list[Data], name: str) -> str:
    n_labels, n_attr = getattr(loaded, "num_node_labels", None), getattr(loaded, "num_node_attributes", None)
    has_x = all(g.x is not None for g in raw)
    if mode == "auto":
        if n_labels is None:
            return "x" if has_x else "constant"
        return "labels" if n_labels else "attributes" if n_attr else "constant"
    if mode in _TU_ONLY and n_labels is None:
        raise ValueError(f"data.node_features={mode!r} exists for TU data only; use 'x', 'degree' or 'constant'")
    missing = {"labels": not n_labels, "attributes": not n_attr, "labels_and_attributes": not (n_labels or n_attr)}
    if missing.get(mode):
        raise ValueError(f"data.node_features={mode!r}: dataset {name!r} has {n_labels} node label column(s) and "
                         f"{n_attr} node attribute(s); use 'degree' or 'constant'")  # fmt: skip
    if mode == "x" and not has_x:
        raise ValueError(f"data.node_features='x': the graphs of {name!r} have no x; use 'degree' or 'constant'")
    return mode


def _class_labels(graphs: list[Data]) -> Tensor | None:
    """Graph labels re-encoded to 0..C-1, or None unless every graph has one integer ``y``."""
    ys = [getattr(g, "y", None) for g in graphs]
    if any(y is None or y.numel() != 1 or y.is_floating_point() for y in ys):
        return None
    _, labels = torch.unique(torch.cat([y.view(1) for y in ys]), sorted=True, return_inverse=True)
    return labels
