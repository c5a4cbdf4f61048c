"""Gradient caching: a contrastive step over a batch larger than the encoder's activations fit in memory.

After Gao, Zhang, Han, Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (GradCache, RepL4NLP 2021, arXiv:2101.06983). A contrastive loss couples every embedding of the
batch, but the encoder does not: with ``E = [f(x_1); ...; f(x_K)]`` the embeddings of ``K`` chunks,

.. math::
    \\frac{\\partial L}{\\partial \\theta} = \\sum_k \\Big(\\frac{\\partial f(x_k)}{\\partial \\theta}\\Big)^\\top
    \\frac{\\partial L}{\\partial E_k}

so a step can (1) embed every chunk without a graph, (2) compute the loss and ``dL/dE`` once on the
detached embeddings (``(N, d)`` only; with ``mmcl.losses``' blockwise path the loss itself needs memory linear
in ``N``), and (3) re-run each chunk with a graph and back-propagate its slice of ``dL/dE``. Peak
activation memory is one chunk's; compute is one extra forward pass.

The random state (CPU and the CUDA devices of the chunk) is saved before each chunk's first pass and
restored for its re-run, so dropout draws the same masks in both passes and the parameter gradients
equal those of the uncached step that embeds the same chunks with a graph (``tests/test_gradcache.py``).

Not for encoders with batch-dependent layers (batch normalisation in training mode): their output
depends on how the batch is chunked, and their running statistics would be updated twice;
:func:`batch_dependent_layers` lists such layers.

Example:
    >>> import torch
    >>> from mmcl import losses
    >>> from mmcl.engine.gradcache import cached_step, split_inputs
    >>> encoder = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.1), torch.nn.Linear(16, 4))
    >>> x_a, x_b = torch.randn(32, 8), torch.randn(32, 8)
    >>> loss_fn = losses.build("nt_xent")
    >>> loss, z = cached_step(encoder, split_inputs(torch.cat([x_a, x_b]), 16), lambda z: loss_fn(z[:32], z[32:]))
    >>> encoder[0].weight.grad.shape
    torch.Size([16, 8])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn

from mmcl.contract import ViewGroups

Chunk = Any  # a Tensor, a mapping of tensors (tokenizer output) or anything the encoder accepts


def split_inputs(inputs: Tensor | Mapping[str, Tensor], chunk_size: int) -> list[Tensor] | list[dict[str, Tensor]]:
    """Split ``inputs`` along dim 0 into chunks of at most ``chunk_size`` rows.

    Args:
        inputs: a tensor ``(N, ...)``, a mapping of tensors sharing their first dimension (a tokenizer's
            ``input_ids``, ``attention_mask``, ...; non-tensor values of a mapping are kept in every chunk), or
            multi-crop's :class:`~mmcl.contract.ViewGroups` (each group chunked on its own).
        chunk_size: rows per chunk, ``>= 1``.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(inputs, Tensor):
        return list(inputs.split(chunk_size, dim=0))
    if isinstance(inputs, ViewGroups):  # groups of one crop size each, chunked in order: the order of the outputs
        return [chunk for group in inputs for chunk in split_inputs(group, chunk_size)]
    if isinstance(inputs, Mapping):
        sizes = {v.shape[0] for v in inputs.values() if isinstance(v, Tensor)}
        if len(sizes) != 1:
            raise ValueError(f"the tensors of inputs must share their first dimension, got sizes {sorted(sizes)}")
        (n,) = sizes
        return [
            {k: v[start : start + chunk_size] if isinstance(v, Tensor) else v for k, v in inputs.items()}
            for start in range(0, n, chunk_size)
        ]
    raise ValueError(f"inputs must be a Tensor or a mapping of tensors, got {type(inputs).__name__}")


def cached_step(
    encoder_forward: Callable[[Chunk], Tensor],
    chunks: Sequence[Chunk],
    loss_of_embeddings: Callable[[Tensor], Tensor],
    *,
    backward: Callable[[Tensor], None] | None = None,
    no_sync: Callable[[], AbstractContextManager] | None = None,
) -> tuple[Tensor, Tensor]:
    """One gradient-cached step: parameter gradients accumulated (``.grad``), as ``loss.backward()`` would.

    Args:
        encoder_forward: maps a chunk to its embeddings ``(n_k, d)``; must not depend on other chunks.
        chunks: the batch's chunks, e.g. from :func:`split_inputs`; their embeddings are concatenated in
            this order.
        loss_of_embeddings: maps the embeddings of the whole batch ``(N, d)`` to the scalar loss (e.g.
            ``lambda z: loss_fn(z[:n], z[n:])`` for two stacked views). Parameters it owns (a learnable
            temperature) get their gradients too.
        backward: runs the backward pass of the loss (default ``loss.backward()``); pass
            ``accelerator.backward`` or ``lambda l: scaler.scale(l).backward()`` for loss scaling (the
            scaled embedding gradients are what the chunks receive).
        no_sync: a context manager factory (``lambda: ddp_model.no_sync()``) entered for every chunk's
            backward but the last, so that DDP reduces the gradients once.

    Returns:
        The loss and the embeddings ``(N, d)``, both detached.
    """
    if len(chunks) == 0:
        raise ValueError("cached_step needs at least one chunk")
    states, embeddings = [], []
    for chunk in chunks:
        states.append(_RandomState(chunk))
        with torch.no_grad():
            embeddings.append(encoder_forward(chunk))
    detached = torch.cat(embeddings).detach().requires_grad_()
    sizes = [e.shape[0] for e in embeddings]
    del embeddings
    loss = loss_of_embeddings(detached)
    (backward or Tensor.backward)(loss)
    if detached.grad is None:
        raise RuntimeError("the loss does not depend on the embeddings; nothing to back-propagate")
    for k, (chunk, state, grad) in enumerate(zip(chunks, states, detached.grad.split(sizes))):
        sync = contextlib.nullcontext() if no_sync is None or k == len(chunks) - 1 else no_sync()
        with state.restored(), sync:
            encoder_forward(chunk).backward(grad)
    return loss.detach(), detached.detach()


class _RandomState:
    """The CPU random state and that of every CUDA device holding a tensor of ``chunk``."""

    def __init__(self, chunk: Chunk) -> None:
        self.cpu = torch.get_rng_state()
        self.devices = sorted({t.device.index or 0 for t in _tensors(chunk) if t.is_cuda})
        self.cuda = [torch.cuda.get_rng_state(device) for device in self.devices]

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Run the block from this state; the random state after it is what the block left."""
        torch.set_rng_state(self.cpu)
        for device, state in zip(self.devices, self.cuda):
            torch.cuda.set_rng_state(state, device)
        yield


def _tensors(chunk: Chunk) -> list[Tensor]:
    if isinstance(chunk, Tensor):
        return [chunk]
    if isinstance(chunk, Mapping):
        return [v for v in chunk.values() if isinstance(v, Tensor)]
    if isinstance(chunk, (list, tuple)):
        return [t for item in chunk for t in _tensors(item)]
    return []


def batch_dependent_layers(module: nn.Module) -> list[str]:
    """Names of the submodules whose training-mode output depends on the whole batch (batch norm), which
    gradient caching does not support."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.SyncBatchNorm)
    return [name for name, m in module.named_modules() if isinstance(m, kinds) and m.training]
