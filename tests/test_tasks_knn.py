"""Weighted k-NN (evaluation spec, section 2): the fixture table, tie-breaking, presets, behaviour on clusters."""

import math

import numpy as np
import pytest
import torch

from mmcl.tasks import KNN_PRESETS, knn_accuracy, knn_predict

COSINES = torch.tensor([0.99, 0.90, 0.88, 0.0, -0.5], dtype=torch.float64)
BANK = torch.stack([COSINES, (1 - COSINES**2).sqrt()], 1)
BANK_LABELS = torch.tensor([0, 1, 1, 2, 0])
QUERY = torch.tensor([[1.0, 0.0]], dtype=torch.float64)

# spec 2.3: (k, T, class scores, prediction)
FIXTURE = [
    (3, 0.1, [19930.3704, 14737.3279, 0.0], 0),
    (3, 0.5, [7.2427, 11.8621, 0.0], 1),
    (5, 0.5, [7.6106, 11.8621, 1.0000], 1),
    (1, 0.5, [7.2427, 0.0, 0.0], 0),
]


def clusters(n_classes: int, per_class: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("k, temperature, expected, prediction", FIXTURE)
def test_fixture_scores_and_prediction(k, temperature, expected, prediction):
    scores = knn_predict(BANK, BANK_LABELS, QUERY, 3, k=k, temperature=temperature)
    assert scores.shape == (1, 3)
    assert scores[0].tolist() == pytest.approx(expected, abs=1e-3)
    assert scores.argmax(1).item() == prediction
    result = knn_accuracy(BANK, BANK_LABELS, QUERY, torch.tensor([prediction]), 3, k=k, temperature=temperature)
    assert result["top1"] == 100.0 and "top5" not in result
    wrong = (prediction + 1) % 3
    assert knn_accuracy(BANK, BANK_LABELS, QUERY, torch.tensor([wrong]), 3, k=k, temperature=temperature)["top1"] == 0


@pytest.mark.parametrize("k, temperature, expected, prediction", FIXTURE)
def test_fixture_in_float32_unnormalised_and_numpy(k, temperature, expected, prediction):
    scale = torch.tensor([[3.0], [0.5], [2.0], [7.0], [1.5]])
    bank = (BANK * scale).float().numpy()
    scores = knn_predict(bank, BANK_LABELS.numpy(), 4 * QUERY.float(), 3, k=k, temperature=temperature)
    assert scores.dtype == torch.float32
    assert scores[0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_chunking_does_not_change_scores():
    x, y = clusters(4, 30, 8, 1.0, seed=0)
    q = torch.randn(17, 8, generator=torch.Generator().manual_seed(1))
    full = knn_predict(x, y, q, 4, k=10)
    for chunk in (1, 5, 17, 100):
        torch.testing.assert_close(knn_predict(x, y, q, 4, k=10, chunk_size=chunk), full)


def test_ties_go_to_the_lower_class_index():
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query = torch.tensor([[1.0, 0.0]])
    scores = knn_predict(bank, torch.tensor([4, 2, 0]), query, 6, k=2)
    assert scores[0, 2] == scores[0, 4] and scores.argmax(1).item() == 2
    # top-5 with C = 6: classes 2 and 4 first, then the zero-score classes in index order 0, 1, 3
    assert knn_accuracy(bank, torch.tensor([4, 2, 0]), query, torch.tensor([3]), 6, k=2)["top5"] == 100.0
    assert knn_accuracy(bank, torch.tensor([4, 2, 0]), query, torch.tensor([5]), 6, k=2)["top5"] == 0.0
    assert knn_accuracy(bank, torch.tensor([4, 2, 0]), query, torch.tensor([4]), 6, k=2)["top1"] == 0.0


def test_separated_clusters_are_classified_perfectly():
    x, y = clusters(10, 60, 32, 0.1, seed=0)
    result = knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], num_classes=10)
    assert result["top1"] == 100.0 and result["top5"] == 100.0
    assert result["k"] == 200 and result["temperature"] == 0.1 and result["preset"] == "default"
    assert (result["num_classes"], result["n_train"], result["n_test"]) == (10, 300, 300)


def test_shuffled_labels_give_chance():
    x, y = clusters(10, 60, 32, 0.1, seed=0)
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    result = knn_accuracy(x[::2], shuffled[::2], x[1::2], y[1::2], num_classes=10, k=20)
    assert abs(result["top1"] - 10.0) < 7.0
    assert abs(result["top5"] - 50.0) < 15.0


def test_presets_and_overrides():
    assert KNN_PRESETS == {
        "default": {"k": 200, "temperature": 0.1},
        "hcl": {"k": 200, "temperature": 0.5},
        "lightly_small": {"k": 20, "temperature": 0.1},
    }
    x, y = clusters(3, 20, 4, 1.0, seed=2)
    small = knn_accuracy(x, y, x, y, preset="lightly_small")
    assert (small["k"], small["temperature"], small["preset"]) == (20, 0.1, "lightly_small")
    hcl = knn_accuracy(x, y, x, y, preset="hcl", temperature=0.2)
    assert (hcl["k"], hcl["temperature"]) == (60, 0.2)  # k capped at the bank size


def test_k_larger_than_bank_uses_the_whole_bank():
    torch.testing.assert_close(
        knn_predict(BANK, BANK_LABELS, QUERY, 3, k=500, temperature=0.5),
        knn_predict(BANK, BANK_LABELS, QUERY, 3, k=5, temperature=0.5),
    )


def test_small_temperature_does_not_overflow():
    scores = knn_predict(BANK.float(), BANK_LABELS, QUERY.float(), 3, k=3, temperature=0.01)
    assert bool(torch.isfinite(scores).all())
    assert scores[0, 0].item() == pytest.approx(math.exp(99), rel=1e-6)
    assert scores.argmax(1).item() == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: knn_predict(BANK, BANK_LABELS, torch.ones(1, 3), 3), "feature columns"),
        (lambda: knn_predict(BANK, BANK_LABELS[:4], QUERY, 3), "train_labels"),
        (lambda: knn_predict(BANK, BANK_LABELS, QUERY, 2), "num_classes"),
        (lambda: knn_predict(BANK, BANK_LABELS.float(), QUERY, 3), "integer"),
        (lambda: knn_predict(BANK, BANK_LABELS, QUERY, 3, k=0), "k must"),
        (lambda: knn_predict(BANK, BANK_LABELS, QUERY, 3, temperature=0), "temperature"),
        (lambda: knn_predict(BANK, BANK_LABELS, QUERY * math.nan, 3), "NaN"),
        (lambda: knn_accuracy(BANK, BANK_LABELS, QUERY, torch.tensor([0]), preset="x"), "preset"),
        (lambda: knn_accuracy(BANK, BANK_LABELS, QUERY, torch.tensor([3]), 3), "num_classes"),
        (lambda: knn_predict(BANK[0], BANK_LABELS, QUERY, 3), "shape"),
        (lambda: knn_predict(np.ones((5, 2)), BANK_LABELS, QUERY, 3, chunk_size=0), "chunk_size"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
