"""The blockwise path (:mod:`losses.blockwise`) against the dense path.

Every supporting loss configuration gives the same value, the same gradients with respect to ``z_a``,
``z_b`` (and hard negatives) and the same diagnostics in float64, with ragged blocks of 3 and 5 rows.
Also: automatic selection above ``MIN_ENTRIES``, the ``blockwise`` option, the fallbacks, no gradient
under ``torch.no_grad()``, the double-backward error and the queue layout over several calls.
"""

import warnings

import pytest
import torch

import mmcl.losses.blockwise.engine as engine
from mmcl import losses
from mmcl.losses.blockwise.function import BlockRunner
from mmcl.losses.blockwise.symmetric import SymmetricRunner

DT = torch.float64
N, D = 7, 5
LABELS = torch.tensor([3, -1, 3, 7, -1, -1, 3])  # unsorted, negative and non-contiguous class ids
NEGATIVES = torch.randn(N, D, generator=torch.Generator().manual_seed(9), dtype=DT)
DYSTRESS = {"rule": "dystress", "tau_min": 0.1, "tau_max": 0.3}

# (loss, options, call extras)
CASES = [
    ("nt_xent", {}, {}),
    ("nt_xent", {"temperature": 0.05}, {}),
    ("info_nce", {}, {}),
    ("info_nce", {"direction": "u->v"}, {}),
    ("info_nce", {"direction": "v->u"}, {"negatives": NEGATIVES}),
    ("info_nce", {"direction": "symmetric", "direction_reduction": "sum"}, {"negatives": NEGATIVES}),
    ("simcse", {}, {}),
    ("simcse", {}, {"negatives": NEGATIVES}),
    ("simcse", {"hard_negative_weight": 0.7, "symmetric": True}, {"negatives": NEGATIVES}),
    ("graphcl", {}, {}),
    ("dcl", {}, {}),
    ("dcl", {"negative_sum": "split"}, {}),
    ("dclw", {}, {}),
    ("dclw", {"negative_sum": "split", "direction_reduction": "sum", "batch_stat_scope": "global"}, {}),
    ("debiased", {}, {}),
    ("debiased", {"tau_plus": 0.6}, {}),
    ("hcl", {}, {}),
    ("hcl", {"detach_weights": True}, {}),
    ("hcl", {"beta": 3.0, "tau_plus": 0.0}, {}),
    ("hcl", {"beta": 200.0, "tau_plus": 0.1}, {}),
    ("hcl", {"beta": 0.5, "tau_plus": 0.2, "floor": False, "temperature": 2.0}, {}),
    ("supcon", {}, {"labels": LABELS}),
    ("supcon", {}, {}),
    ("supcon", {"contrast_mode": "one", "base_temperature": 0.07}, {"labels": LABELS}),
    ("supcon", {}, {"labels": torch.arange(N)}),
    ("supcon", {}, {"labels": torch.zeros(N, dtype=torch.long)}),
    ("scl", {}, {"labels": LABELS}),
    ("scl", {"positives": "augmentation", "nominal_negatives": False}, {"labels": LABELS}),
    ("h_scl", {}, {"labels": LABELS}),
    ("h_scl", {"beta": 1.0, "positives": "augmentation"}, {"labels": LABELS}),
    ("h_scl", {"detach_weights": True, "nominal_negatives": False}, {"labels": LABELS}),
    ("margin", {"m2": 0.1, "m3": 0.1}, {}),
    ("margin", {"m1": 1.2, "easy_margin_guard": True}, {}),
    ("margin", {"mode": "gradient_only", "positive_weight": 1.5, "angle_margin": 0.1, "angle_normalise": True}, {}),
    ("margin", {"mode": "gradient_only", "logit_margin": 0.1, "logit_angle_margin": 0.2}, {}),
    ("margin", {"m2": 0.1, "layout": {"name": "cross_view", "direction": "symmetric"}}, {}),
    ("macl", {}, {}),
    ("macl", {"reweight": False}, {}),
    ("macl", {"layout": {"name": "cross_view", "direction": "symmetric"}, "direction_reduction": "sum"}, {}),
    ("macl", {"temperature_form": "exponential", "alpha": 2.0}, {}),
    ("macl", {"alpha": 1.0, "A0": 1.0, "tau_floor": 0.01}, {}),
    ("dystress", {}, {}),
    ("dystress", {"shape": "shifted", "tau_min": 0.1}, {}),
    ("dystress", {"shape": "cosconst"}, {}),
    ("dystress", {"layout": {"name": "cross_view"}}, {}),
    ("dhel", {}, {}),
    ("dhel", {"include_augs": False}, {}),
    ("dhel", {"temperature": {"rule": "macl", "temperature": 0.3}}, {}),
    ("dhel", {"temperature": DYSTRESS}, {}),
    ("dcl", {"temperature": DYSTRESS, "negative_sum": "split"}, {}),
    ("hcl", {"temperature": DYSTRESS}, {}),
    ("supcon", {"temperature": DYSTRESS}, {"labels": LABELS}),
    ("h_scl", {"temperature": DYSTRESS}, {"labels": LABELS}),
    ("h_scl", {"temperature": DYSTRESS, "positives": "augmentation"}, {"labels": LABELS}),
]
IDS = [f"{name}-{options}-{sorted(extras)}" for name, options, extras in CASES]


def _inputs(n=N, d=D, seed=1, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g, dtype=DT)
    z_b = z_a + 0.7 * torch.randn(n, d, generator=g, dtype=DT)
    z_a = z_a * torch.exp(torch.randn(n, 1, generator=g, dtype=DT))
    return z_a.to(dtype), z_b.to(dtype)


def _run(loss_fn, z_a, z_b, extras):
    """Loss, gradients of every floating input and diagnostics of one call."""
    leaves = [z_a.clone().requires_grad_(), z_b.clone().requires_grad_()]
    kwargs = {}
    for key, value in extras.items():
        if value.is_floating_point():
            value = value.clone().requires_grad_()
            leaves.append(value)
        kwargs[key] = value
    value = loss_fn(leaves[0], leaves[1], **kwargs)
    grads = torch.autograd.grad(value, leaves)
    return value.detach(), grads, dict(loss_fn.diagnostics)


def _assert_same(dense, blocked, tol=1e-9):
    (v0, g0, d0), (v1, g1, d1) = dense, blocked
    torch.testing.assert_close(v1, v0, rtol=tol, atol=tol)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    assert set(d1) == set(d0)
    for key in d0:
        assert d1[key].dtype == d0[key].dtype, key
        torch.testing.assert_close(d1[key], d0[key], rtol=tol, atol=tol, msg=key)


@pytest.mark.parametrize("block_size", [3, 5])
@pytest.mark.parametrize("name,options,extras", CASES, ids=IDS)
def test_blockwise_equals_dense(name, options, extras, block_size):
    z_a, z_b = _inputs()
    dense = _run(losses.build(name, blockwise=False, **options), z_a, z_b, extras)
    with _count_blockwise_calls() as calls:
        blocked = _run(losses.build(name, blockwise=True, block_size=block_size, **options), z_a, z_b, extras)
    assert calls == [True], "the blockwise path was not taken"
    _assert_same(dense, blocked)


@pytest.mark.parametrize(
    "name,options,extras",
    [
        ("nt_xent", {"temperature": 0.1}, {}),
        ("supcon", {}, {"labels": torch.arange(40) % 4}),
        ("hcl", {}, {}),
        ("h_scl", {"beta": 1.0}, {"labels": torch.arange(40) % 3}),
        ("dhel", {}, {}),
        ("macl", {}, {}),
        ("dystress", {}, {}),
    ],
)
def test_blockwise_equals_dense_larger_batch_default_blocks(name, options, extras, monkeypatch):
    monkeypatch.setattr(engine, "BLOCK_ENTRIES", 600)  # several blocks of about 600 / 80 rows
    monkeypatch.setattr(engine, "TILE_ROWS", 24)  # several tiles of the self-similarity path
    z_a, z_b = _inputs(n=40, d=9, seed=3)
    dense = _run(losses.build(name, blockwise=False, **options), z_a, z_b, extras)
    blocked = _run(losses.build(name, blockwise=True, **options), z_a, z_b, extras)
    _assert_same(dense, blocked)


def test_float32_small_temperature_matches_dense():
    z_a, z_b = _inputs(n=64, d=16, seed=4, dtype=torch.float32)
    for name in ("nt_xent", "supcon", "hcl", "dhel", "macl", "dystress"):
        options = {} if name in ("macl", "dystress") else {"temperature": 0.01}
        extras = {"labels": torch.arange(64) % 5} if name == "supcon" else {}
        dense = _run(losses.build(name, blockwise=False, **options), z_a, z_b, extras)
        blocked = _run(losses.build(name, blockwise=True, block_size=7, **options), z_a, z_b, extras)
        assert torch.isfinite(blocked[0]) and all(torch.isfinite(g).all() for g in blocked[1])
        torch.testing.assert_close(blocked[0], dense[0], rtol=1e-4, atol=1e-4)
        for a, b in zip(dense[1], blocked[1]):
            torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.05, 0.026])  # 2 / 0.026 is just inside float32's one-shift range
def test_float32_symmetric_runner_matches_the_float64_loss(temperature):
    z_a, z_b = _inputs(n=64, d=16, seed=4)
    reference = _run(losses.build("nt_xent", blockwise=False, temperature=temperature), z_a, z_b, {})
    with _count_blockwise_calls() as calls:
        fn = losses.build("nt_xent", blockwise=True, block_size=7, temperature=temperature)
        value, grads, _ = _run(fn, z_a.float(), z_b.float(), {})
    assert calls.runners == ["SymmetricRunner"]
    torch.testing.assert_close(value.double(), reference[0], rtol=1e-6, atol=1e-6)
    scale = max(g.abs().max() for g in reference[1])
    for a, b in zip(reference[1], grads):
        torch.testing.assert_close(b.double(), a, rtol=0, atol=1e-4 * float(scale))


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_the_float32_loss(half):
    z_a, z_b = (z.to(half) for z in _inputs(n=16, d=8, seed=5))
    fn = losses.build("nt_xent", blockwise=True, block_size=5)
    value = fn(z_a.requires_grad_(), z_b)
    assert value.dtype == torch.float32
    reference = losses.build("nt_xent", blockwise=False)(z_a.detach().float(), z_b.float())
    assert value.item() == pytest.approx(reference.item(), rel=1e-6, abs=1e-6)
    value.backward()
    assert z_a.grad.dtype == half


# ---------------------------------------------------------------------------------------------------
# Selection and options


class _Calls(list):
    """Whether each call of the blockwise engine formed gradients; ``runners``: which runner it took."""

    def __init__(self):
        super().__init__()
        self.runners = []


class _count_blockwise_calls:
    """Records each call of the blockwise engine (either runner)."""

    def __enter__(self):
        self.calls = _Calls()
        self.originals = {cls: cls.run for cls in (BlockRunner, SymmetricRunner)}
        for cls, original in self.originals.items():

            def run(runner, tensors, need, original=original):
                self.calls.append(any(need))
                self.calls.runners.append(type(runner).__name__)
                return original(runner, tensors, need)

            cls.run = run
        return self.calls

    def __exit__(self, *exc):
        for cls, original in self.originals.items():
            cls.run = original


@pytest.mark.parametrize(
    "name,options,extras,dtype,runner",
    [
        ("nt_xent", {}, {}, DT, "SymmetricRunner"),
        ("macl", {}, {}, DT, "SymmetricRunner"),
        ("supcon", {}, {}, DT, "SymmetricRunner"),  # no labels: NT-Xent's table
        ("supcon", {}, {"labels": LABELS}, DT, "BlockRunner"),
        ("hcl", {}, {}, DT, "SymmetricRunner"),
        ("dcl", {}, {}, DT, "SymmetricRunner"),
        ("hcl", {"beta": 3.0}, {}, DT, "BlockRunner"),  # a tilt other than 1 needs two exponentials
        ("dystress", {}, {}, DT, "SymmetricRunner"),
        ("hcl", {"temperature": DYSTRESS}, {}, DT, "BlockRunner"),  # per-entry temperatures: fused form only
        ("dcl", {"negative_sum": "split"}, {}, DT, "BlockRunner"),
        ("hcl", {}, {}, torch.float32, "SymmetricRunner"),
        # the tilt squares e: 4 / 0.05 > 0.9 * 87.3 in float32
        ("hcl", {"temperature": 0.05}, {}, torch.float32, "BlockRunner"),
        ("info_nce", {}, {}, DT, "BlockRunner"),  # u against v: not a self-similarity table
        ("nt_xent", {"temperature": 0.05}, {}, torch.float32, "SymmetricRunner"),
        # one shift for the table would underflow float32: 2 / 0.01 > 0.9 * 87.3
        ("nt_xent", {"temperature": 0.01}, {}, torch.float32, "BlockRunner"),
        ("nt_xent", {"temperature": 0.01}, {}, DT, "SymmetricRunner"),
    ],
)
def test_self_similarity_tables_take_the_symmetric_runner(name, options, extras, dtype, runner):
    z_a, z_b = _inputs(dtype=dtype)
    with _count_blockwise_calls() as calls:
        _run(losses.build(name, blockwise=True, block_size=3, **options), z_a, z_b, extras)
    assert calls.runners == [runner]


def test_automatic_selection_above_the_threshold(monkeypatch):
    monkeypatch.setattr(engine, "MIN_ENTRIES", 4 * 10 * 10)  # 2B x 2G entries with B = G = 10
    for n, expected in ((9, []), (10, [True])):
        with _count_blockwise_calls() as calls:
            losses.build("nt_xent")(*(z.requires_grad_() for z in _inputs(n=n)))
        assert calls == expected, n


def test_default_threshold_picks_the_blockwise_path_for_large_batches():
    assert engine.MIN_ENTRIES <= 4 * 256 * 256
    with _count_blockwise_calls() as calls:
        losses.build("hcl")(*_inputs(n=256, d=8))
        losses.build("hcl")(*_inputs(n=8, d=8))
    assert len(calls) == 1


def test_option_forces_either_path(monkeypatch):
    monkeypatch.setattr(engine, "MIN_ENTRIES", 0)
    with _count_blockwise_calls() as calls:
        losses.build("nt_xent", blockwise=False)(*_inputs())
    assert calls == []
    monkeypatch.setattr(engine, "MIN_ENTRIES", 1 << 40)
    with _count_blockwise_calls() as calls:
        losses.build("nt_xent", blockwise=True)(*_inputs())
    assert calls == [False]


@pytest.mark.parametrize("bad", [{"blockwise": "yes"}, {"block_size": 0}, {"block_size": 2.5}, {"block_size": True}])
def test_invalid_options_raise(bad):
    with pytest.raises(ValueError, match="block"):
        losses.build("nt_xent", **bad)


def test_every_softmax_loss_takes_the_options():
    for name in losses.available():
        if name in ("kcl", "align_uniform"):
            continue
        assert {"blockwise", "block_size"} <= set(losses.options(name)), name
        assert losses.options(name)["blockwise"] is None


def test_unsupported_configuration_warns_once_and_uses_the_dense_path():
    z_a, z_b = _inputs()
    fn = losses.build("dystress", detach_temperature=False, blockwise=True)
    with _count_blockwise_calls() as calls, pytest.warns(UserWarning, match="detach_temperature=False"):
        value = fn(z_a, z_b)
    assert calls == []
    assert value.item() == losses.build("dystress", detach_temperature=False)(z_a, z_b).item()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(z_a, z_b)  # once per loss object


def test_positive_mask_falls_back_to_the_dense_path():
    z_a, z_b = _inputs()
    mask = torch.eye(N, dtype=torch.bool)
    mask[0, 1] = mask[1, 0] = True
    with _count_blockwise_calls() as calls, pytest.warns(UserWarning, match="positive_mask"):
        value = losses.build("supcon", blockwise=True)(z_a, z_b, positive_mask=mask)
    assert calls == []
    assert value.item() == losses.build("supcon")(z_a, z_b, positive_mask=mask).item()


# ---------------------------------------------------------------------------------------------------
# Autograd behaviour


@pytest.mark.parametrize("name,extras", [("hcl", {}), ("supcon", {"labels": LABELS})])  # both runners
def test_no_gradient_is_formed_without_autograd(name, extras):
    z_a, z_b = (z.requires_grad_() for z in _inputs())
    fn = losses.build(name, blockwise=True, block_size=3)
    with _count_blockwise_calls() as calls:
        with torch.no_grad():
            value = fn(z_a, z_b, **extras)
        fn(z_a.detach(), z_b.detach(), **extras)  # no input requires grad
        fn(z_a, z_b.detach(), **extras)
    assert calls == [False, False, True]
    assert len(set(calls.runners)) == 1
    assert value.grad_fn is None
    reference = losses.build(name, blockwise=False)(z_a, z_b, **extras)
    assert value.item() == pytest.approx(reference.item(), abs=1e-12)


def test_gradient_only_for_inputs_that_need_it():
    z_a, z_b = _inputs()
    z_a.requires_grad_()
    losses.build("nt_xent", blockwise=True, block_size=3)(z_a, z_b).backward()
    reference = z_a.detach().clone().requires_grad_()
    losses.build("nt_xent", blockwise=False)(reference, z_b).backward()
    torch.testing.assert_close(z_a.grad, reference.grad)


def test_incoming_gradient_scales_the_result():
    z_a, z_b = (z.requires_grad_() for z in _inputs())
    (3.0 * losses.build("supcon", blockwise=True, block_size=3)(z_a, z_b, labels=LABELS)).backward()
    reference = [z.detach().clone().requires_grad_() for z in (z_a, z_b)]
    (3.0 * losses.build("supcon", blockwise=False)(*reference, labels=LABELS)).backward()
    torch.testing.assert_close(z_a.grad, reference[0].grad)
    torch.testing.assert_close(z_b.grad, reference[1].grad)


def test_double_backward_raises_a_clear_error():
    z_a, z_b = (z.requires_grad_() for z in _inputs())
    value = losses.build("nt_xent", blockwise=True)(z_a, z_b)
    with pytest.raises(RuntimeError, match="double backward.*blockwise=False"):
        torch.autograd.grad(value, z_a, create_graph=True)


# ---------------------------------------------------------------------------------------------------
# Stateful layout and errors


@pytest.mark.parametrize("name", ["nt_xent", "macl", "dystress"])
def test_queue_layout_over_several_calls(name):
    layout = {"name": "queue", "size": 9, "dim": D}
    dense = losses.build(name, layout=layout, blockwise=False)
    blocked = losses.build(name, layout=layout, blockwise=True, block_size=3)
    for step in range(4):
        z_a, z_b = _inputs(seed=10 + step)
        if step == 3:
            dense.eval(), blocked.eval()
        _assert_same(_run(dense, z_a, z_b, {}), _run(blocked, z_a, z_b, {}))
        torch.testing.assert_close(blocked.layout.queue, dense.layout.queue)
        assert int(blocked.layout.filled) == int(dense.layout.filled)


@pytest.mark.parametrize(
    "name,options,labels",
    [
        ("h_scl", {}, torch.zeros(N, dtype=torch.long)),  # every anchor without negatives
        ("nt_xent", {}, None),  # one pair
    ],
)
def test_errors_are_the_dense_path_errors(name, options, labels):
    n = 1 if labels is None else N
    z_a, z_b = _inputs(n=n)
    extras = {} if labels is None else {"labels": labels}
    with pytest.raises(ValueError) as dense_error:
        losses.build(name, blockwise=False, **options)(z_a, z_b, **extras)
    with pytest.raises(ValueError) as blocked_error:
        losses.build(name, blockwise=True, **options)(z_a, z_b, **extras)
    assert str(blocked_error.value) == str(dense_error.value)
