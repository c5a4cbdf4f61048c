"""More than two views in training: the engine passes every view to the loss, and images get multi-crop views
(``data.views``: groups of crops of their own size and scale, the backbone run once per size,
``data.local_to_global_only``'s SwAV/DINO rule)."""

import json

import pytest
import torch
import torch.nn.functional as F

from mmcl import losses
from mmcl.contract import TrainBatch, ViewGroups
from mmcl.engine.config import load_config
from mmcl.engine.evaluate import evaluate_run
from mmcl.engine.gradcache import split_inputs
from mmcl.engine.trainer import embeddings_for_loss, pretrain
from mmcl.modalities.vision.adapter import VisionAdapter, VisionDataConfig, VisionModelConfig
from mmcl.modalities.vision.transforms import BatchViews, view_settings
from tests.reference_code import SupConLoss

MULTI_CROP = [
    {"count": 2, "size": 8},
    {"count": 3, "size": 4, "crop_min_scale": 0.1, "crop_max_scale": 0.4},
]


def vision(**data) -> VisionAdapter:
    model = VisionModelConfig(backbone="small_cnn", backbone_options={"channels": [8, 16]}, head_dim=16)
    return VisionAdapter(model, VisionDataConfig(dataset="digits", **data))


def config(**data) -> dict:
    return {
        "modality": "vision",
        "model": {"backbone": "small_cnn", "backbone_options": {"channels": [8, 16]}, "head_dim": 16},
        "data": {"dataset": "digits", "train_subset": 256, "test_subset": 120, **data},
        "loss": {"name": "nt_xent", "temperature": 0.5},
        "optim": {"name": "adamw", "lr": 3e-3},
        "train": {"max_steps": 4, "batch_size": 32, "log_every": 1, "cpu": True, "progress_bar": False},
        "eval": {"tasks": ["knn"]},
    }


def first_record(run_dir) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


@pytest.mark.parametrize("with_labels", [False, True])
def test_the_engine_gives_every_view_to_the_loss_as_supcontrast_defines_it(with_labels):
    """The loss of a view-major output of V = 4 views equals SupContrast's SupConLoss on features (N, V, d)."""
    torch.manual_seed(0)
    n, views = 6, 4
    output = torch.randn(views * n, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 2, 1, 2]) if with_labels else None
    batch = TrainBatch(inputs=None, n_views=views, labels=labels)
    loss = losses.build("supcon" if with_labels else "nt_xent", temperature=0.3)(
        **embeddings_for_loss(output, batch), labels=labels
    )
    features = F.normalize(output, dim=1).view(views, n, 5).transpose(0, 1)  # (N, V, d)
    expected = SupConLoss(temperature=0.3, base_temperature=0.3)(features, labels)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, output)
    (expected_grad,) = torch.autograd.grad(expected, output)
    torch.testing.assert_close(grad, expected_grad)


def test_local_to_global_only_makes_the_global_views_the_only_candidates():
    torch.manual_seed(1)
    output = torch.randn(5 * 4, 8, dtype=torch.float64)
    nt_xent = losses.build("nt_xent", temperature=0.5)
    mixed = TrainBatch(inputs=None, n_views=5, global_views=2)
    views = list(output.chunk(5))
    assert nt_xent(**embeddings_for_loss(output, mixed)) == nt_xent(*views, global_views=2)
    assert nt_xent(**embeddings_for_loss(output, mixed)) != nt_xent(*views)


def test_a_four_view_run_contrasts_all_views_and_a_pair_loss_is_refused_before_training(tmp_path):
    run = tmp_path / "four"
    pretrain(load_config(config(n_views=4)), run)
    record = first_record(run)
    assert record["n_anchors"] == 4 * 32 and record["pos_per_row_mean"] == 3
    pair_only = config(n_views=3) | {"loss": {"name": "info_nce"}}
    with pytest.raises(ValueError, match=r"3 views per instance, and loss.name=info_nce takes 2.*nt_xent"):
        pretrain(load_config(pair_only), tmp_path / "refused")
    assert not list((tmp_path / "refused").rglob("*.pt"))
    monitored = config(n_views=3) | {"train": {**config()["train"], "monitor_losses": ["dhel"]}}
    with pytest.raises(ValueError, match="train.monitor_losses: dhel takes 2"):
        pretrain(load_config(monitored), tmp_path / "monitored")


@pytest.mark.parametrize("augment_on", ["device", "loader"])
def test_multi_crop_batches_group_the_views_by_size(augment_on):
    adapter = vision(views=MULTI_CROP, local_to_global_only=True, augment_on=augment_on, train_subset=40)
    assert adapter.n_views == 5
    data = adapter.train_dataset()
    torch.manual_seed(0)
    batch = adapter.augment_batch(adapter.collate_train([data[i] for i in range(6)]))
    assert batch.n_views == 5 and batch.global_views == 2 and batch.labels.shape == (6,)
    assert isinstance(batch.inputs, ViewGroups)
    assert [tuple(group.shape) for group in batch.inputs] == [(12, 1, 8, 8), (18, 1, 4, 4)]
    assert not torch.equal(batch.inputs[1][:6], batch.inputs[1][6:12])  # each local crop drawn anew


def test_the_backbone_runs_once_per_crop_size_and_the_head_on_all_rows():
    adapter = vision(views=MULTI_CROP)
    encoder = adapter.build_encoder().eval()
    calls = []
    encoder.backbone.register_forward_hook(lambda module, args, out: calls.append(tuple(args[0].shape)))
    groups = ViewGroups([torch.randn(4, 1, 8, 8), torch.randn(6, 1, 4, 4)])
    with torch.no_grad():
        output = encoder(groups)
        apart = torch.cat([encoder(groups[0]), encoder(groups[1])])
    assert calls[0:2] == [(4, 1, 8, 8), (6, 1, 4, 4)]
    assert output.shape == (10, 16)
    torch.testing.assert_close(output, apart)
    chunks = split_inputs(groups, 3)  # GradCache: each group chunked on its own, in order
    assert [tuple(c.shape) for c in chunks] == [(3, 1, 8, 8), (1, 1, 8, 8), (3, 1, 4, 4), (3, 1, 4, 4)]


def test_local_crops_are_drawn_within_their_scale_range():
    import kornia.augmentation as K

    settings = view_settings("32", size=16, crop_min_scale=0.05, crop_max_scale=0.14)
    crop = next(step for step in BatchViews(settings, 3, (0.0,) * 3, (1.0,) * 3).steps
                if isinstance(step, K.RandomResizedCrop))  # fmt: skip
    corners = crop.generate_parameters(torch.Size([4000, 3, 32, 32]))["src"]
    area = (corners[:, 1, 0] - corners[:, 0, 0] + 1) * (corners[:, 2, 1] - corners[:, 1, 1] + 1) / 32**2
    assert area.min() >= 0.05 - 0.02 and area.max() <= 0.14 + 0.02 and area.mean() < 0.14


@pytest.mark.parametrize(
    "data, message",
    [
        ({"views": MULTI_CROP, "n_views": 3}, "data.n_views=3 and data.views are both set"),
        ({"local_to_global_only": True}, "local_to_global_only=true needs multi-crop's data.views"),
        ({"views": [{"count": 2, "sizes": 8}]}, r"data.views\[0\]=.*not \['sizes'\]"),
        ({"views": [{"count": 0}]}, r"data.views\[0\].count=0 must be a positive integer"),
        ({"views": [{"count": 1}]}, "describes 1 view; contrast needs 2"),
        ({"views": [{"count": 2, "crop_min_scale": 0.5, "crop_max_scale": 0.2}]}, r"crop_max_scale=0.2 must be in"),
        ({"views": [{"count": 1}, {"count": 3, "size": 4}], "local_to_global_only": True}, "at least 2 and fewer"),
        ({"views": MULTI_CROP, "augment": "none"}, "data.augment=none draws no crops"),
    ],
)
def test_multi_crop_settings_are_checked(data, message):
    with pytest.raises(ValueError, match=message):
        vision(**data).crop_groups()


@pytest.mark.parametrize("augment_on", ["device", "loader"])
def test_multi_crop_trains_and_evaluates_end_to_end_on_digits(augment_on, tmp_path):
    run = tmp_path / augment_on
    pretrain(load_config(config(views=MULTI_CROP, local_to_global_only=True, augment_on=augment_on)), run)
    record = first_record(run)
    # 5 views of 32 images; global rows have 1 positive, local rows 2 (both global crops); 2 x 31 negatives each
    assert record["n_anchors"] == 5 * 32 and record["pos_per_row_mean"] == pytest.approx((2 * 1 + 3 * 2) / 5)
    assert record["neg_per_row_min"] == 2 * 31
    assert 0 <= evaluate_run(run)["knn"]["top1"] <= 100
