"""Linear probe on pre-computed features (evaluation spec, section 1): presets, both methods, behaviour."""

import pytest
import torch

from mmcl.tasks import LINEAR_PRESETS, linear_probe


def data(n_classes: int, n: int, dim: int, spread: float, seed: int, random_labels: bool = False):
    """Gaussian clusters split in half (train, test); random labels make the task unlearnable."""
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(n_classes, dim, generator=g)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    x = centres[labels] + spread * torch.randn(n, dim, generator=g)
    if random_labels:
        labels = torch.randint(0, n_classes, (n,), generator=g)
    h = n // 2
    return x[:h], labels[:h], x[h:], labels[h:]


SEPARABLE = data(6, 1200, 16, 1.0, seed=0)
RANDOM = data(4, 1600, 16, 1.0, seed=1, random_labels=True)


def test_hcl_preset_table():
    hcl = LINEAR_PRESETS["hcl"]
    assert (hcl.optimizer, hcl.lr, hcl.weight_decay, hcl.epochs, hcl.batch_size) == ("adam", 1e-3, 1e-6, 100, 512)
    kcl = LINEAR_PRESETS["kcl"]
    assert (kcl.optimizer, kcl.lr, kcl.weight_decay, kcl.epochs, kcl.batch_size) == ("sgd", 30.0, 0.0, 100, 256)
    assert LINEAR_PRESETS["supcon"].lr is None and LINEAR_PRESETS["supcon"].batch_size == 512
    assert LINEAR_PRESETS["dystress"].optimizer is None and LINEAR_PRESETS["dystress"].epochs == 100


def test_separable_data_torch_default_preset():
    result = linear_probe(*SEPARABLE)
    assert result["top1"] >= 98.0 and result["top5"] == 100.0 and result["train_top1"] >= 98.0
    expected = {
        "method": "torch",
        "preset": "hcl",
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 1e-6,
        "epochs": 100,
        "batch_size": 512,
        "standardize": False,
        "seed": 0,
        "num_classes": 6,
        "n_train": 600,
        "n_test": 600,
    }
    assert {k: result[k] for k in expected} == expected
    assert "momentum" not in result and result["mode"].startswith("offline")


def test_separable_data_logreg():
    result = linear_probe(*SEPARABLE, method="logreg")
    assert result["top1"] >= 98.0 and result["top5"] == 100.0
    assert result["preset"] is None and result["converged"] and result["C"] == 1.0


@pytest.mark.parametrize("method, options", [("torch", {"epochs": 30}), ("logreg", {})])
def test_random_labels_give_chance(method, options):
    result = linear_probe(*RANDOM, method=method, **options)
    assert abs(result["top1"] - 25.0) < 7.0
    assert "top5" not in result


def test_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    first = linear_probe(*RANDOM, epochs=3, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert linear_probe(*RANDOM, epochs=3, seed=5) == first
    assert linear_probe(*RANDOM, epochs=3, seed=6)["train_loss"] != first["train_loss"]


def test_overrides_and_sgd_momentum_are_recorded():
    result = linear_probe(*SEPARABLE, optimizer="sgd", lr=0.1, epochs=5, batch_size=64, momentum=0.5)
    assert (result["optimizer"], result["lr"], result["epochs"], result["batch_size"]) == ("sgd", 0.1, 5, 64)
    assert result["momentum"] == 0.5 and result["preset"] == "hcl"
    supcon = linear_probe(*SEPARABLE, preset="supcon", lr=1.0, weight_decay=0.0, epochs=3)
    assert supcon["momentum"] == 0.9 and supcon["batch_size"] == 512 and supcon["top1"] >= 90.0


def test_standardisation_makes_the_probe_affine_invariant():
    x, y, xt, yt = SEPARABLE
    scale, shift = torch.linspace(0.1, 10, x.shape[1]), torch.linspace(-50, 50, x.shape[1])
    plain = linear_probe(x, y, xt, yt, standardize=True, epochs=5)
    moved = linear_probe(x * scale + shift, y, xt * scale + shift, yt, standardize=True, epochs=5)
    assert plain["standardize"] is True
    assert moved["top1"] == plain["top1"] and moved["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)


def test_class_absent_from_training_split():
    x, y, xt, yt = SEPARABLE
    keep = y != 5
    for method in ("torch", "logreg"):
        options = {"optimizer": "sgd", "lr": 0.1} if method == "torch" else {}  # converges in 100 epochs here
        result = linear_probe(x[keep], y[keep], xt, yt, method=method, **options)
        assert result["num_classes"] == 6
        assert result["top1"] == pytest.approx(100.0 * float((yt != 5).float().mean()), abs=3.0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"preset": "supcon"}, "does not record lr, weight_decay, epochs"),
        ({"preset": "dystress", "lr": 0.1, "weight_decay": 0.0}, "optimizer"),
        ({"preset": "online"}, "trainer"),
        ({"preset": "nope"}, "preset must be"),
        ({"method": "svm"}, "method"),
        ({"method": "logreg", "epochs": 3}, "epochs apply to method='torch'"),
        ({"optimizer": "lamb"}, "optimizer"),
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"num_classes": 3}, "num_classes"),
    ],
)
def test_errors(options, message):
    with pytest.raises(ValueError, match=message):
        linear_probe(*SEPARABLE, **options)


def test_mismatched_feature_widths():
    x, y, xt, yt = SEPARABLE
    with pytest.raises(ValueError, match="feature columns"):
        linear_probe(x, y, xt[:, :3], yt)
