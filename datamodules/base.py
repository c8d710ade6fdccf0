"""What every image DataModule shares: seeded splits, label fractions, augmentation on either path.

A subclass loads raw images, (C, H, W) uint8 or float in [0, 1], as datasets of
(image, label) pairs; this base carves the validation split, keeps `label_fraction` of
the training labels, and applies the augmentation recipe, either per sample in the
loader or per batch on the model's device (`augment.on_device`).
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict

import lightning as L
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.transforms import Augmentation, BatchAugment, per_sample_transform


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-balanced split of positions 0..N-1: (`fraction` of them, the rest)."""
    index = torch.arange(len(labels))
    if fraction >= 1.0:
        return index, index[:0]
    keep = max(round(fraction * len(labels)), int(labels.max()) + 1)  # at least one per class
    kept, rest = train_test_split(index.numpy(), train_size=keep, stratify=labels.numpy(), random_state=seed)
    return torch.as_tensor(sorted(kept)), torch.as_tensor(sorted(rest))


class TensorImages(Dataset):
    """Images held as one tensor (N, C, H, W) with labels (N,).

    `__getitems__` slices a whole batch at once, which the loader uses with `whole_batch`
    as collate function: no per-sample indexing or stacking on the on-device path.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(index)
        return self.images[index], self.labels[index]


def whole_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch


def subset(dataset: Dataset, index: torch.Tensor) -> Dataset:
    if isinstance(dataset, TensorImages):
        return TensorImages(dataset.images[index], dataset.labels[index])
    return Subset(dataset, index.tolist())


def rows_as_sequence(x: torch.Tensor) -> torch.Tensor:
    """An image, or a batch of them, read row by row: (..., C, H, W) -> (..., C * H, W)."""
    return x.flatten(-3, -2)


def apply(fn: Callable | None, x):
    """`fn` on a tensor, or on each view of a tuple of them."""
    if fn is None:
        return x
    return tuple(fn(v) for v in x) if isinstance(x, tuple) else fn(x)


class Transformed(Dataset):
    """(image, label) pairs with `transform`, then `view`, applied to the image; `labeled=False` drops the label."""

    def __init__(self, dataset: Dataset, transform: Callable, view: Callable | None, labeled: bool = True) -> None:
        self.dataset, self.transform, self.view, self.labeled = dataset, transform, view, labeled

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        image = apply(self.view, self.transform(image))
        return (image, label) if self.labeled else (image,)


class ImageDataModule(L.LightningDataModule):
    """Subclasses set `num_classes`, `input_shape`, and implement `load()`, which also sets `mean` and `std`.

    `reshape` (None for images) turns images into what the model sees, per sample or per batch alike.
    """

    num_classes: int
    mean: Sequence[float]
    std: Sequence[float]
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(
        self,
        augment: Augmentation | None = None,
        val_fraction: float = 0.1,
        label_fraction: float = 1.0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be between 0 and 1 (exclusive); got {val_fraction}.")
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1]; got {label_fraction}.")
        self.augment = augment
        self.val_fraction = val_fraction
        self.label_fraction = label_fraction
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._generator: torch.Generator | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def record_augment(self) -> None:
        """Keep the recipe in the hyperparameters as a plain dict: checkpoints then hold no
        pickled class, so they load with weights_only=True."""
        self.hparams["augment"] = None if self.augment is None else asdict(self.augment)

    def load(self) -> tuple[Dataset, torch.Tensor, Dataset | None, Dataset]:
        """Raw (train, train labels, val or None to carve it from train, test)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_dataset"):
            return
        train, labels, val, test = self.load()
        if val is None:
            index, val_index = stratified_split(labels, 1.0 - self.val_fraction, self.seed)
            train, labels, val = subset(train, index), labels[index], subset(train, val_index)
        labeled, unlabeled = stratified_split(labels, self.label_fraction, self.seed)
        fit = per_sample_transform(self.augment, self.mean, self.std, train=True)
        evaluate = per_sample_transform(self.augment, self.mean, self.std, train=False)
        self._labeled, self._evaluate = subset(train, labeled), evaluate
        self.train_dataset = self._wrap(self._labeled, fit, random=self.augment is not None)
        # The images whose labels label_fraction set aside, for semi-supervised recipes.
        self.unlabeled_dataset = Transformed(subset(train, unlabeled), fit, self._view, labeled=False)
        self.val_dataset = self._wrap(val, evaluate, random=False)
        self.test_dataset = self._wrap(test, evaluate, random=False)

    @property
    def _view(self) -> Callable | None:
        # On the device path the loader yields raw images; the view is taken after the batch augmentation.
        return None if self.on_device else self.reshape

    def _wrap(self, dataset: Dataset, transform: Callable, random: bool) -> Dataset:
        if isinstance(dataset, TensorImages):
            if self.on_device:
                return dataset  # batches are sliced straight from the tensor, augmented on the device
            if not random:
                # A fixed transform is applied to the whole tensor once; batches are then slices of it.
                return TensorImages(apply(self._view, transform(dataset.images)), dataset.labels)
        return Transformed(dataset, transform, self._view)

    @property
    def on_device(self) -> bool:
        return self.augment is not None and self.augment.on_device

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if not self.on_device:
            return batch
        x, *rest = batch
        if not hasattr(self, "batch_augment"):
            self.batch_augment = BatchAugment(self.augment, self.mean, self.std)
        if self._generator is None or self._generator.device != x.device:
            # Seeded per rank: repeatable runs, and every rank augments differently.
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self._generator = torch.Generator(device=x.device).manual_seed(self.seed + rank)
        training = self.trainer is not None and self.trainer.training
        out = self.batch_augment.to(x.device)(x, train=training, generator=self._generator)
        return (apply(self.reshape, out), *rest)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=whole_batch if isinstance(dataset, TensorImages) else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True)

    def bank_dataloader(self) -> DataLoader:
        """The labelled training images without augmentation: a reference set, e.g. for k-NN monitors.
        Built on first use, since most tasks never ask for it."""
        if not hasattr(self, "bank_dataset"):
            self.bank_dataset = self._wrap(self._labeled, self._evaluate, random=False)
        return self._loader(self.bank_dataset, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, shuffle=False)
