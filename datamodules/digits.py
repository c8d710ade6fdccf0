"""The embedded default dataset: scikit-learn's 8x8 digits (1,797 images).

It ships inside scikit-learn, so every recipe runs offline. The whole set is a few
hundred kilobytes, so it is held as one tensor and never needs a worker process.
"""

import math
from typing import Literal

import torch

from datamodules.base import BatchScope, Splits, Unlabelled
from datamodules.images import ImageDataModule
from datamodules.samples import TensorSamples, rows_as_sequence
from datamodules.transforms import Augmentation
from models.errors import ConfigError


class DigitsDataModule(ImageDataModule):
    """scikit-learn's digits with a seeded, stratified train/val/test split.

    `view="image"` gives (1, 8, 8) images for MLPs and CNNs; `view="sequence"` gives the 8
    rows as a sequence of 8 features, (8, 8), for RNNs and Transformers. Augmentation is
    applied to the image before it is read as a sequence.
    """

    num_classes = 10

    def __init__(
        self,
        view: Literal["image", "sequence"] = "image",
        augment: Augmentation | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        label_fraction: float = 1.0,
        unlabelled: Unlabelled = "drop",
        normalize: bool = True,
        batch_size: int = 64,
        batch_scope: BatchScope = "device",
        num_workers: int = 0,
        seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__(
            augment=augment, test_fraction=test_fraction, val_fraction=val_fraction, label_fraction=label_fraction, unlabelled=unlabelled, batch_size=batch_size,
            batch_scope=batch_scope, num_workers=num_workers, seed=seed, folds=folds, fold=fold,
        )
        self.save_hyperparameters(ignore=["augment"])
        self.record_augment()
        self.normalize = normalize
        self.sequence = view == "sequence"
        self.reshape = rows_as_sequence if self.sequence else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (8, 8) if self.sequence else (1, 8, 8)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, 8, 8)

    def load(self) -> Splits:
        images, labels, (train, val, test) = digits_splits(self.val_fraction, self.test_fraction, self.seed)
        # Statistics of the training split only, so val and test stay unseen.
        self.mean, self.std = ((images[train].mean().item(),), (images[train].std().item(),)) if self.normalize else ((0.0,), (1.0,))
        split = {name: TensorSamples(input=images[i], target=labels[i]) for name, i in (("train", train), ("val", val), ("test", test))}
        return Splits(train=split["train"], val=split["val"], test=split["test"], labels=labels[train])


def digits_splits(
    val_fraction: float, test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """All 1,797 images (N, 1, 8, 8) in [0, 1], their labels (N,), and the seeded, stratified
    (train, val, test) positions: the one split every digits DataModule uses."""
    # Imported here, when digits are loaded: scikit-learn is a tenth of a second of every start-up otherwise.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    n, classes = len(labels), 10
    for name, setting, size in (("test", "data.test_fraction", math.ceil(test_fraction * n)),
                                ("validation", "data.val_fraction", math.ceil(val_fraction * n))):
        if size < classes:  # the split is stratified: one of each class at least
            raise ConfigError(
                f"The {name} split would hold {size} of {n} samples, fewer than the {classes} classes, so not one of "
                f"each; raise {setting} (to at least {classes / n:.3g})."
            )
    index = torch.arange(len(labels)).numpy()
    rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest], random_state=seed
    )
    return images, labels, tuple(torch.as_tensor(i) for i in (train, val, test))
