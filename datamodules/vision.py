"""The standard image benchmarks through torchvision: MNIST, FashionMNIST, CIFAR-10, CIFAR-100.

torchvision reads and downloads the files; this module holds each split as one uint8
tensor (N, C, H, W), the form both augmentation paths want, and turns a missing or
unreachable dataset into one sentence naming the folder and the files expected there.
"""

import os
import pickle
from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

from datamodules.base import BatchScope, Splits, Unlabelled
from datamodules.samples import TensorSamples
from datamodules.images import ImageDataModule
from datamodules.transforms import Augmentation
from models.errors import ConfigError

Name = Literal["mnist", "fashion_mnist", "cifar10", "cifar100"]
DATASETS: dict[str, type] = {
    "mnist": datasets.MNIST,
    "fashion_mnist": datasets.FashionMNIST,
    "cifar10": datasets.CIFAR10,
    "cifar100": datasets.CIFAR100,
}
SHAPES = {"mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
CLASSES = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100}


def expected_files(name: str, root: str) -> tuple[str, list[str]]:
    """The folder torchvision reads `name` from, and the file names it needs there."""
    cls = DATASETS[name]
    if issubclass(cls, datasets.MNIST):  # FashionMNIST too: idx files, stored uncompressed
        folder = os.path.join(root, cls.__name__, "raw")
        return folder, [os.path.basename(url).removesuffix(".gz") for url, _ in cls.resources]
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return os.path.join(root, cls.base_folder), files


def damaged_files(name: str, folder: str) -> list[str]:
    """The files of `name` in `folder` that fail torchvision's own checksum (CIFAR lists them;
    MNIST's raw files carry no checksum, so none can be named)."""
    cls = DATASETS[name]
    if issubclass(cls, datasets.MNIST):
        return []
    listed = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
    return [file for file, md5 in listed if not check_integrity(os.path.join(folder, file), md5)]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units, without a float copy of the set."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in images.split(4096):
        x = chunk.to(torch.float64).div_(255).transpose(0, 1).flatten(1)  # (C, n * H * W)
        total += x.sum(1)
        squares += x.square().sum(1)
    count = images.numel() / images.shape[1]
    mean = total / count
    std = (squares / count - mean.square()).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


class VisionDataModule(ImageDataModule):
    """One of torchvision's standard image datasets, with a seeded validation split carved from train.

    `root` is where the files live (or will be downloaded to with `download: true`);
    normalisation uses the channel statistics of the training split.
    """

    def __init__(
        self,
        dataset: Name = "cifar10",
        root: str = "data",
        download: bool = False,
        augment: Augmentation | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        val_fraction: float = 0.1,
        label_fraction: float = 1.0,
        unlabelled: Unlabelled = "drop",
        batch_size: int = 128,
        batch_scope: BatchScope = "device",
        num_workers: int = 2,
        seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__(
            augment=augment, val_fraction=val_fraction, label_fraction=label_fraction, unlabelled=unlabelled, batch_size=batch_size,
            batch_scope=batch_scope, num_workers=num_workers, seed=seed, folds=folds, fold=fold,
        )
        self.save_hyperparameters(ignore=["augment"])
        self.record_augment()
        self.dataset = dataset
        self.root = root
        self.download = download
        self.num_classes = CLASSES[dataset]
        self.given_stats = None if mean is None or std is None else (tuple(mean), tuple(std))
        if (mean is None) != (std is None):
            raise ConfigError("Give data.mean and data.std together (a pretrained model's), or neither.")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return SHAPES[self.dataset]

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node, so a download happens once.
        if self.download:
            for train in (True, False):
                self._open(train, download=True)

    def _open(self, train: bool, download: bool):
        folder, files = expected_files(self.dataset, self.root)
        try:
            return DATASETS[self.dataset](self.root, train=train, download=download)
        # torchvision's readers raise these for a missing, unreachable or unreadable file.
        except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as err:
            present = all(os.path.isfile(os.path.join(folder, name)) for name in files)
            if present:
                # Every file is there, so the fault is in one of them: say so, not "not found".
                damaged = damaged_files(self.dataset, folder)
                which = f"{', '.join(damaged)} in {folder}" if damaged else f"a file in {folder}"
                raise ConfigError(
                    f"{self.dataset}: {which} is damaged or not in the expected format "
                    f"({type(err).__name__}: {str(err).splitlines()[0][:120]}); delete it and set download: true "
                    "to fetch it again, or replace it with a good copy."
                ) from None
            if download:
                raise FileNotFoundError(
                    f"Could not download {self.dataset} into {folder} ({err}); put {', '.join(files)} "
                    f"there by hand, or check the network."
                ) from err
            raise FileNotFoundError(
                f"{self.dataset} was not found in {folder}: expected {', '.join(files)}. "
                f"Set download: true to fetch it, or set root to the folder that holds it."
            ) from err

    def _tensors(self, train: bool) -> TensorSamples:
        ds = self._open(train, download=False)
        images = torch.as_tensor(ds.data)
        # MNIST stores (N, H, W), CIFAR (N, H, W, C); both become (N, C, H, W) uint8.
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2).contiguous()
        self.classes = list(ds.classes)  # the dataset's own names, in label order ("airplane", "0 - zero", ...)
        return TensorSamples(input=images, target=torch.as_tensor(ds.targets, dtype=torch.long))

    def load(self) -> Splits:
        train, test = self._tensors(train=True), self._tensors(train=False)
        # The training images' own statistics, unless given (those a pretrained model was trained with).
        self.mean, self.std = self.given_stats or channel_stats(train.fields["input"])
        rank_zero_info(f"{self.dataset}: {len(train)} training and {len(test)} test images from {self.root}")
        return Splits(train=train, test=test, labels=train.fields["target"])
