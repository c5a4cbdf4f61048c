"""SimCLR views with torchvision transforms v2, and the deterministic evaluation transform.

A view is ``RandomResizedCrop -> RandomHorizontalFlip -> RandomApply(ColorJitter) -> RandomGrayscale ->
RandomApply(GaussianBlur) -> float -> Normalize`` (SimCLR, Chen et al. 2020, arXiv:2002.05709, appendix
A), with colour-jitter strength ``s`` giving brightness/contrast/saturation ``0.8 s`` and hue ``0.2 s``.
Presets follow the published settings per resolution:

========  =======  ==========  ====  ======  ====  ====  ================================================
preset    crop     min scale   flip  jitter  gray  blur  used for
========  =======  ==========  ====  ======  ====  ====  ================================================
digits    8        0.5         0     0.5     0     0     scikit-learn digits (quickstart); no flip (digits)
28        28       0.3         0.5   0.5     0     0     MNIST, Fashion-MNIST
32        32       0.08        0.5   0.5     0.2   0     CIFAR (SimCLR's CIFAR setting, s = 0.5, no blur)
96        96       0.08        0.5   1.0     0.2   0.5   STL-10
224       224      0.08        0.5   1.0     0.2   0.5   ImageNet-sized ImageFolder data
none      -        -           -     -       -     -     no augmentation: views equal (tests, ablations)
========  =======  ==========  ====  ======  ====  ====  ================================================

Every entry can be overridden from the config (``data.crop_min_scale=0.2`` ...; ``data.solarize_prob`` adds
BYOL's solarization, off in every preset). Multi-crop (``data.views``, :func:`crop_groups`) draws groups of views
with their own size and crop scale range (SwAV, Caron et al. 2020, arXiv:2006.09882: 2 global crops and several
small local ones), every other entry as the preset says. Single-channel images get brightness/contrast jitter only
(saturation and hue do not exist for them) and no grayscale step.

The same views come from two pipelines (``data.augment_on``): :func:`simclr_view`, per item in the data loader
(torchvision v2), and :class:`BatchViews`, on whole batches on the training device with per-sample random
parameters (kornia's augmentation module, which follows torchvision's formulas), so that the data loader only
decodes and stacks. Each view of an image has the same distribution in both; within a batch, kornia draws the
colour-jitter order once per call where torchvision draws it per image (each image's order is still uniform).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class ViewSettings:
    size: int
    crop_min_scale: float
    flip_prob: float
    jitter_strength: float
    jitter_prob: float
    grayscale_prob: float
    blur_prob: float
    solarize_prob: float = 0.0
    crop_max_scale: float = 1.0  # multi-crop's local crops cover at most this fraction of the image

    @property
    def blur_kernel(self) -> int:
        """About 10% of the image side, odd (SimCLR)."""
        return max(3, int(0.1 * self.size) // 2 * 2 + 1)

    def colour(self, channels: int) -> dict[str, float]:
        """Colour-jitter ranges of strength ``s``: brightness/contrast ``0.8 s``; RGB also saturation and hue."""
        s = self.jitter_strength
        colour = dict(brightness=0.8 * s, contrast=0.8 * s)
        if channels == 3:
            colour.update(saturation=0.8 * s, hue=min(0.2 * s, 0.5))
        return colour


VIEW_PRESETS: dict[str, ViewSettings] = {
    "digits": ViewSettings(8, 0.5, 0.0, 0.5, 0.8, 0.0, 0.0),
    "28": ViewSettings(28, 0.3, 0.5, 0.5, 0.8, 0.0, 0.0),
    "32": ViewSettings(32, 0.08, 0.5, 0.5, 0.8, 0.2, 0.0),
    "96": ViewSettings(96, 0.08, 0.5, 1.0, 0.8, 0.2, 0.5),
    "224": ViewSettings(224, 0.08, 0.5, 1.0, 0.8, 0.2, 0.5),
}


def view_settings(preset: str, **overrides: float | None) -> ViewSettings:
    """A preset's settings with the non-``None`` overrides applied (and checked)."""
    if preset not in VIEW_PRESETS:
        raise ValueError(f"data.augment={preset!r} is not a view preset; choose one of {[*VIEW_PRESETS, 'none']}")
    settings = replace(VIEW_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    return checked(settings)


def checked(settings: ViewSettings, where: str = "data") -> ViewSettings:
    """``settings`` if every entry is in its range, else a ``ValueError`` naming the entry (under ``where``)."""
    for name in ("crop_min_scale", "flip_prob", "jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob"):
        value = getattr(settings, name)
        if not 0 <= value <= 1 or (name == "crop_min_scale" and value == 0):
            raise ValueError(f"{where}.{name}={value} must be in {'(0, 1]' if name == 'crop_min_scale' else '[0, 1]'}")
    if not settings.crop_min_scale <= settings.crop_max_scale <= 1:
        raise ValueError(
            f"{where}.crop_max_scale={settings.crop_max_scale} must be in [crop_min_scale, 1] = "
            f"[{settings.crop_min_scale}, 1]"
        )
    if settings.jitter_strength < 0 or settings.size < 1:
        raise ValueError(f"{where}.jitter_strength must be >= 0 and the view size >= 1, got {settings}")
    return settings


@dataclass(frozen=True)
class CropGroup:
    """``count`` views drawn with ``settings`` (multi-crop: the global crops, or the local crops)."""

    count: int
    settings: ViewSettings


CROP_KEYS = ("count", "size", "crop_min_scale", "crop_max_scale")


def crop_groups(views: list[dict], base: ViewSettings) -> list[CropGroup]:
    """Multi-crop's groups from ``data.views`` entries ``{count, size, crop_min_scale, crop_max_scale}``, each
    missing entry taken from ``base`` (the preset with its overrides); the first entry holds the global crops.

    Example (solo-learn's CIFAR multi-crop, scaled to 32 px: 2 global crops, 4 local ones)::

        views:
          - {count: 2, size: 32, crop_min_scale: 0.14}
          - {count: 4, size: 16, crop_min_scale: 0.05, crop_max_scale: 0.14}
    """
    groups = []
    for index, view in enumerate(views):
        where = f"data.views[{index}]"
        unknown = sorted(set(view) - set(CROP_KEYS)) if isinstance(view, dict) else None
        if unknown is None or unknown:
            raise ValueError(f"{where}={view!r}: each entry is a mapping of {', '.join(CROP_KEYS)}; not {unknown}")
        count = view.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"{where}.count={count!r} must be a positive integer (the number of such crops)")
        overrides = {key: view[key] for key in CROP_KEYS[1:] if key in view}
        groups.append(CropGroup(count, checked(replace(base, **overrides), where)))
    if sum(group.count for group in groups) < 2:
        raise ValueError(
            f"data.views={views!r} describes {sum(g.count for g in groups)} view; contrast needs 2 or more"
        )
    return groups


def _normalise(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def simclr_view(settings: ViewSettings, channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """One random view ``(C, H, W) uint8 image or PIL -> (C, size, size) float``, normalised (per item)."""
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.RandomResizedCrop(settings.size, scale=(settings.crop_min_scale, settings.crop_max_scale), antialias=True),
        v2.RandomHorizontalFlip(settings.flip_prob),
    ]
    if settings.jitter_strength > 0 and settings.jitter_prob > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(**settings.colour(channels))], p=settings.jitter_prob))
    if channels == 3 and settings.grayscale_prob > 0:
        steps.append(v2.RandomGrayscale(settings.grayscale_prob))
    if settings.blur_prob > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(settings.blur_kernel, sigma=(0.1, 2.0))], p=settings.blur_prob))
    if settings.solarize_prob > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=settings.solarize_prob))
    return v2.Compose(steps + _normalise(mean, std))


class BatchViews(torch.nn.Module):
    """Random views of a whole batch on its device: ``(B, C, H, W) uint8 -> (B, C, size, size) float``, normalised,
    every image with its own random parameters (kornia), the same distribution as :func:`simclr_view`.

    The images must share one size (the data loader stacks them); the randomness comes from torch's generator of
    the batch's device, which the engine seeds per (seed, step, rank).
    """

    def __init__(self, settings: ViewSettings, channels: int, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        import kornia.augmentation as K

        size = (settings.size, settings.size)
        steps: list[torch.nn.Module] = [
            K.RandomResizedCrop(
                size,
                scale=(settings.crop_min_scale, settings.crop_max_scale),
                align_corners=False,
                cropping_mode="resample",
            ),
            K.RandomHorizontalFlip(p=settings.flip_prob),
        ]
        if settings.jitter_strength > 0 and settings.jitter_prob > 0:
            steps.append(K.ColorJitter(**settings.colour(channels), p=settings.jitter_prob))
        if channels == 3 and settings.grayscale_prob > 0:
            steps.append(K.RandomGrayscale(p=settings.grayscale_prob))
        if settings.blur_prob > 0:
            kernel = settings.blur_kernel
            steps.append(K.RandomGaussianBlur((kernel, kernel), sigma=(0.1, 2.0), p=settings.blur_prob))
        if settings.solarize_prob > 0:  # torchvision's threshold 128 of 255: kornia's 0.5, no addition
            steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=settings.solarize_prob))
        self.steps = torch.nn.Sequential(*steps)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"BatchViews takes uint8 (B, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
        views = self.steps(images.float() / 255.0)
        return (views - self.mean.to(views.device)) / self.std.to(views.device)


def eval_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...], resize: bool) -> v2.Compose:
    """Deterministic transform: normalise (after resizing the short side to ``size / 0.875`` and a centre crop
    when ``resize``)."""
    steps: list[v2.Transform] = [v2.ToImage()]
    if resize:
        steps += [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)]
    return v2.Compose(steps + _normalise(mean, std))
