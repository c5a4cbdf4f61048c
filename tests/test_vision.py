"""The vision modality: backbones, SimCLR views, datasets from local files, and the adapter contract."""

import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmcl.contract.adapter import TrainBatch
from mmcl.modalities import modality_class
from mmcl.modalities.vision import VIEW_PRESETS, build_backbone, build_head, load_source, simclr_view
from mmcl.modalities.vision.adapter import VisionAdapter, VisionDataConfig, VisionModelConfig
from mmcl.modalities.vision.transforms import view_settings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


@pytest.mark.parametrize(
    "name, channels, size, options, dim",
    [
        ("small_cnn", 1, 8, {"channels": [4, 8]}, 8),
        ("resnet18", 1, 32, {"cifar_stem": True}, 512),
        ("resnet18", 3, 64, {}, 512),
        ("vit_tiny", 3, 32, {"image_size": 32, "num_layers": 2}, 192),
        ("vit_tiny", 1, 28, {"image_size": 28, "num_layers": 1, "hidden_dim": 24, "num_heads": 2, "mlp_dim": 32}, 24),
    ],
)
def test_backbones_map_images_to_features(name, channels, size, options, dim):
    backbone, feature_dim = build_backbone(name, in_channels=channels, **options)
    assert feature_dim == dim
    assert backbone(torch.randn(2, channels, size, size)).shape == (2, dim)


def test_cifar_stem_keeps_small_images_spatial():
    stem, _ = build_backbone("resnet18", in_channels=3, cifar_stem=True)
    assert (
        stem.conv1.kernel_size == (3, 3) and stem.conv1.stride == (1, 1) and isinstance(stem.maxpool, torch.nn.Identity)
    )
    default, _ = build_backbone("resnet18")
    assert default.conv1.kernel_size == (7, 7)


def test_projection_head_is_simclr_mlp():
    head = build_head(512, 512, 128)
    assert [type(m).__name__ for m in head] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert head(torch.randn(4, 512)).shape == (4, 128)
    assert isinstance(build_head(512, 512, 128, num_layers=0), torch.nn.Identity)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("resnet34", {}, "unknown image backbone 'resnet34' (model.backbone); available: ["),
        (
            "resnet18",
            {"widht": 3},
            "unknown option(s) ['widht'] for backbone 'resnet18' in model.backbone_options; valid: ['cifar_stem']",
        ),
        ("vit_tiny", {}, "needs image_size"),
        ("vit_tiny", {"image_size": 30, "patch_size": 4}, "must divide image_size=30"),
    ],
)
def test_backbone_errors(name, options, message):
    with pytest.raises(ValueError) as error:
        build_backbone(name, **options)
    assert message in str(error.value)


@pytest.mark.parametrize("preset", sorted(VIEW_PRESETS))
def test_views_have_the_preset_size_and_are_seeded(preset):
    settings = VIEW_PRESETS[preset]
    image = torch.randint(0, 256, (3, settings.size + 4, settings.size + 4), dtype=torch.uint8)
    view = simclr_view(settings, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    first = view(image)
    torch.manual_seed(0)
    assert first.dtype == torch.float32 and first.shape == (3, settings.size, settings.size)
    assert torch.equal(view(image), first)
    assert not torch.equal(view(image), first)


def test_grayscale_views_skip_colour_only_steps():
    view = simclr_view(VIEW_PRESETS["32"], 1, (0.5,), (0.25,))
    names = [type(t).__name__ for t in view.transforms]
    assert "RandomGrayscale" not in names
    assert view(torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8)).shape == (1, 32, 32)


def test_view_overrides_are_checked():
    assert view_settings("32", crop_min_scale=0.2).crop_min_scale == 0.2
    with pytest.raises(ValueError, match="data.flip_prob=2"):
        view_settings("32", flip_prob=2)
    with pytest.raises(ValueError, match="choose one of"):
        view_settings("31")


def adapter(**data) -> VisionAdapter:
    return VisionAdapter(
        VisionModelConfig(backbone="small_cnn", backbone_options={"channels": [4, 8]}, head_dim=8),
        VisionDataConfig(**data),
    )


def test_digits_adapter_contract():
    vision = adapter(train_subset=20, test_subset=10, augment_on="loader")
    assert modality_class("vision") is VisionAdapter and vision.has_labels
    train = vision.train_dataset()
    items = [train[i] for i in range(4)]
    batch = vision.collate_train(items)
    assert isinstance(batch, TrainBatch) and batch.n_views == 2 and not batch.has_negatives
    assert batch.inputs.shape == (8, 1, 8, 8) and batch.labels.tolist() == [item[1] for item in items]
    # view-major: the B first views, then the B second views
    assert torch.equal(batch.inputs[1], items[1][0][0]) and torch.equal(batch.inputs[5], items[1][0][1])
    encoder = vision.build_encoder()
    assert encoder(batch.inputs).shape == (8, 8) and encoder.features(batch.inputs).shape == (8, 8)
    splits = vision.eval_datasets()
    assert (len(splits["train"]), len(splits["test"])) == (20, 10)
    inputs, labels = vision.collate_eval([splits["test"][i] for i in range(3)])
    assert inputs.shape == (3, 1, 8, 8) and labels.dtype == torch.int64


def test_augment_none_gives_equal_views_and_equals_the_eval_transform():
    vision = adapter(augment="none", train_subset=5)
    views, label = vision.train_dataset()[0]
    evaluated, same_label = vision.eval_datasets()["train"][0]
    assert torch.equal(views[0], views[1]) and torch.equal(views[0], evaluated) and label == same_label


def test_digits_source_is_the_stratified_sklearn_split():
    source = load_source("digits", root="unused")
    assert (len(source.eval_train), len(source.eval_test)) == (1437, 360)
    image, label = source.eval_test[0]
    assert image.dtype == torch.uint8 and image.shape == (1, 8, 8) and 0 <= label < 10
    assert torch.bincount(source.eval_test.labels).min() >= 35


def test_dataset_errors_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"unknown image dataset 'imagenet' \(data.dataset\); available: \['cifar10'"):
        load_source("imagenet", root=str(tmp_path))
    with pytest.raises(ValueError, match="data.root is not set: the 'MNIST' dataset reads its files"):
        load_source("mnist", root=None)
    with pytest.raises(FileNotFoundError, match="set data.root"):
        load_source("mnist", root=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="set data.root"):
        load_source("imagefolder", root=str(tmp_path))
    with pytest.raises(ValueError, match="local_to_global_only=true needs"):
        adapter(n_views=3, augment="none", local_to_global_only=True)


def test_image_folder_from_zip_archives_is_unpacked_into_the_cache(tmp_path):
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    for split in ("train", "test"):
        with zipfile.ZipFile(source_dir / f"toy_{split}.zip", "w") as archive:
            for name, colour in colours.items():
                for i in range(3):
                    path = tmp_path / f"{split}_{name}_{i}.png"
                    Image.new("RGB", (12, 10), colour).save(path)
                    archive.write(path, f"toy/{split}/{name}/{i}.png")
    vision = VisionAdapter(
        VisionModelConfig(backbone="small_cnn", backbone_options={"channels": [4]}),
        VisionDataConfig(dataset="imagefolder", root=str(source_dir), cache_dir=str(tmp_path / "cache"), image_size=8),
    )
    splits = vision.eval_datasets()
    image, label = splits["test"][0]
    assert (
        image.shape == (3, 8, 8)
        and len(splits["train"]) == 6
        and sorted({splits["train"][i][1] for i in range(6)}) == [0, 1]
    )
    assert sorted(p.name for p in source_dir.iterdir()) == ["toy_test.zip", "toy_train.zip"]  # source untouched
    batch = vision.collate_train([vision.train_dataset()[i] for i in range(2)])
    assert batch.inputs.shape == (4, 3, 8, 8)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_datasets_read_gzip_files_without_writing_next_to_them(name, folder, tmp_path):
    if not (SHARED / folder / "raw").is_dir():
        pytest.skip(f"{SHARED / folder} is absent (the team's shared benchmark data)")
    before = sorted(p.name for p in (SHARED / folder / "raw").iterdir())
    source = load_source(name, root=str(SHARED), cache_dir=str(tmp_path))
    assert (len(source.eval_train), len(source.eval_test)) == (60000, 10000)
    assert torch.bincount(source.eval_test.labels).tolist() == (
        [1000] * 10 if name == "fashion_mnist" else [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    )
    mean = source.eval_train.images.float().mean().item() / 255
    assert mean == pytest.approx(source.mean[0], abs=1e-3)
    assert sorted(p.name for p in (SHARED / folder / "raw").iterdir()) == before


# ---------------------------------------------------------------- views on the device (kornia) vs per item


def quadrants(size: int = 32) -> torch.Tensor:
    """A uint8 RGB image whose four quadrants have distinct colours: a view's colour means reveal its crop and flip."""
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    half = size // 2
    image[0, :half, :half], image[1, :half, half:], image[2, half:, :half] = 255, 255, 255
    image[:, half:, half:] = 128
    return image


def views_of(pipeline: str, settings, image: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    from mmcl.modalities.vision.transforms import BatchViews

    torch.manual_seed(seed)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if pipeline == "device":
        return BatchViews(settings, 3, mean, std)(image.expand(count, -1, -1, -1).contiguous())
    view = simclr_view(settings, 3, mean, std)
    return torch.stack([view(image) for _ in range(count)])


@pytest.mark.parametrize(
    "preset, options",
    [
        ("32", {"solarize_prob": 0.2}),
        ("96", {"solarize_prob": 0.2}),
        ("32", {"jitter_prob": 0.0, "grayscale_prob": 0.0}),
    ],
    ids=["cifar", "stl", "geometry-only"],
)
def test_device_views_have_the_distribution_of_the_per_item_views(preset, options):
    """Two-sample Kolmogorov-Smirnov tests on fixed inputs: per channel, the view's mean and standard deviation
    (crop position and area, flip, jitter, grayscale, blur all move them) agree between the pipelines."""
    from scipy.stats import ks_2samp

    settings = view_settings(preset, size=32, **options)
    device, loader = (views_of(p, settings, quadrants(), 1500) for p in ("device", "loader"))
    assert device.shape == loader.shape == (1500, 3, 32, 32)
    for statistic in (lambda v: v.mean(dim=(2, 3)), lambda v: v.std(dim=(2, 3))):
        a, b = statistic(device), statistic(loader)
        for channel in range(3):
            assert ks_2samp(a[:, channel].numpy(), b[:, channel].numpy()).pvalue > 1e-3, (preset, channel)


def test_device_views_are_drawn_within_the_presets_ranges():
    import kornia.augmentation as K

    settings = view_settings("32", size=32)
    from mmcl.modalities.vision.transforms import BatchViews

    views = BatchViews(settings, 3, (0.0,) * 3, (1.0,) * 3)
    crop = next(step for step in views.steps if isinstance(step, K.RandomResizedCrop))
    params = crop.generate_parameters(torch.Size([4000, 3, 32, 32]))
    corners = params["src"]
    width = corners[:, 1, 0] - corners[:, 0, 0] + 1
    height = corners[:, 2, 1] - corners[:, 1, 1] + 1
    area = width * height / (32 * 32)
    assert area.min() >= settings.crop_min_scale - 0.02 and area.max() <= 1.0
    assert (corners >= 0).all() and (corners <= 31).all()
    jitter = next(step for step in views.steps if isinstance(step, K.ColorJitter))
    drawn = jitter.generate_parameters(torch.Size([4000, 3, 32, 32]))
    s = settings.jitter_strength
    assert drawn["brightness_factor"].min() >= 1 - 0.8 * s and drawn["brightness_factor"].max() <= 1 + 0.8 * s
    assert drawn["hue_factor"].abs().max() <= 0.2 * s
    images = torch.full((4000, 3, 8, 8), 100, dtype=torch.uint8)
    images[:, :, :, :4] = 200  # left half brighter: a flip moves it
    flip = BatchViews(view_settings("32", size=8, crop_min_scale=1.0, jitter_prob=0.0, grayscale_prob=0.0), 3,
                      (0.0,) * 3, (1.0,) * 3)(images)  # fmt: skip
    flipped = (flip[:, 0, 0, 0] < flip[:, 0, 0, -1]).double().mean().item()
    assert abs(flipped - settings.flip_prob) < 0.03


def test_every_image_of_a_batch_gets_its_own_view():
    from mmcl.modalities.vision.transforms import BatchViews

    torch.manual_seed(0)
    views = BatchViews(view_settings("32", size=32), 3, (0.0,) * 3, (1.0,) * 3)(quadrants().expand(8, -1, -1, -1))
    assert len({tuple(v.flatten()[:64].tolist()) for v in views}) == 8


def test_the_adapter_draws_views_on_the_device_by_default_and_seeded():
    vision = adapter(train_subset=20)
    assert vision.on_device and not adapter(train_subset=20, augment_on="loader").on_device
    items = [vision.train_dataset()[i] for i in range(4)]
    assert items[0][0].dtype == torch.uint8 and items[0][0].shape == (1, 8, 8)  # the loader only decodes
    raw = vision.collate_train(items)
    assert raw.inputs.shape == (4, 1, 8, 8) and raw.n_views == 2
    torch.manual_seed(5)
    first = vision.augment_batch(raw)
    torch.manual_seed(5)
    again = vision.augment_batch(raw)
    assert first.inputs.shape == (8, 1, 8, 8) and first.inputs.dtype == torch.float32
    assert torch.equal(first.inputs, again.inputs) and not torch.equal(first.inputs[:4], first.inputs[4:])
    assert first.labels.tolist() == raw.labels.tolist()


def _trained_encoder(adapter: VisionAdapter, seed: int = 0):
    """The adapter's encoder with batch-norm statistics moved off their defaults (as training leaves them)."""
    torch.manual_seed(seed)
    encoder = adapter.build_encoder().train()
    source = adapter.source
    with torch.no_grad():
        encoder(torch.randn(8, source.channels, source.size, source.size))
    return encoder.eval()


@pytest.mark.parametrize(
    "backbone, options",
    [("resnet18", {}), ("resnet18", {"cifar_stem": False}), ("vit_tiny", {"num_layers": 2}), ("small_cnn", {})],
)
def test_export_loads_in_torchvision_and_back_into_mmcl(backbone, options, tmp_path):
    """RUN/model of an image run: torchvision's own model classes load the backbone (after the documented stem and
    head changes) and give mmcl's features; mmcl.load_encoder gives the same features and head embeddings."""
    import torchvision
    from safetensors.torch import load_file

    import mmcl
    from mmcl.modalities.vision.export import torchvision_code

    adapter = VisionAdapter(VisionModelConfig(backbone=backbone, backbone_options=options), VisionDataConfig())
    encoder = _trained_encoder(adapter)
    folder = adapter.export(encoder, tmp_path / "model")
    images = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features, embeddings = encoder.features(images), encoder(images)
        weights = load_file(folder / "backbone.safetensors")
        if backbone == "resnet18":  # by hand, as the README shows it
            model = torchvision.models.resnet18()
            if options.get("cifar_stem", True):
                model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
                model.maxpool = torch.nn.Identity()
            else:
                model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
            model.fc = torch.nn.Identity()
            model.load_state_dict(weights)  # strict: every key of torchvision's layout, nothing else
            torch.testing.assert_close(model.eval()(images), features, rtol=0, atol=0)
        elif backbone == "vit_tiny":
            model = torchvision.models.VisionTransformer(8, 4, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=768)
            model.conv_proj = torch.nn.Conv2d(1, 192, kernel_size=4, stride=4)
            model.heads = torch.nn.Identity()
            model.load_state_dict(weights)
            torch.testing.assert_close(model.eval()(images), features, rtol=0, atol=0)
        code = torchvision_code(folder)  # what the model card shows
        if backbone == "small_cnn":
            assert code is None  # not a torchvision model: mmcl's layout, loaded by mmcl only
        else:
            namespace: dict = {}
            exec(code, namespace)
            torch.testing.assert_close(namespace["backbone"](images), features, rtol=0, atol=0)
        loaded = mmcl.load_encoder(folder)
        assert not loaded.training
        torch.testing.assert_close(loaded.features(images), features, rtol=0, atol=0)
        torch.testing.assert_close(loaded(images), embeddings, rtol=0, atol=0)
    manifest = json.loads((folder / "mmcl_export.json").read_text())
    assert manifest["modality"] == "vision" and manifest["preprocess"]["mean"] == list(adapter.source.mean)
    assert sorted(p.name for p in folder.iterdir()) == ["backbone.safetensors", "head.safetensors", "mmcl_export.json"]
