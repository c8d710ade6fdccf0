"""Image-caption pairs read with Hugging Face's `datasets` library, for `models.CLIP`.

`HubCaptionsDataModule` reads `path` as `HubDataModule` does (`datamodules/hub.py`: a save_to_disk
folder, local files or an image folder with metadata, a Hub id through the cache), the images of
`image_column` and the captions of `caption_column` (a text, or a list of texts: several captions
an image), with optional class labels from `label_column` as the zero-shot classes; the data's own
splits where it has them, else CaptionedFolderDataModule's seeded ones.
"""

from collections.abc import Sequence
from typing import Literal

import torch

from datamodules.base import BatchScope, Splits, split_index
from datamodules.captions import Captioned, CaptionsDataModule
from datamodules.folder import IMAGENET_MEAN, IMAGENET_STD
from datamodules.hub import HubImages, check_column, holds, library, own_splits, read
from datamodules.transforms import Augmentation
from models.contract import IGNORE_INDEX
from models.errors import ConfigError, check_positive
from models.tokenizer import BYTES

class RowImage:
    """`load` for `Captioned`: row i of a split's image column as uint8 (C, H, W), read as HubImages
    reads it. A plain object holding the library's dataset (memory-mapped, pickled by reference),
    so loader workers receive it."""

    def __init__(self, data, column: str, size: int, channels: int) -> None:
        self.images = HubImages(data, column, torch.zeros(len(data), dtype=torch.long), size, channels)

    def __call__(self, i: int) -> torch.Tensor:
        return self.images[i]["input"]


def caption_lists(dataset, column: str, path: str, split: str) -> list[list[str]]:
    """Each row's captions: a column of texts (one each) or of lists of texts (several each)."""
    datasets = library()
    if column not in dataset.features:
        check_column(dataset, column, "caption_column", "texts", path, split)  # names the columns there are
    feature = dataset.features[column]
    many = isinstance(feature, (datasets.List, datasets.LargeList))
    if not (holds(feature, "texts") or many and holds(feature.feature, "texts")):
        raise ConfigError(f"data.caption_column {column!r} of {path} holds {feature}, not texts or lists of texts; "
                          "name a column of captions.")
    rows = [options if many else [options] for options in dataset[column]]
    for number, options in enumerate(rows, 1):
        if not options or any(text is None or not text.strip() for text in options):
            raise ConfigError(f"Image {number} of the {split} split of {path} has an empty caption in {column!r}; "
                              "write one or leave the image out (dataset.filter).")
    return rows


class HubCaptionsDataModule(CaptionsDataModule):
    """Images and their captions read with the `datasets` library, for `models.CLIP`.

    path, name, revision: as HubDataModule's (a save_to_disk folder, local files or an image folder
        with a metadata file, or a Hub dataset id read through the library's cache).
    image_column: images (`datasets.Image`), decoded per sample and resized and centre-cropped to
        `image_size` as HubDataModule's; channels, mean, std, augment as FolderDataModule's.
    caption_column: one caption per image (texts), or several (lists of texts): a training image
        draws one per epoch, seeded by (seed, epoch, index); an evaluation image keeps one.
    label_column: optional classes; their names (the ClassLabel's, else the distinct labels sorted)
        are the zero-shot classes unless `classes` names them. Without it, targets are IGNORE_INDEX
        and zero-shot classification needs `classes`. An image whose label is missing (None, -1)
        is kept, unlabelled.
    The data's own train, validation and test splits are used; what it lacks is carved from its
    training split as CaptionedFolderDataModule carves it (seeded; stratified where every training
    image has a label): `test_fraction` and `val_fraction` of all images where both are carved,
    else a share of the training split. Retrieval needs at least 2 images in validation and test.
    """

    def __init__(
        self,
        path: str,
        image_column: str = "image",
        caption_column: str = "caption",
        label_column: str | None = None,
        name: str | None = None,
        revision: str | None = None,
        image_size: int = 64,
        channels: Literal[1, 3] = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: Augmentation | None = None,
        max_len: int = 64,
        tokenizer: str = BYTES,
        classes: list[str] | None = None,
        prompts: list[str] | None = None,
        prompts_file: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 128,
        batch_scope: BatchScope = "device",
        num_workers: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            augment=augment, max_len=max_len, tokenizer=tokenizer, classes=classes, prompts=prompts,
            prompts_file=prompts_file, val_fraction=val_fraction, test_fraction=test_fraction, batch_size=batch_size,
            batch_scope=batch_scope, num_workers=num_workers, seed=seed,
        )
        self.save_hyperparameters(ignore=["augment"])
        self.record_augment()
        check_positive("HubCaptionsDataModule", image_size=image_size)
        self.path, self.image_column, self.label_column = path, image_column, label_column
        self.caption_column = caption_column
        self.image_size, self.channels = image_size, channels
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        self.mean, self.std = tuple(mean or default_mean), tuple(std or default_std)
        self.splits = own_splits(read(path, name, revision), path)
        for split, data in self.splits.items():
            check_column(data, image_column, "image_column", "images", path, split)
            if label_column is not None:
                check_column(data, label_column, "label_column", "labels", path, split)
        self.captions = {split: caption_lists(data, caption_column, path, split) for split, data in self.splits.items()}
        self.targets = self._labels()
        self.hparams["classes"] = self._classes  # the zero-shot class names, in index order, saved with the run
        self.labelled = all(bool((t != IGNORE_INDEX).all()) for t in self.targets.values()) and label_column is not None

    def _labels(self) -> dict[str, torch.Tensor]:
        """Each split's labels as indices into the classes (IGNORE_INDEX where an image has none);
        the classes, unless `classes` gave them, are the train split's ClassLabel names, else the distinct labels."""
        datasets = library()
        if self.label_column is None:
            return {split: torch.full((len(data),), IGNORE_INDEX) for split, data in self.splits.items()}
        names = {}  # each split's label names, None where missing
        for split, data in self.splits.items():
            feature = data.features[self.label_column]
            named = isinstance(feature, datasets.ClassLabel)
            names[split] = [None if v is None or named and v < 0 else feature.names[v] if named else v
                            for v in data[self.label_column]]
        train = self.splits["train"].features[self.label_column]
        given = self._classes is not None
        if not given:
            found = {v for column in names.values() for v in column if v is not None}
            self._classes = (list(train.names) if isinstance(train, datasets.ClassLabel)
                             else [str(v) for v in sorted(found, key=lambda v: (isinstance(v, str), v))]) or None
        index = {name: i for i, name in enumerate(self._classes or [])}
        targets = {}
        for split, column in names.items():
            unknown = sorted({str(v) for v in column if v is not None and str(v) not in index})
            if unknown:
                lacks = "data.classes lacks" if given else f"the train split of {self.path} lacks"
                raise ConfigError(f"The {split} split of {self.path} has labels {unknown} that {lacks}; "
                                  f"{'add them' if given else 'give every split the same classes'}.")
            targets[split] = torch.tensor([IGNORE_INDEX if v is None else index[str(v)] for v in column],
                                          dtype=torch.long)
        return targets

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    def load(self) -> Splits:
        loaders = {}
        for split, data in self.splits.items():
            if not data.features[self.image_column].decode:  # saved as bytes and paths: the library decodes them here
                data = data.cast_column(self.image_column, library().Image())
            loaders[split] = RowImage(data, self.image_column, self.image_size, self.channels)

        def part(source: str, rows: torch.Tensor, train: bool) -> Captioned:
            chosen = rows.tolist()
            return Captioned(chosen, [self.captions[source][i] for i in chosen], self.targets[source][rows],
                             self.max_len, train, self.caption_seed(train), loaders[source], self.tokenizer)

        n, labels = len(self.splits["train"]), self.targets["train"]
        stratify = bool((labels != IGNORE_INDEX).all())
        rows, held = torch.arange(n), {}
        for split, name, setting in (("test", "test", "data.test_fraction"),
                                     ("val", "validation", "data.val_fraction")):
            # One pair would score a loss of 0 and a recall of 1, whatever the model: retrieval needs 2 or more.
            if split in self.splits:
                if len(self.splits[split]) < 2:
                    raise ConfigError(f"The {name} split of {self.path} holds {len(self.splits[split])} image(s), and "
                                      "retrieval ranks each caption among at least 2; give it more images.")
                held[split] = part(split, torch.arange(len(self.splits[split])), False)
                continue
            fraction = self.test_fraction if split == "test" else self.val_fraction
            if split == "val" and "test" not in self.splits:  # both carved: each a share of all images
                fraction = fraction / (1.0 - self.test_fraction)
            keep, out = split_index(len(rows), 1.0 - fraction, self.seed, labels[rows] if stratify else None,
                                    held_out=(name, setting))
            if len(out) < 2:
                raise ConfigError(f"The {name} split would hold {len(out)} of {n} images, and retrieval ranks each "
                                  f"caption among at least 2; raise {setting}, or give more data.")
            held[split], rows = part("train", rows[out], False), rows[keep]
        return Splits(train=part("train", rows, True), val=held["val"], test=held["test"],
                      labels=labels[rows] if stratify else None)
