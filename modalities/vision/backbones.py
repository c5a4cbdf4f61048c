"""Image backbones and the SimCLR projection head.

:func:`build_backbone` returns ``(module, feature_dim)``: the module maps images ``(n, C, H, W)`` to
features ``(n, feature_dim)``. Backbones are randomly initialised (``weights=None``): contrastive
pretraining starts from scratch. A backbone is a factory ``(in_channels, **options) -> (module,
feature_dim)`` registered with :func:`register_backbone`; its keyword parameters are the options a config
may set in ``model.backbone_options`` (the adapter fills ``image_size``, and ``cifar_stem`` for images up to
64 px, when the factory takes them)::

    @register_backbone("my_mlp")
    def my_mlp(in_channels: int, image_size: int = 8, hidden: int = 64) -> tuple[nn.Module, int]:
        layers = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.ReLU())
        return layers, hidden


* ``small_cnn``: a few 3x3 conv layers + global average pool (tests, quickstart); last width.
* ``resnet18`` / ``resnet50``: torchvision ResNets with ``fc`` removed; 512 / 2048.
* ``vit_tiny``: torchvision ``VisionTransformer`` with ViT-Ti sizes (12 layers, 3 heads, 192/768),
  patch 4 up to 64 px; the CLS token after the final LayerNorm; 192.
* ``vit``: the same with ViT-B/16 sizes by default (12 layers, 12 heads, 768/3072); 768.

>>> import torch
>>> from mmcl.modalities.vision import build_backbone
>>> backbone, dim = build_backbone("resnet18", in_channels=1, cifar_stem=True)
>>> backbone(torch.randn(2, 1, 32, 32)).shape, dim
(torch.Size([2, 512]), 512)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

from torch import nn
from torchvision import models

from mmcl.contract import Registry

__all__ = ["BACKBONES", "available_backbones", "build_backbone", "build_head", "register_backbone"]

BackboneFactory = Callable[..., tuple[nn.Module, int]]
BACKBONES: Registry[BackboneFactory] = Registry("image backbone", config_key="model.backbone")


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering a backbone factory ``(in_channels, **options) -> (module, feature_dim)``."""
    return BACKBONES.register(name)


def _resnet(factory: Callable[..., models.ResNet]) -> Callable[..., tuple[nn.Module, int]]:
    def build(in_channels: int, cifar_stem: bool = False) -> tuple[nn.Module, int]:
        model = factory(weights=None)
        if cifar_stem:
            # CIFAR variant (He et al. 2016, SimCLR appendix B.9): 3x3 stride-1 conv1, no max-pool.
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if cifar_stem or in_channels != 3:
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        feature_dim = model.fc.in_features
        model.fc = nn.Identity()
        return model, feature_dim

    return build


def _vit(defaults: dict[str, int]) -> Callable[..., tuple[nn.Module, int]]:
    def build(
        in_channels: int,
        image_size: int | None = None,
        patch_size: int | None = None,
        num_layers: int | None = None,
        num_heads: int | None = None,
        hidden_dim: int | None = None,
        mlp_dim: int | None = None,
    ) -> tuple[nn.Module, int]:
        if image_size is None:
            raise ValueError("a ViT backbone needs image_size (its position embeddings are fixed to one size)")
        if patch_size is None:
            patch_size = defaults.get("patch_size") or (4 if image_size <= 64 else 8 if image_size <= 128 else 16)
        if image_size % patch_size:
            raise ValueError(f"ViT patch_size={patch_size} must divide image_size={image_size}")
        sizes = {
            "num_layers": num_layers or defaults["num_layers"],
            "num_heads": num_heads or defaults["num_heads"],
            "hidden_dim": hidden_dim or defaults["hidden_dim"],
            "mlp_dim": mlp_dim or defaults["mlp_dim"],
        }
        if sizes["hidden_dim"] % sizes["num_heads"]:
            raise ValueError(
                f"ViT hidden_dim={sizes['hidden_dim']} must be divisible by num_heads={sizes['num_heads']}"
            )
        model = models.VisionTransformer(image_size=image_size, patch_size=patch_size, **sizes)
        if in_channels != 3:
            model.conv_proj = nn.Conv2d(in_channels, sizes["hidden_dim"], kernel_size=patch_size, stride=patch_size)
            fan_in = in_channels * patch_size * patch_size  # torchvision's patchify-stem initialisation
            nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
            nn.init.zeros_(model.conv_proj.bias)
        model.heads = nn.Identity()  # forward() then returns the final-LayerNorm CLS token
        return model, sizes["hidden_dim"]

    return build


def _small_cnn(
    in_channels: int, channels: Sequence[int] = (32, 64, 128), batch_norm: bool = True
) -> tuple[nn.Module, int]:
    """3x3 conv (+BN) + ReLU per entry of ``channels``, stride 2 from the second on, then global average pool."""
    if not channels or any(int(c) < 1 for c in channels):
        raise ValueError(f"small_cnn channels must be a non-empty list of positive ints, got {list(channels)}")
    layers: list[nn.Module] = []
    previous = in_channels
    for i, width in enumerate(int(c) for c in channels):
        layers.append(nn.Conv2d(previous, width, 3, stride=1 if i == 0 else 2, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        previous = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), previous


register_backbone("small_cnn")(_small_cnn)
register_backbone("resnet18")(_resnet(models.resnet18))
register_backbone("resnet50")(_resnet(models.resnet50))
register_backbone("vit_tiny")(
    _vit({"patch_size": 0, "num_layers": 12, "num_heads": 3, "hidden_dim": 192, "mlp_dim": 768})
)
register_backbone("vit")(
    _vit({"patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072})
)


def available_backbones() -> list[str]:
    return BACKBONES.names()


def backbone_options(name: str) -> list[str]:
    """The options of backbone ``name``: its factory's keyword parameters after ``in_channels``."""
    parameters = list(inspect.signature(BACKBONES.get(name)).parameters.values())[1:]
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def build_backbone(name: str, in_channels: int = 3, **options) -> tuple[nn.Module, int]:
    """A randomly initialised backbone mapping ``(n, in_channels, H, W)`` images to ``(n, feature_dim)``.

    Options: ``small_cnn``: ``channels`` (list of widths, default ``(32, 64, 128)``), ``batch_norm``
    (default True); ``resnet18``/``resnet50``: ``cifar_stem`` (3x3 stride-1 conv1 and no max-pool, for
    32-96 px images); ``vit_tiny``/``vit``: ``image_size`` (required), ``patch_size`` (``vit_tiny``: 4 up
    to 64 px, 8 up to 128 px, else 16), ``num_layers``, ``num_heads``, ``hidden_dim``, ``mlp_dim``.
    ``in_channels`` other than 3 replaces the first convolution (ResNet ``conv1``, ViT ``conv_proj``).
    A registered plug-in's options are its factory's keyword parameters.
    """
    factory = BACKBONES.get(name)
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    valid = backbone_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for backbone {name!r} in model.backbone_options; valid: {valid}")
    return factory(in_channels, **options)


def build_head(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batch_norm: bool = True) -> nn.Module:
    """SimCLR projection head ``(n, in_dim) -> (n, out_dim)``: ``num_layers`` linear layers.

    Every layer but the last is Linear-BN-ReLU (Linear-ReLU without ``batch_norm``); the last is a
    plain Linear. ``num_layers=1`` is a linear projection, ``num_layers=0`` the identity (the loss then
    sees the backbone features and ``out_dim`` is ignored).
    """
    if num_layers < 0:
        raise ValueError(f"head num_layers must be >= 0, got {num_layers}")
    if num_layers == 0:
        return nn.Identity()
    layers: list[nn.Module] = []
    previous = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(previous, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        previous = hidden_dim
    layers.append(nn.Linear(previous, out_dim))
    return nn.Sequential(*layers)
