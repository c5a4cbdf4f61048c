"""Image datasets from local roots: torchvision's readers, plus scikit-learn's bundled digits.

Every loader returns an :class:`ImageSource`: the pretraining split, the labelled evaluation splits, and
the facts the adapter needs (channels, native size, normalisation). Items are ``(image, label)`` with a
``uint8`` ``(C, H, W)`` tensor or a PIL image. Nothing is written next to the source data: MNIST-style
``.gz`` files and ImageFolder ``.zip`` archives are unpacked into ``cache_dir`` (default
``~/.cache/mmcl``), and downloads happen only with ``download=True``.

=============  =============================================  ==============================================
dataset        ``root`` holds                                 splits (pretrain / eval train / eval test)
=============  =============================================  ==============================================
digits         nothing (bundled with scikit-learn)            1437 / 1437 / 360 (stratified, fixed seed)
mnist          ``MNIST/raw/*-ubyte[.gz]``                     train / train / test
fashion_mnist  ``FashionMNIST/raw/*-ubyte[.gz]``              train / train / test
cifar10/100    ``cifar-10-batches-py`` / ``cifar-100-python`` train / train / test
stl10          ``stl10_binary``                               train+unlabeled / train / test
imagefolder    ``train/<class>/*`` and ``test/<class>/*``,    train / train / test
               or ``*train*.zip`` and ``*test*.zip``
=============  =============================================  ==============================================
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd

from mmcl.contract import Registry

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

DatasetLoader = Callable[..., "ImageSource"]
DATASETS: Registry[DatasetLoader] = Registry("image dataset", config_key="data.dataset")


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator registering ``loader(root, cache_dir, download, **options) -> ImageSource`` as ``data.dataset``.

    ``root`` is ``data.root`` (None when unset: call :func:`require_root` if the data lives in files),
    ``cache_dir`` where anything derived may be written (:func:`cache_folder`), never next to the source;
    ``options`` come from ``data.dataset_options`` (and ``size`` from ``data.image_size``).
    """
    return DATASETS.register(name)


@dataclass
class ImageSource:
    pretrain: Dataset  # items (image, label); label -1 where unknown (STL-10 unlabeled)
    eval_train: Dataset
    eval_test: Dataset
    channels: int
    size: int  # native side length (ImageFolder: the view size it is resized to)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labelled: bool  # every pretraining item has a class label
    resize_for_eval: bool = False  # images of varying size: resize + centre-crop for evaluation


class TensorImages(Dataset):
    """In-memory ``uint8`` images ``(N, C, H, W)`` with labels ``(N,)``."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(
                f"expected uint8 (N, C, H, W) images and N labels, got {images.dtype} {tuple(images.shape)}"
            )
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


def cache_folder(cache_dir: str | None, *parts: str) -> Path:
    folder = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "mmcl"
    folder = folder.joinpath(*parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _source_key(path: Path) -> str:
    return hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]


def require_root(root: str | None, dataset: str, cache_dir: str | None = None, download: bool = False) -> Path:
    """``data.root`` as a path. Unset, the cache folder when downloading, else an error naming the key to set."""
    if root is not None:
        return Path(root).expanduser()
    if download:
        return cache_folder(cache_dir, "downloads")
    raise ValueError(
        f"data.root is not set: the {dataset!r} dataset reads its files from a folder; set data.root=FOLDER "
        "(or data.download=true to fetch it into data.cache_dir where it can be downloaded)"
    )


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{what}: {path} does not exist; set data.root to the folder that holds it "
            "(or data.download=true where the dataset can be downloaded)"
        )
    return path


def _digits(root: str | None, cache_dir: str | None, download: bool) -> ImageSource:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target)
    train, test = train_test_split(range(len(labels)), test_size=0.2, random_state=0, stratify=digits.target)
    train_set = TensorImages(images[train], labels[train])
    test_set = TensorImages(images[test], labels[test])
    return ImageSource(train_set, train_set, test_set, 1, 8, (0.3,), (0.35,), labelled=True)


def _mnist_like(name: str, stats: tuple) -> Callable[[str, str | None, bool], ImageSource]:
    def load(root: str | None, cache_dir: str | None, download: bool) -> ImageSource:
        root = require_root(root, name, cache_dir, download)
        source_raw = root / name / "raw"
        reader = getattr(tvd, name)
        if download or (source_raw / "train-images-idx3-ubyte").exists():
            base = root
        else:  # torchvision reads uncompressed idx files: gunzip into the cache, never next to the source
            _require(source_raw / "train-images-idx3-ubyte.gz", f"{name} training images")
            base = cache_folder(cache_dir, "images", _source_key(source_raw))
            target = base / name / "raw"
            target.mkdir(parents=True, exist_ok=True)
            for packed in source_raw.glob("*-ubyte.gz"):
                unpacked = target / packed.stem
                if not unpacked.exists():
                    with gzip.open(packed) as fin, open(unpacked.with_suffix(".part"), "wb") as fout:
                        shutil.copyfileobj(fin, fout)
                    unpacked.with_suffix(".part").replace(unpacked)
        splits = [_read(reader, str(base), train=train, download=download) for train in (True, False)]
        train, test = (TensorImages(s.data.unsqueeze(1), s.targets) for s in splits)
        return ImageSource(train, train, test, 1, 28, *stats, labelled=True)

    return load


def _read(reader: type, root: str, **options):
    """A torchvision dataset; its "not found or corrupted" error names ``data.root`` and the fix."""
    try:
        return reader(root, **options)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"{reader.__name__} data not found or incomplete under data.root={root} ({error}); set data.root to the "
            "folder holding it, or data.download=true where it can be downloaded"
        ) from None


def _cifar(reader: type, stats: tuple) -> Callable[[str, str | None, bool], ImageSource]:
    def load(root: str | None, cache_dir: str | None, download: bool) -> ImageSource:
        root = str(require_root(root, reader.__name__, cache_dir, download))
        splits = [_read(reader, root, train=train, download=download) for train in (True, False)]
        train, test = (
            TensorImages(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets))
            for s in splits
        )
        return ImageSource(train, train, test, 3, 32, *stats, labelled=True)

    return load


def _stl10(root: str | None, cache_dir: str | None, download: bool) -> ImageSource:
    root = str(require_root(root, "stl10", cache_dir, download))

    def split(name: str) -> TensorImages:
        data = _read(tvd.STL10, root, split=name, download=download)
        return TensorImages(torch.from_numpy(data.data), torch.from_numpy(data.labels))

    train = split("train")
    pretrain = torch.utils.data.ConcatDataset([train, split("unlabeled")])
    return ImageSource(pretrain, train, split("test"), 3, 96, (0.43, 0.42, 0.39), (0.27, 0.26, 0.27), labelled=False)


def _unpacked_image_folder(root: Path, split: str, cache_dir: str | None) -> Path:
    if (root / split).is_dir():
        return root / split
    archives = sorted(root.glob(f"*{split}*.zip"))
    if not archives:
        raise FileNotFoundError(
            f"ImageFolder data: neither {root / split}/ nor a *{split}*.zip in {root}; "
            "set data.root to a folder with train/ and test/ class folders"
        )
    target = cache_folder(cache_dir, "images", _source_key(archives[0]))
    done = target / ".complete"
    if not done.exists():  # extracted once; the marker makes an interrupted extraction start over
        with zipfile.ZipFile(archives[0]) as archive:
            archive.extractall(target)
        done.touch()
    found = [p for p in target.rglob(split) if p.is_dir()]
    if not found:
        raise FileNotFoundError(f"{archives[0]} holds no {split}/ folder")
    return found[0]


def read_image(path: str) -> Image.Image:
    """An RGB image file; a damaged or truncated file is a ``ValueError`` naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports damaged files with these
        raise ValueError(f"cannot read the image {path} ({error}); repair or remove the file") from None


def _image_folder(root: str | None, cache_dir: str | None, download: bool, size: int = 224) -> ImageSource:
    base = _require(require_root(root, "imagefolder"), "ImageFolder root")
    train, test = (
        tvd.ImageFolder(str(_unpacked_image_folder(base, split, cache_dir)), loader=read_image)
        for split in ("train", "test")
    )
    if train.classes != test.classes:
        raise ValueError(f"ImageFolder train and test class folders differ: {train.classes} vs {test.classes}")
    return ImageSource(train, train, test, 3, size, *IMAGENET_STATS, labelled=True, resize_for_eval=True)


register_dataset("digits")(_digits)
register_dataset("mnist")(_mnist_like("MNIST", ((0.1307,), (0.3081,))))
register_dataset("fashion_mnist")(_mnist_like("FashionMNIST", ((0.2860,), (0.3530,))))
register_dataset("cifar10")(_cifar(tvd.CIFAR10, ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))))
register_dataset("cifar100")(_cifar(tvd.CIFAR100, ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))))
register_dataset("stl10")(_stl10)
register_dataset("imagefolder")(_image_folder)


def available_datasets() -> list[str]:
    return DATASETS.names()


def load_source(
    name: str, root: str | None, cache_dir: str | None = None, download: bool = False, **options
) -> ImageSource:
    """The :class:`ImageSource` of the dataset registered as ``name``; ``options`` go to its loader."""
    loader = DATASETS.get(name)
    accepted = list(inspect.signature(loader).parameters)[3:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for image dataset {name!r} (data.dataset_options, data.image_size); "
            f"valid: {accepted}"
        )
    return loader(root, cache_dir, download, **options)


def seeded_subset(dataset: Dataset, size: int | None, seed: int) -> Dataset:
    """The first ``size`` items of a seeded permutation (the whole dataset when ``size`` is None)."""
    if size is None or size >= len(dataset):
        return dataset
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:size]
    return Subset(dataset, sorted(order.tolist()))
