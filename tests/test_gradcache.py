"""Gradient caching (mmcl/gradcache.py): the cached step's parameter gradients equal the uncached step's."""

import pytest
import torch

from mmcl import losses
from mmcl.engine.gradcache import batch_dependent_layers, cached_step, split_inputs

DT = torch.float64
N, D_IN = 12, 6


class Encoder(torch.nn.Module):
    """A small encoder with dropout (random) and no batch-dependent layer; takes a tensor or a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(D_IN, 16), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 5)
        )

    def forward(self, x):
        if isinstance(x, dict):
            return self.net(x["features"] * x["mask"][:, None])
        return self.net(x)


def _model(seed=0) -> Encoder:
    torch.manual_seed(seed)
    return Encoder().to(DT).train()


def _views(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D_IN, generator=g, dtype=DT), torch.randn(N, D_IN, generator=g, dtype=DT)


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _uncached(model, chunks, loss_of_embeddings):
    """The uncached step on the same chunks: embed each with a graph (same random stream), one backward."""
    loss = loss_of_embeddings(torch.cat([model(chunk) for chunk in chunks]))
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("chunk_size", [1, 5, 24])
@pytest.mark.parametrize("name", ["nt_xent", "hcl", "dhel"])
def test_cached_gradients_equal_uncached(name, chunk_size):
    x_a, x_b = _views()
    chunks = split_inputs(torch.cat([x_a, x_b]), chunk_size)
    loss_fn = losses.build(name)

    def loss_of_embeddings(z):
        return loss_fn(z[:N], z[N:])

    reference_model = _model()
    torch.manual_seed(123)
    reference_loss = _uncached(reference_model, chunks, loss_of_embeddings)
    model = _model()
    torch.manual_seed(123)
    loss, embeddings = cached_step(model, chunks, loss_of_embeddings)
    assert embeddings.shape == (2 * N, 5) and not embeddings.requires_grad and loss.grad_fn is None
    torch.testing.assert_close(loss, reference_loss, rtol=1e-10, atol=1e-10)
    for g, r in zip(_grads(model), _grads(reference_model)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
    assert torch.rand(()) == _after_reference_rng(reference_model, chunks)


def _after_reference_rng(model, chunks):
    """The random stream continues as after the uncached step."""
    torch.manual_seed(123)
    with torch.no_grad():
        for chunk in chunks:
            model(chunk)
    return torch.rand(())


def test_without_dropout_equals_the_full_batch_step():
    x_a, x_b = _views()
    loss_fn = losses.build("supcon")
    labels = torch.arange(N) % 3

    def loss_of_embeddings(z):
        return loss_fn(z[:N], z[N:], labels=labels)

    reference, model = _model().eval(), _model().eval()
    loss_of_embeddings(reference(torch.cat([x_a, x_b]))).backward()
    cached_step(model, split_inputs(torch.cat([x_a, x_b]), 7), loss_of_embeddings)
    for g, r in zip(_grads(model), _grads(reference)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_dict_inputs_and_loss_parameters_get_gradients():
    x_a, x_b = _views()
    inputs = {"features": torch.cat([x_a, x_b]), "mask": torch.ones(2 * N, dtype=DT), "name": "batch"}
    chunks = split_inputs(inputs, 5)
    assert [c["features"].shape[0] for c in chunks] == [5, 5, 5, 5, 4] and chunks[0]["name"] == "batch"
    log_scale = torch.zeros((), dtype=DT, requires_grad=True)
    loss_fn = losses.build("nt_xent")

    def loss_of_embeddings(z):
        return loss_fn(z[:N] * log_scale.exp(), z[N:]) + log_scale**2

    reference = _model()
    torch.manual_seed(7)
    _uncached(reference, chunks, loss_of_embeddings)
    reference_scale_grad = log_scale.grad.clone()
    log_scale.grad = None
    model = _model()
    torch.manual_seed(7)
    cached_step(model, chunks, loss_of_embeddings)
    torch.testing.assert_close(log_scale.grad, reference_scale_grad)
    for g, r in zip(_grads(model), _grads(reference)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_custom_backward_and_no_sync_hooks():
    x_a, x_b = _views()
    chunks = split_inputs(torch.cat([x_a, x_b]), 8)
    loss_fn = losses.build("nt_xent")
    entered = []

    class NoSync:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    model, reference = _model(), _model()
    torch.manual_seed(3)
    _uncached(reference, chunks, lambda z: 2.0 * loss_fn(z[:N], z[N:]))
    torch.manual_seed(3)
    cached_step(model, chunks, lambda z: loss_fn(z[:N], z[N:]), backward=lambda l: (2.0 * l).backward(), no_sync=NoSync)
    assert len(entered) == len(chunks) - 1
    for g, r in zip(_grads(model), _grads(reference)):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)


def test_errors_and_batch_dependent_layers():
    with pytest.raises(ValueError, match="chunk_size"):
        split_inputs(torch.zeros(4, 2), 0)
    with pytest.raises(ValueError, match="first dimension"):
        split_inputs({"a": torch.zeros(4), "b": torch.zeros(3)}, 2)
    with pytest.raises(ValueError, match="at least one chunk"):
        cached_step(lambda c: c, [], lambda z: z.sum())
    bn = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    assert batch_dependent_layers(bn) == ["1"]
    assert batch_dependent_layers(bn.eval()) == [] and batch_dependent_layers(_model()) == []
