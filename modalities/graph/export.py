"""The graph encoder's export: the GNN's state dict with its constructor arguments (``RUN/model``)::

    backbone.safetensors  GraphBackbone's state dict: convs.<i>.* in the layout of the torch_geometric.nn layer
                          (GINConv: convs.0.nn.0.weight ...; GCNConv: convs.0.lin.weight, convs.0.bias; SAGEConv:
                          convs.0.lin_l.*, convs.0.lin_r.*), norms.<i>.* (BatchNorm1d)
    head.safetensors      the projection head (Linear-ReLU-Linear as nn.Sequential: 0.weight, 2.weight, ...)
    mmcl_export.json      {"modality": "graph", "backbone": {"class", "arguments"}, "head": {...},
                          "node_features": {how the data's node features were built, their width}}

``GraphBackbone(**arguments).load_state_dict(...)`` restores it (:func:`load_encoder`; ``mmcl.load_encoder``); for
the built-in layers (``gin``, ``gcn``, ``sage``) :func:`pyg_code` writes the same network with torch_geometric's
classes alone, which loads the same file: the model card shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcl.contract import Encoder
from mmcl.contract.export import load_weights, read_manifest, save_weights, write_manifest
from mmcl.modalities.graph.encoders import GraphBackbone, projection_head

BACKBONE_FILE, HEAD_FILE = "backbone.safetensors", "head.safetensors"
#: torch_geometric's expression of each built-in layer, ``{i}`` the input and ``{h}`` the output width.
PYG_LAYERS = {
    "gin": (
        "GINConv",
        "GINConv(torch.nn.Sequential(torch.nn.Linear({i}, {h}), torch.nn.ReLU(), torch.nn.Linear({h}, {h})))",
    ),
    "gcn": ("GCNConv", "GCNConv({i}, {h})"),
    "sage": ("SAGEConv", "SAGEConv({i}, {h})"),
}
_PYG_POOLS = {"sum": "global_add_pool", "mean": "global_mean_pool", "max": "global_max_pool"}


def export_encoder(
    encoder: Encoder, folder: str | Path, backbone: dict[str, Any], head: dict[str, Any], node_features: dict[str, Any]
) -> Path:
    """Write ``encoder`` to ``folder``: ``backbone`` and ``head`` are the constructor arguments of
    :class:`GraphBackbone` and :func:`projection_head`, ``node_features`` how the graphs' features were built."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(encoder.backbone, folder / BACKBONE_FILE)
    save_weights(encoder.head, folder / HEAD_FILE)
    backbone_spec = {"class": "mmcl.modalities.graph.GraphBackbone", "arguments": backbone}
    write_manifest(folder, "graph", backbone=backbone_spec, head=head, node_features=node_features)
    return folder


def load_encoder(folder: str | Path) -> Encoder:
    """The :class:`Encoder` of an export folder (eval mode), weights loaded strictly."""
    manifest = read_manifest(folder)
    backbone = GraphBackbone(**manifest["backbone"]["arguments"])
    backbone.load_state_dict(load_weights(Path(folder) / BACKBONE_FILE))
    head = projection_head(**manifest["head"])
    head.load_state_dict(load_weights(Path(folder) / HEAD_FILE))
    return Encoder(backbone, head).eval()


def pyg_code(folder: str | Path) -> str | None:
    """Python defining the export's backbone with torch_geometric alone and loading its weights (None: a plug-in
    layer). ``backbone(x, edge_index, batch)`` returns the graph embeddings mmcl evaluates."""
    arguments = read_manifest(folder)["backbone"]["arguments"]
    if arguments["encoder"] not in PYG_LAYERS:
        return None
    layer, expression = PYG_LAYERS[arguments["encoder"]]
    pool = _PYG_POOLS[arguments["pooling"]]
    hidden = arguments["hidden_dim"]
    widths = [arguments["in_dim"]] + [hidden] * (arguments["num_layers"] - 1)
    norm = f"torch.nn.BatchNorm1d({hidden})" if arguments["batch_norm"] else "torch.nn.Identity()"
    pooled = "torch.cat(pooled, dim=1)" if arguments["jumping_knowledge"] == "cat" else "pooled[-1]"
    return f'''import torch
from safetensors.torch import load_file
from torch_geometric.nn import {layer}, {pool}


class GraphEncoder(torch.nn.Module):
    """{arguments["num_layers"]} x ({layer}, ReLU, norm), every layer's nodes pooled ({arguments["pooling"]})."""

    def __init__(self):
        super().__init__()
        self.convs = torch.nn.ModuleList({expression.format(i="width", h=hidden)} for width in {widths})
        self.norms = torch.nn.ModuleList({norm} for _ in range({len(widths)}))

    def forward(self, x, edge_index, batch):
        pooled = []
        for conv, norm in zip(self.convs, self.norms):
            x = norm(torch.relu(conv(x.float(), edge_index)))
            pooled.append({pool}(x, batch))
        return {pooled}


backbone = GraphEncoder()
backbone.load_state_dict(load_file({str(Path(folder) / BACKBONE_FILE)!r}))
backbone.eval()'''


def usage(folder: str | Path) -> str:
    """The model card's Markdown: the GNN with torch_geometric (built-in layers), the encoder with mmcl."""
    manifest = read_manifest(folder)
    features = manifest["node_features"]
    code = pyg_code(folder)
    parts = []
    if code is not None:
        parts.append(f"The GNN with torch_geometric alone:\n\n```python\n{code}\n```\n")
    parts.append(
        "The GNN and the projection head with mmcl (a torch_geometric `Batch` in, one row per graph out):\n\n"
        f"```python\nimport mmcl\n\nencoder = mmcl.load_encoder({str(folder)!r})\n"
        "# features = encoder.features(batch); embeddings = encoder(batch)\n```\n"
    )
    parts.append(
        f"Node features: {features['num_features']} per node, built as `data.node_features={features['kind']}` "
        f"from {features['source']} data `{features['dataset']}`"
        + (" with a self-loop on every node." if features.get("self_loops") else ".")
    )
    return "\n".join(parts)
