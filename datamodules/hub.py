"""Labelled texts or images read with Hugging Face's `datasets` library, for classification
(image-caption pairs for CLIP: `datamodules/hub_captions.py`; a language model's corpus:
`TextDataModule`, whose `source` may be a dataset too).

`path` is, in the order it is tried:

- a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (`load_from_disk`);
- a local `.csv`, `.tsv`, `.json`, `.jsonl`, `.parquet` or `.txt` file, a folder of such files
  (`train.csv`, `test.csv`: the library names the splits from the file names), or a folder of
  images in class subfolders (`imagefolder`), each read by the library's own loader;
- else a Hub dataset id (`name`: its configuration, `revision`: a branch, tag or commit), read
  through the library's cache: a dataset fetched once loads again without the network.

Nothing the data brings runs as code: the library (4 and later) refuses datasets that come with
a loading script, and litlab never passes `trust_remote_code`.

`text_column` or `image_column` (exactly one) names the input and `label_column` the class. The
dataset's own `train`, `validation` (or `valid`, `val`, `dev`) and `test` splits are used where it
has them; what it lacks is carved from its training data by litlab's seeded, stratified split
(`test_fraction`, then `val_fraction`, as TextClassificationDataModule carves them). A split whose
labels are all missing (a benchmark's hidden test labels, -1) counts as missing. Class names are
the label feature's (`ClassLabel.names`), else the distinct labels in sorted order.

Texts are tokenized once, at set-up, by the data's `tokenizer` (`models/tokenizer.py`), cut to
`max_len` tokens and padded, as TextClassificationDataModule serves them. Images are decoded per
sample by the library and go through FolderDataModule's pipeline: the short side resized and
centre-cropped to `image_size`, `channels` 1 or 3, normalisation, the augmentation recipes.
"""

import importlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.v2 import functional as TF

from datamodules.base import BatchScope, Splits, Unlabelled, split_index
from datamodules.files import files_under
from datamodules.folder import IMAGENET_MEAN, IMAGENET_STD
from datamodules.images import ImageDataModule
from datamodules.inputs import square
from datamodules.samples import TensorSamples, subset
from datamodules.text_classification import read_texts
from datamodules.transforms import Augmentation
from models.contract import Batch
from models.errors import ConfigError, check_positive
from models.tokenizer import BYTES, load_tokenizer

# The library's loader for each kind of local file, with its options.
LOADERS = {".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}), ".json": ("json", {}), ".jsonl": ("json", {}),
           ".parquet": ("parquet", {}), ".txt": ("text", {})}
VALIDATION = ("validation", "valid", "val", "dev")  # the names a dataset's validation split goes by
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
TEXT_TYPES = ("string", "large_string")
INTEGERS = tuple(f"{kind}{bits}" for kind in ("int", "uint") for bits in (8, 16, 32, 64))
LABEL_TYPES = ("bool", *TEXT_TYPES, *INTEGERS)
FILES = "local .csv / .jsonl / .parquet files or an image folder"


def library():
    """The `datasets` package, imported on first use: it is heavy, and optional."""
    try:
        return importlib.import_module("datasets")
    except ImportError:
        raise ConfigError("HubDataModule reads data with the datasets library, which is not installed; "
                          "pip install 'litlab[datasets]'.") from None


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def local_loader(folder: Path) -> tuple[str, dict]:
    """The library's loader for the data files in `folder`: images (in class subfolders) or one kind of file."""
    suffixes = {Path(file).suffix.lower() for file in files_under(folder, skipped=[])
                if not any(part.startswith(".") for part in Path(file).relative_to(folder).parts)}
    if suffixes & set(IMG_EXTENSIONS):
        return "imagefolder", {}
    loaders = {LOADERS[suffix][0]: LOADERS[suffix] for suffix in suffixes if suffix in LOADERS}
    if len(loaders) != 1:
        found = "no data file" if not loaders else "files of several kinds (" + ", ".join(sorted(loaders)) + ")"
        raise ConfigError(f"{folder} holds {found}; give a folder written by save_to_disk, a folder of images in class "
                          "subfolders, or a folder of one kind of .csv / .jsonl / .parquet / .txt files.")
    return next(iter(loaders.values()))


def read(path: str, name: str | None, revision: str | None) -> dict[str, Any]:
    """Every split `path` holds, by name ("" for a dataset saved without splits)."""
    datasets = library()
    where = Path(path).expanduser()
    if where.exists() and (name is not None or revision is not None):
        raise ConfigError(f"data.name and data.revision choose a Hub dataset's configuration and version; {path} is a "
                          "local file or folder, so leave them out.")
    if where.is_dir() and ((where / "dataset_dict.json").is_file() or (where / "state.json").is_file()):
        data = datasets.load_from_disk(str(where))
    elif where.exists():
        if where.is_file() and where.suffix.lower() not in LOADERS:
            raise ConfigError(f"{path} is not a file litlab reads with the datasets library; give a .csv, .tsv, .json, "
                              ".jsonl, .parquet or .txt file, an image folder, or a folder written by save_to_disk.")
        loader, options = LOADERS[where.suffix.lower()] if where.is_file() else local_loader(where)
        files = {"data_files": str(where)} if where.is_file() else {"data_dir": str(where)}
        try:
            data = datasets.load_dataset(loader, **files, **options)
        except datasets.exceptions.DatasetGenerationError as err:
            cause = err.__cause__ if err.__cause__ is not None else err
            raise ConfigError(f"The datasets library could not read {path} as {loader}: {first_line(cause)}") from None
    elif HUB_ID.match(path) and where.suffix.lower() not in LOADERS:
        data = from_hub(datasets, path, name, revision)
    else:
        raise ConfigError(f"No file or folder at {path}; give a folder written by save_to_disk, {FILES}, or a Hub "
                          "dataset id.")
    return {"": data} if isinstance(data, datasets.Dataset) else dict(data)


def from_hub(datasets, path: str, name: str | None, revision: str | None):
    """A Hub dataset, from the library's cache where it has been fetched before."""
    save = f"datasets.load_dataset('{path}').save_to_disk(FOLDER) and give that folder, or give {FILES}"
    try:
        return datasets.load_dataset(path, name=name, revision=revision)
    except ConnectionError:
        raise ConfigError(f"data.path {path} is neither a file or folder here nor a Hub dataset in the datasets cache, "
                          f"and the Hub cannot be reached; where it can, run {save}.") from None
    except datasets.exceptions.DatasetNotFoundError as err:
        raise ConfigError(f"data.path {path} is neither a file or folder here nor a Hub dataset that can be read "
                          f"({first_line(err)}); check the id, or run {save}.") from None
    except RuntimeError as err:
        if "scripts are no longer supported" not in str(err):
            raise
        raise ConfigError(f"Hub dataset {path} is read by a script of its own, which litlab never runs; choose a "
                          "version of it in data files (parquet, csv, json).") from None
    except ValueError as err:
        if "Config name" not in str(err) and "BuilderConfig" not in str(err):
            raise
        message = " ".join(line.strip() for line in str(err).strip().splitlines()[:2])  # the configurations it has
        raise ConfigError(f"Hub dataset {path} could not be read: {message} (set data.name to choose one).") from None


def own_splits(found: dict[str, Any], path: str) -> dict[str, Any]:
    """The dataset's train, val and test splits, where it has them ("train" required, unless it has one split)."""
    names = list(found)
    train = "train" if "train" in found else names[0] if len(names) == 1 else None
    if train is None:
        raise ConfigError(f"{path} has the splits {', '.join(names)} but none named train; name its training split "
                          "train (DatasetDict({'train': ...})).")
    chosen = {"train": found[train]}
    val = next((split for split in VALIDATION if split in found), None)
    if val is not None:
        chosen["val"] = found[val]
    if "test" in found:
        chosen["test"] = found["test"]
    left = [split for split in names if split not in (train, val, "test")]
    if left:
        rank_zero_info(f"{path}: the splits {', '.join(left)} are not used (only train, validation and test are).")
    if train != "train":
        one = f"one split, {train}" if train else "no splits"
        rank_zero_info(f"{path} has {one}; it is the training data.")
    return chosen


KINDS = {"texts": "texts", "images": "images", "labels": "class labels (a ClassLabel, integers or strings)"}


def holds(feature, kind: str) -> bool:
    """Whether a column of `feature` holds texts, images or class labels (`kind`)."""
    datasets = library()
    if kind == "texts":
        return isinstance(feature, datasets.Value) and feature.dtype in TEXT_TYPES
    if kind == "images":
        return isinstance(feature, datasets.Image)
    values = isinstance(feature, datasets.Value) and feature.dtype in LABEL_TYPES
    return values or isinstance(feature, datasets.ClassLabel)


def check_column(dataset, column: str, setting: str, kind: str, path: str, split: str) -> None:
    features = dataset.features
    if column not in features:
        where = f"{path}" if split == "train" else f"the {split} split of {path}"
        raise ConfigError(f"data.{setting} {column!r} is not a column of {where}; its columns are "
                          f"{', '.join(features)}.")
    if not holds(features[column], kind):
        raise ConfigError(f"data.{setting} {column!r} of {path} holds {features[column]}, not {KINDS[kind]}; name a "
                          f"column of {KINDS[kind]}.")


class HubImages(Dataset):
    """The images of a `datasets.Dataset` column as samples {"input": uint8 (C, H, W), "target": label}:
    decoded by the library, read as RGB or greyscale, the short side resized and centre-cropped to `size`."""

    def __init__(self, data, column: str, targets: torch.Tensor, size: int, channels: int) -> None:
        self.data, self.column, self.targets = data.select_columns([column]), column, targets
        self.mode = "L" if channels == 1 else "RGB"
        self.resize = square(size)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Batch:
        image = self.data[int(i)][self.column]
        return {"input": self.resize(TF.pil_to_tensor(image.convert(self.mode))), "target": self.targets[i]}


class HubDataModule(ImageDataModule):
    """Texts or images and their classes, read with the `datasets` library; see the module docstring.

    tokenizer, max_len: for texts (`bytes`, or a Hugging Face tokenizer's Hub id or folder).
    image_size, channels, mean, std, augment: for images, as FolderDataModule's.
    test_fraction, val_fraction: the shares of all samples carved for the splits the data lacks
        (val_fraction is a share of the training split where the data has a test split of its own).
    """

    def __init__(
        self,
        path: str,
        text_column: str | None = None,
        image_column: str | None = None,
        label_column: str = "label",
        name: str | None = None,
        revision: str | None = None,
        tokenizer: str = BYTES,
        max_len: int = 128,
        image_size: int = 64,
        channels: Literal[1, 3] = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: Augmentation | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        label_fraction: float = 1.0,
        unlabelled: Unlabelled = "drop",
        batch_size: int = 32,
        batch_scope: BatchScope = "device",
        num_workers: int = 0,
        seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__(
            augment=augment, val_fraction=val_fraction, test_fraction=test_fraction, label_fraction=label_fraction,
            unlabelled=unlabelled, batch_size=batch_size, batch_scope=batch_scope, num_workers=num_workers, seed=seed, folds=folds, fold=fold,
        )
        self.save_hyperparameters(ignore=["augment"])
        self.record_augment()
        check_positive("HubDataModule", max_len=max_len, image_size=image_size)
        if augment is not None and text_column is not None:
            raise ConfigError("data.augment is a recipe for images; leave it out when reading data.text_column.")
        self.path, self.label_column = path, label_column
        self.text_column, self.image_column = text_column, image_column
        self.max_len, self.image_size, self.channels = max_len, image_size, channels
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        self.mean, self.std = tuple(mean or default_mean), tuple(std or default_std)
        self.splits = own_splits(read(path, name, revision), path)
        self._check_columns()
        self.classes, self.targets = self._labels()
        self.num_classes = len(self.classes)
        self.hparams["classes"] = self.classes  # the label names, in index order, saved with the run
        self.tokenizer = load_tokenizer(tokenizer) if text_column is not None else None
        self.vocab_size = self.tokenizer.vocab_size if self.tokenizer is not None else None
        lacks = [split for split in ("test", "val") if split not in self.splits]
        if lacks:
            rank_zero_info(f"{path}: the {' and '.join(lacks)} split(s) are carved from the training data (seeded, "
                           "stratified).")

    # ---- reading ----

    def _check_columns(self) -> None:
        if (self.text_column is None) == (self.image_column is None):
            columns = ", ".join(self.splits["train"].features)
            raise ConfigError(f"HubDataModule classifies texts or images: give exactly one of data.text_column and "
                              f"data.image_column; the columns of {self.path} are {columns}.")
        if self.text_column is not None:
            column, setting, kind = self.text_column, "text_column", "texts"
        else:
            column, setting, kind = self.image_column, "image_column", "images"
        for split, data in self.splits.items():
            check_column(data, column, setting, kind, self.path, split)
            check_column(data, self.label_column, "label_column", "labels", self.path, split)

    def _labels(self) -> tuple[list[str], dict[str, torch.Tensor]]:
        """The class names, and each split's labels as class indices. A val or test split without
        any label is set aside (it is carved from train instead); one with some missing is refused."""
        datasets = library()
        feature = self.splits["train"].features[self.label_column]
        named = isinstance(feature, datasets.ClassLabel)
        values = {}
        for split, data in list(self.splits.items()):
            column = list(data[self.label_column])
            missing = sum(v is None or (named and v < 0) for v in column)
            if missing == len(column) and split != "train":
                rank_zero_info(f"The {split} split of {self.path} has no labels; it is carved from train instead.")
                del self.splits[split]
            elif missing:
                raise ConfigError(f"{missing} of the {len(column)} samples of the {split} split of {self.path} have no "
                                  f"label; keep only labelled samples (dataset.filter) before giving it.")
            else:
                values[split] = column
        if named:
            for split, data in self.splits.items():
                if data.features[self.label_column] != feature:
                    raise ConfigError(f"The {split} split of {self.path} names its classes differently from the train "
                                      f"split ({data.features[self.label_column]} against {feature}); give every split "
                                      "the same ClassLabel.")
            return list(feature.names), {split: torch.tensor(column) for split, column in values.items()}
        distinct = sorted({v for column in values.values() for v in column})
        index = {value: i for i, value in enumerate(distinct)}
        return [str(v) for v in distinct], {split: torch.tensor([index[v] for v in column])
                                            for split, column in values.items()}

    def _samples(self, split: str) -> Dataset:
        data, targets = self.splits[split], self.targets[split]
        if self.image_column is not None:
            if not data.features[self.image_column].decode:  # saved as bytes and paths: the library decodes them here
                data = data.cast_column(self.image_column, library().Image())
            return HubImages(data, self.image_column, targets, self.image_size, self.channels)
        texts = list(data[self.text_column])
        for number, text in enumerate(texts, 1):
            if text is None or not text.strip():
                raise ConfigError(f"Sample {number} of the {split} split of {self.path} has an empty "
                                  f"{self.text_column!r}; fill it in or leave the sample out.")
        tokens, padding = self.tokenizer.tokenize(texts, self.max_len)  # (N, T) each
        return TensorSamples(input=tokens, target=targets, padding_mask=padding)

    def load(self) -> Splits:
        data = {split: self._samples(split) for split in self.splits}
        train, val, test, labels = data["train"], data.get("val"), data.get("test"), self.targets["train"]
        if test is None:
            rest, held = split_index(len(labels), 1.0 - self.test_fraction, self.seed, labels,
                                     held_out=("test", "data.test_fraction"))
            test = subset(train, held)
            if val is None:  # both carved: val_fraction is a share of all samples, as test_fraction is
                keep, val_index = split_index(len(rest), 1.0 - self.val_fraction / (1.0 - self.test_fraction),
                                              self.seed, labels[rest], held_out=("validation", "data.val_fraction"))
                val, rest = subset(train, rest[val_index]), rest[keep]
            train, labels = subset(train, rest), labels[rest]
        return Splits(train=train, val=val, test=test, labels=labels)

    # ---- the contract ----

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.max_len,) if self.text_column is not None else (self.channels, self.image_size, self.image_size)

    @property
    def example_input(self) -> torch.Tensor:
        if self.text_column is not None:
            return torch.zeros(2, self.max_len, dtype=torch.long)
        return super().example_input

    def transform(self, dataset: Dataset, train: bool) -> Dataset:
        return dataset if self.text_column is not None else super().transform(dataset, train)

    # ---- prediction ----

    def read_inputs(self, path: str) -> None:
        """New texts (see `datamodules.text_classification.read_texts`) or images (`datamodules.inputs`) to classify."""
        if self.text_column is None:
            return super().read_inputs(path)
        self.predict_names = read_texts(path)

    def predict_dataloader(self) -> DataLoader:
        if self.text_column is None or self.predict_names is None:
            return super().predict_dataloader()
        tokens, padding = self.tokenizer.tokenize(self.predict_names, self.max_len)
        return self._loader(TensorSamples(input=tokens, padding_mask=padding))
