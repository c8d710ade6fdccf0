"""A user's own images: class subfolders, either already split or split here by seeded fractions.

    root/train/<class>/*.png, root/val/<class>/..., root/test/<class>/...   (val optional)
    root/<class>/*.png                                                       (split here)

Files that are not images, and images that cannot be read, are skipped and reported by
name; they never stop a run. Links are followed only to a file inside the split's own folder
that is not already there under its own name (`datamodules/files.py`), so a link can neither
loop, nor count an image twice, nor carry one across the train / test split.
"""

import os
from collections.abc import Sequence
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.datasets import ImageFolder

from datamodules.base import BatchScope, Splits, Unlabelled, split_index
from datamodules.samples import subset
from datamodules.files import files_under, subfolders, warn_skipped
from datamodules.inputs import CheckedFiles, LoadImage
from models.contract import Batch
from datamodules.images import ImageDataModule
from datamodules.transforms import Augmentation
from models.errors import check_positive

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Samples(torch.utils.data.Dataset):
    """An ImageFolder's (image, label) pairs as named-field samples."""

    def __init__(self, folder: ImageFolder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> Batch:
        image, label = self.folder[i]
        return {"input": image, "target": torch.tensor(label)}


def class_names(folder: str) -> list[str]:
    return subfolders(folder, skipped=[])  # the links left out are named when the images are read


class LinkSafeImageFolder(ImageFolder):
    """torchvision's ImageFolder, its class folders and files found through `datamodules.files`
    (torchvision's own walk follows every link, loops included)."""

    def __init__(self, *args, **kwargs) -> None:
        self.skipped_links: list[str] = []
        super().__init__(*args, **kwargs)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = subfolders(directory, self.skipped_links)
        return classes, {name: i for i, name in enumerate(classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], extensions=None, is_valid_file=None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        return [(path, index) for name, index in sorted(class_to_idx.items(), key=lambda item: item[1])
                for path in files_under(os.path.join(directory, name), self.skipped_links)
                if is_valid_file is None or is_valid_file(path)]


class FolderDataModule(ImageDataModule):
    """Images in class subfolders under `root`; see the module docstring for the two layouts."""

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        channels: Literal[1, 3] = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: Augmentation | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        label_fraction: float = 1.0,
        unlabelled: Unlabelled = "drop",
        batch_size: int = 64,
        batch_scope: BatchScope = "device",
        num_workers: int = 2,
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
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Image folder {root} does not exist; set data.root to a folder of class subfolders.")
        check_positive("FolderDataModule", image_size=image_size)
        self.root = root
        self.presplit = os.path.isdir(os.path.join(root, "train"))
        self.classes = class_names(os.path.join(root, "train") if self.presplit else root)
        if len(self.classes) < 2:
            raise FileNotFoundError(
                f"{root} holds {len(self.classes)} class folder(s); put each class's images in its own subfolder."
            )
        self.num_classes = len(self.classes)
        self.image_size = image_size
        self.channels = channels
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        self.mean, self.std = tuple(mean or default_mean), tuple(std or default_std)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    def _folder(self, path: str, checked: CheckedFiles) -> ImageFolder:
        dataset = LinkSafeImageFolder(path, loader=LoadImage(self.image_size, self.channels), is_valid_file=checked,
                                      allow_empty=True)
        warn_skipped(dataset.skipped_links, path)
        if dataset.classes != self.classes:
            raise FileNotFoundError(
                f"{path} has classes {dataset.classes} but {self.root} has {self.classes}; every split needs the same class folders."
            )
        return dataset

    def load(self) -> Splits:
        checked = CheckedFiles()
        if self.presplit:
            splits = {
                name: self._folder(os.path.join(self.root, name), checked)
                for name in ("train", "val", "test")
                if os.path.isdir(os.path.join(self.root, name))
            }
            if "test" not in splits:
                raise FileNotFoundError(f"{self.root} has train/ but no test/; add test/<class>/ folders.")
            labels = torch.as_tensor(splits["train"].targets)
            train, test = Samples(splits["train"]), Samples(splits["test"])
            val = Samples(splits["val"]) if "val" in splits else None
        else:
            everything = self._folder(self.root, checked)
            labels = torch.as_tensor(everything.targets)
            keep, held_out = split_index(len(labels), 1.0 - self.test_fraction, self.seed, labels,
                                         held_out=("test", "data.test_fraction"))
            train, labels, val = subset(Samples(everything), keep), labels[keep], None
            test = subset(Samples(everything), held_out)
        if checked.skipped:
            rank_zero_warn(f"Skipped {len(checked.skipped)} file(s) under {self.root}: " + "; ".join(checked.skipped))
        if len(labels) == 0:
            raise FileNotFoundError(f"No readable images under {self.root}.")
        return Splits(train=train, val=val, test=test, labels=labels)
