r"""Graph encoders: message-passing backbones with per-layer graph pooling, and GraphCL's projection head.

The backbone follows GraphCL's unsupervised TU encoder (You et al. 2020, arXiv:2010.13902;
``unsupervised_TU/gin.py``, inherited from InfoGraph): ``L`` message-passing layers, each followed by a
ReLU and batch normalisation,

.. math::
    h^{(l)} = \mathrm{BN}\big(\mathrm{ReLU}(\mathrm{conv}_l(h^{(l-1)}, A))\big), \qquad
    z_G = \big\Vert_{l=1}^{L} \sum_{v \in G} h^{(l)}_v

so the graph embedding is the concatenation of every layer's sum-pooled node states, of width
``L * hidden_dim`` (96 for GraphCL's 3 layers of 32). With ``gin`` each layer is
``GINConv(MLP(in, hidden) -> ReLU -> Linear(hidden, hidden))`` with :math:`\epsilon = 0`; ``gcn`` uses
``GCNConv`` and ``sage`` ``SAGEConv`` (mean aggregation) in the same frame. The projection head
``Linear -> ReLU -> Linear`` (width = embedding width, as GraphCL) is used only by the loss; evaluation
uses the backbone embedding. Linear layers are Xavier-uniform initialised with zero biases, as GraphCL's
``init_emb`` does.

Shapes: input a PyG ``Batch`` with ``x`` ``(N, F)``, ``edge_index`` ``(2, E)``, ``batch`` ``(N,)``;
backbone output ``(num_graphs, L * hidden_dim)`` (``jumping_knowledge="last"``: ``(num_graphs, hidden_dim)``).

Example:
    >>> import torch
    >>> from torch_geometric.data import Batch, Data
    >>> from mmcl.modalities.graph.encoders import GraphBackbone, projection_head
    >>> graphs = [Data(x=torch.ones(3, 7), edge_index=torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]))] * 4
    >>> backbone = GraphBackbone(in_dim=7, hidden_dim=32, num_layers=3)
    >>> backbone(Batch.from_data_list(graphs)).shape, backbone.out_dim
    (torch.Size([4, 96]), 96)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import GCNConv, GINConv, SAGEConv, global_add_pool, global_max_pool, global_mean_pool

from mmcl.contract import Registry

_POOLS = {"sum": global_add_pool, "mean": global_mean_pool, "max": global_max_pool}

ConvFactory = Callable[[int, int], nn.Module]
ENCODERS: Registry[ConvFactory] = Registry("graph encoder", config_key="model.encoder")


def register_encoder(name: str) -> Callable[[ConvFactory], ConvFactory]:
    """Decorator registering a message-passing layer factory ``(in_dim, out_dim) -> layer`` as ``model.encoder``.

    The layer is called as ``layer(x, edge_index)`` (any ``torch_geometric.nn`` convolution); the backbone
    stacks ``num_layers`` of them with ReLU, batch norm and per-layer pooling.
    """
    return ENCODERS.register(name)


@register_encoder("gin")
def gin_conv(in_dim: int, out_dim: int) -> nn.Module:
    return GINConv(nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim)))


@register_encoder("gcn")
def gcn_conv(in_dim: int, out_dim: int) -> nn.Module:
    return GCNConv(in_dim, out_dim)


@register_encoder("sage")
def sage_conv(in_dim: int, out_dim: int) -> nn.Module:
    return SAGEConv(in_dim, out_dim)


class GraphBackbone(nn.Module):
    """``num_layers`` message-passing layers (ReLU, then optional batch norm), pooled per layer.

    Args:
        in_dim: node feature width ``F``.
        hidden_dim: width of every layer (GraphCL: 32).
        num_layers: number of layers (GraphCL's TU runs: 3).
        encoder: ``"gin"`` | ``"gcn"`` | ``"sage"`` | a registered encoder (:func:`register_encoder`).
        pooling: ``"sum"`` (GraphCL) | ``"mean"`` | ``"max"`` readout over each graph's nodes.
        jumping_knowledge: ``"cat"`` concatenates every layer's pooled output (GraphCL), ``"last"`` keeps
            the last layer's.
        batch_norm: batch normalisation after each layer's ReLU (GraphCL: yes).
        batch_norm_per_view: in training, normalise each view's nodes with their own batch statistics, as
            GraphCL's code does by encoding the two views in separate forward passes; needs the batch's
            ``graph_view`` (``(num_graphs,)`` view ids, view-major), which the graph adapter sets. Without
            it, or in evaluation, the whole batch is normalised together.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 32,
        num_layers: int = 3,
        encoder: str = "gin",
        pooling: Literal["sum", "mean", "max"] = "sum",
        jumping_knowledge: Literal["cat", "last"] = "cat",
        batch_norm: bool = True,
        batch_norm_per_view: bool = False,
    ) -> None:
        super().__init__()
        if in_dim < 1 or hidden_dim < 1 or num_layers < 1:
            raise ValueError(f"in_dim, hidden_dim, num_layers must be >= 1, got {in_dim}, {hidden_dim}, {num_layers}")
        if pooling not in _POOLS:
            raise ValueError(f"unknown pooling {pooling!r}; available: {list(_POOLS)}")
        if jumping_knowledge not in ("cat", "last"):
            raise ValueError(f"jumping_knowledge must be 'cat' or 'last', got {jumping_knowledge!r}")
        widths = [in_dim] + [hidden_dim] * (num_layers - 1)
        conv = ENCODERS.get(encoder)
        self.convs = nn.ModuleList(conv(width, hidden_dim) for width in widths)
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden_dim) if batch_norm else nn.Identity() for _ in widths)
        self.pool = _POOLS[pooling]
        self.jumping_knowledge = jumping_knowledge
        self.batch_norm_per_view = batch_norm_per_view
        self.out_dim = hidden_dim * (num_layers if jumping_knowledge == "cat" else 1)

    def node_states(self, batch: Batch) -> list[Tensor]:
        """Every layer's node states ``[(N, hidden_dim)] * num_layers``."""
        x, states = batch.x.float(), []
        view_nodes = self._nodes_per_view(batch)
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(conv(x, batch.edge_index))
            x = norm(x) if view_nodes is None else torch.cat([norm(part) for part in x.split(view_nodes)])
            states.append(x)
        return states

    def _nodes_per_view(self, batch: Batch) -> list[int] | None:
        """Node counts of the batch's consecutive views when each view is normalised on its own, else None."""
        if not (self.batch_norm_per_view and self.training and getattr(batch, "graph_view", None) is not None):
            return None
        node_view = batch.graph_view[batch.batch]
        if (node_view.diff() < 0).any():
            raise ValueError("batch_norm_per_view needs a view-major batch (graph_view non-decreasing)")
        return torch.bincount(node_view).tolist()

    def forward(self, batch: Batch) -> Tensor:
        states = self.node_states(batch)
        if self.jumping_knowledge == "last":
            states = states[-1:]
        size = batch.num_graphs  # graphs without nodes in the batch still get a (zero) row
        return torch.cat([self.pool(h, batch.batch, size) for h in states], dim=1)


def projection_head(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2) -> nn.Module:
    """GraphCL's head ``Linear -> ReLU -> Linear`` (``layers=2``); ``1`` is one linear map, ``0`` the identity."""
    if layers == 0:
        return nn.Identity()
    if layers == 1:
        return nn.Linear(in_dim, out_dim)
    if layers < 0:
        raise ValueError(f"head_layers must be >= 0, got {layers}")
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True)]
        width = hidden_dim
    return nn.Sequential(*modules, nn.Linear(width, out_dim))


def xavier_init_(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` (GraphCL's ``init_emb``)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module
