"""The embedded default dataset: scikit-learn's 8x8 handwritten digits (1,797 images).

It ships inside scikit-learn, so every recipe runs offline. The whole set fits in a few
hundred kilobytes, so it is held as tensors and never touches a worker process.
"""

from typing import Literal

import lightning as L
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a class-balanced `fraction` of `labels` (at least one per class)."""
    if fraction >= 1.0:
        return torch.arange(len(labels))
    num_classes = int(labels.max()) + 1
    keep = max(round(fraction * len(labels)), num_classes)
    index, _ = train_test_split(
        torch.arange(len(labels)).numpy(), train_size=keep, stratify=labels.numpy(), random_state=seed
    )
    return torch.as_tensor(sorted(index))


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn's digits with a seeded, stratified train/val/test split.

    `view="image"` gives (1, 8, 8) images for MLPs and CNNs; `view="sequence"` gives the 8
    rows as a sequence of 8 features, (8, 8), for RNNs and Transformers.
    `label_fraction` keeps a stratified share of the training labels; the other training
    images stay available, unlabelled, as `unlabeled_dataset` for semi-supervised recipes.
    """

    num_classes = 10

    def __init__(
        self,
        view: Literal["image", "sequence"] = "image",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        label_fraction: float = 1.0,
        normalize: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (exclusive); got {value}.")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must leave data to train on; got {val_fraction} + {test_fraction}."
            )
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1]; got {label_fraction}.")
        self.save_hyperparameters()
        self.view = view
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.label_fraction = label_fraction
        self.normalize = normalize
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 8, 8) if self.view == "image" else (8, 8)

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_dataset"):
            return
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0  # (N, 8, 8) in [0, 1]
        labels = torch.as_tensor(digits.target, dtype=torch.long)

        index = torch.arange(len(labels)).numpy()
        rest, test = train_test_split(
            index, test_size=self.test_fraction, stratify=labels, random_state=self.seed
        )
        train, val = train_test_split(
            rest,
            test_size=self.val_fraction / (1.0 - self.test_fraction),
            stratify=labels[rest],
            random_state=self.seed,
        )
        train = torch.as_tensor(train)
        if self.normalize:
            # Statistics of the training split only, so val and test stay unseen.
            mean, std = images[train].mean(), images[train].std()
            images = (images - mean) / std
        if self.view == "image":
            images = images.unsqueeze(1)  # (N, 1, 8, 8)

        labelled = train[stratified_subset(labels[train], self.label_fraction, self.seed)]
        unlabelled = train[~torch.isin(train, labelled)]
        self.train_dataset = TensorDataset(images[labelled], labels[labelled])
        self.unlabeled_dataset = TensorDataset(images[unlabelled])
        self.val_dataset = TensorDataset(images[val], labels[val])
        self.test_dataset = TensorDataset(images[test], labels[test])

    def _loader(self, dataset: TensorDataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)
