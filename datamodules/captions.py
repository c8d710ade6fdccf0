"""Images paired with captions, for learning an image encoder and a text encoder together (`models.CLIP`).

Two sources:

- `CaptionedDigitsDataModule`, the embedded default: scikit-learn's digits, each image
  captioned from `TRAIN_TEMPLATES` ("a thick handwritten 7", "the digit seven", ...). The
  stroke's weight, where the image shows it, is in the caption: "thin" for the lightest third
  of the training images by ink, "thick" for the heaviest third. The zero-shot prompts use
  other phrasings (`ZEROSHOT_TEMPLATES`) that no training caption has, so zero-shot accuracy
  measures generalisation to new wording, not recall of memorised captions.
- `CaptionedFolderDataModule`: a user's folder of images and a captions file in it,
  `captions.csv` (columns `file,caption`, optionally `label`) or `captions.jsonl`
  ({"file": ..., "caption": ..., "label": ...}); `file` is relative to the folder, and an
  image may have several rows, one per caption. Images go through the same pipeline as
  `FolderDataModule` (size, channels, normalisation, augmentation recipes).

Captions are tokens of the data's `tokenizer` (`models/tokenizer.py`: bytes by default, or a Hugging
Face tokenizer), cut to `max_len` tokens and padded.
A training image takes one of its captions at random, seeded by (seed, epoch, index) like
every draw of a training epoch; an evaluation image always the same one. Zero-shot class
prompts (class names times prompt templates) come from here too, never from the model.
"""

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset

from datamodules.base import BatchScope, Splits, split_index
from models.contract import IGNORE_INDEX, Batch
from datamodules.digits import digits_splits
from datamodules.files import inside
from datamodules.folder import IMAGENET_MEAN, IMAGENET_STD
from datamodules.inputs import CheckedFiles, LoadImage
from datamodules.images import ImageDataModule
from models.run_state import SeedKey, derived_seed, run_seed
from datamodules.text import read_utf8
from models.tokenizer import BYTES, Tokenizer, load_tokenizer
from datamodules.transforms import Augmentation
from models.errors import ConfigError, check_positive

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {ink} is "thin ", "thick " or nothing (see INK); {numeral} is "7", {word} is "seven".
TRAIN_TEMPLATES = (
    "a {ink}handwritten {numeral}",
    "the digit {word}",
    "a small picture of the number {word}",
    "a {ink}{word} written by hand",
    "a tiny scan of a {ink}{numeral}",
    "{word}, drawn with a {ink}pen",
    "the figure {numeral}",
    "an old scan showing a {ink}{word}",
    "number {numeral}",
    "someone wrote a {ink}{word}",
    "{numeral}",
    "a low resolution {ink}{word}",
)
# Held out of training: only zero-shot prompts use these phrasings.
ZEROSHOT_TEMPLATES = (
    "a photo of the number {word}.",
    "a drawing of a {numeral}",
    "this is the digit {numeral}",
    "a blurry image of a {word}",
    "the handwritten number {word}",
)
INK = ("thin ", "", "thick ")  # the lightest, middle and heaviest third of the training images by ink
FOLDER_PROMPTS = ("a photo of a {}.", "a picture of a {}.", "{}")
CAPTIONS_FILES = ("captions.csv", "captions.jsonl")


class Captioned(Dataset):
    """Images with one or more captions each: samples {"input", "text", "text_padding_mask",
    "caption_id", "target"} (target IGNORE_INDEX where the image has no label).

    `images`: a tensor (N, C, H, W), or paths that `load` reads. `captions[i]`: image i's
    captions. A training sample's caption is drawn by (seed, epoch, index), with the run's
    seed; an evaluation sample's is fixed by (seed, index), with the data's. `caption_id` numbers the distinct texts of the chosen
    captions, so that an image whose caption is word for word another's matches it too.
    """

    def __init__(
        self,
        images: torch.Tensor | list[str],
        captions: list[list[str]],
        labels: torch.Tensor,
        max_len: int,
        train: bool,
        seed: int,
        load: Callable[[str], torch.Tensor] | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        self.images, self.captions, self.labels, self.load = images, captions, labels, load
        self.tokenizer = tokenizer or load_tokenizer(BYTES)
        self.max_len, self.train, self.seed = max_len, train, seed
        self.epoch = 0
        counts = torch.tensor([len(c) for c in captions], dtype=torch.long)
        self.first = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)[:-1]])  # (N,): each image's first row
        self.tokens, self.padding = self.tokenizer.tokenize([text for options in captions for text in options], max_len)
        chosen = [options[self._pick(i, SeedKey.EVAL_CAPTIONS)] for i, options in enumerate(captions)]
        ids = {text: n for n, text in enumerate(sorted(set(chosen)))}
        self.caption_ids = torch.tensor([ids[text] for text in chosen])

    def _pick(self, i: int, epoch: int) -> int:
        return derived_seed(self.seed, epoch, i) % len(self.captions[i])

    def subset(self, index: torch.Tensor) -> "Captioned":
        keep = index.tolist()
        images = self.images[index] if isinstance(self.images, torch.Tensor) else [self.images[i] for i in keep]
        return Captioned(images, [self.captions[i] for i in keep], self.labels[index], self.max_len, self.train,
                         self.seed, self.load, self.tokenizer)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int) -> Batch:
        image = self.images[i] if self.load is None else self.load(self.images[i])
        row = self.first[i] + self._pick(i, self.epoch if self.train else SeedKey.EVAL_CAPTIONS)
        return {
            "input": image,
            "text": self.tokens[row],
            "text_padding_mask": self.padding[row],
            "caption_id": self.caption_ids[i],
            "target": self.labels[i],
        }


class CaptionsDataModule(ImageDataModule):
    """What both caption sources share: captions as tokens, splits of images, zero-shot prompts.

    classes: the class names zero-shot classification chooses among (default: the data's labels).
    prompts: templates of a class's prompts, `{}` standing for its name (digits' also know
        `{numeral}` and `{word}`); prompts_file: the same, one per line.
    max_len: caption tokens kept; the text backbone's `max_len` must be at least this.
    tokenizer: `bytes`, or a Hugging Face tokenizer's Hub id or folder; the text tower's vocabulary is linked from it.
    """
    default_prompts: Sequence[str] = FOLDER_PROMPTS
    labelled = False  # every image has a label (predictions then carry the target)

    def __init__(
        self,
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
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            augment=augment, val_fraction=val_fraction, test_fraction=test_fraction, batch_size=batch_size,
            batch_scope=batch_scope, num_workers=num_workers, seed=seed,
        )
        check_positive(type(self).__name__, max_len=max_len)
        if prompts is not None and prompts_file is not None:
            raise ConfigError("Give the zero-shot prompt templates as data.prompts or data.prompts_file, not both.")
        self.max_len = max_len
        self.tokenizer = load_tokenizer(tokenizer)
        self.prompts_file = prompts_file
        self._classes, self._prompts = classes, prompts

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def caption_seed(self, train: bool) -> int:
        """Training draws follow the run's seed, as every draw of a training epoch does; the
        evaluation captions are part of the data, fixed by its own seed."""
        return run_seed() if train else self.seed

    # ---- zero-shot classes and their prompts ----

    @property
    def classes(self) -> list[str] | None:
        return self._classes

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def prompt_fields(self, c: int) -> dict[str, str]:
        """Named fields a template may use for class `c`, besides its name as `{}`."""
        return {}

    def templates(self) -> list[str]:
        if self.prompts_file is not None:
            lines = [line for line in read_utf8(Path(self.prompts_file)).splitlines() if line.strip()]
            if not lines:
                raise ConfigError(f"{self.prompts_file} holds no prompt template; write one per line, e.g. a photo of a {{}}.")
            return lines
        return list(self._prompts if self._prompts is not None else self.default_prompts)

    def zeroshot_prompts(self) -> list[list[str]]:
        """Each class's prompts: every template filled in with the class."""
        if self.classes is None:
            raise ConfigError(
                f"Zero-shot classification needs class names, and {type(self).__name__} has no labels; "
                "give them as data.classes: [cat, dog, ...]."
            )
        prompts = []
        for c, name in enumerate(self.classes):
            try:
                prompts.append([template.format(name, **self.prompt_fields(c)) for template in self.templates()])
            except (KeyError, IndexError) as err:
                raise ConfigError(
                    f"A zero-shot prompt template names a field it cannot have ({err}); write {{}} where the class name goes."
                ) from None
        return prompts

    def zeroshot_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts as tokens (C, P, L) and their padding mask (C, P, L)."""
        prompts = self.zeroshot_prompts()
        tokens, padding = self.tokenizer.tokenize([p for per_class in prompts for p in per_class], self.max_len)
        shape = (len(prompts), len(prompts[0]), self.max_len)
        return tokens.view(shape), padding.view(shape)


class CaptionedDigitsDataModule(CaptionsDataModule):
    """scikit-learn's digits with captions written from templates; the split is `DigitsDataModule`'s."""

    default_prompts = ZEROSHOT_TEMPLATES
    labelled = True

    def __init__(
        self,
        augment: Augmentation | None = None,
        max_len: int = 64,
        tokenizer: str = BYTES,
        prompts: list[str] | None = None,
        prompts_file: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 128,
        batch_scope: BatchScope = "device",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            augment=augment, max_len=max_len, tokenizer=tokenizer, classes=list(WORDS), prompts=prompts, prompts_file=prompts_file,
            val_fraction=val_fraction, test_fraction=test_fraction, batch_size=batch_size, batch_scope=batch_scope,
            num_workers=num_workers, seed=seed,
        )
        self.save_hyperparameters(ignore=["augment"])
        self.record_augment()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    def prompt_fields(self, c: int) -> dict[str, str]:
        return {"numeral": str(c), "word": WORDS[c]}

    def load(self) -> Splits:
        images, labels, (train, val, test) = digits_splits(self.val_fraction, self.test_fraction, self.seed)
        self.mean, self.std = (images[train].mean().item(),), (images[train].std().item(),)
        ink = images.mean(dim=(1, 2, 3))  # (N,)
        cuts = ink[train].quantile(torch.tensor([1 / 3, 2 / 3]))  # thirds of the training images
        weight = torch.bucketize(ink, cuts)  # 0 thin, 1 middle, 2 thick
        captions = [
            [t.format(ink=INK[w], numeral=str(y), word=WORDS[y]) for t in TRAIN_TEMPLATES]
            for w, y in zip(weight.tolist(), labels.tolist())
        ]

        def split(index: torch.Tensor, train: bool) -> Captioned:
            return Captioned(images[index], [captions[i] for i in index.tolist()], labels[index], self.max_len,
                             train, self.caption_seed(train), tokenizer=self.tokenizer)

        return Splits(train=split(train, True), val=split(val, False), test=split(test, False), labels=labels[train])


def read_captions(path: Path) -> list[tuple[int, str, str, str | None]]:
    """(line, file, caption, label or None) of a captions.csv or captions.jsonl file."""
    text = read_utf8(path)
    rows = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                label = item.get("label")
                rows.append((number, item["file"], item["caption"], None if label is None else str(label)))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise ConfigError(
                    f"{path} line {number} is not a JSON object with file and caption (and optionally label)."
                ) from None
    else:
        reader = csv.DictReader(text.splitlines())
        if not {"file", "caption"} <= set(reader.fieldnames or []):
            raise ConfigError(
                f"{path} needs a header with file and caption columns (and optionally label); it has {reader.fieldnames}."
            )
        # The header is line 1; a quoted caption spanning lines would shift the count, so the
        # reader's own line number is used.
        for row in reader:
            rows.append((reader.line_num, row["file"], row["caption"], row.get("label") or None))
    for number, file, caption, _ in rows:
        if not isinstance(caption, str) or not caption.strip():
            raise ConfigError(f"{path} line {number} has an empty caption for {file!r}; write one or remove the line.")
    if not rows:
        raise ConfigError(f"{path} holds no caption.")
    return rows


class CaptionedFolderDataModule(CaptionsDataModule):
    """A user's images under `root` with their captions in `root/captions.csv` or
    `root/captions.jsonl` (or the file `captions` names); see the module docstring."""

    def __init__(
        self,
        root: str,
        captions: str | None = None,
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
            augment=augment, max_len=max_len, tokenizer=tokenizer, classes=classes, prompts=prompts, prompts_file=prompts_file,
            val_fraction=val_fraction, test_fraction=test_fraction, batch_size=batch_size, batch_scope=batch_scope,
            num_workers=num_workers, seed=seed,
        )
        self.save_hyperparameters(ignore=["augment"])
        self.record_augment()
        check_positive("CaptionedFolderDataModule", image_size=image_size)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Image folder {root} does not exist; set data.root to the folder of your images.")
        self.root = Path(root)
        if captions is None:
            found = [self.root / name for name in CAPTIONS_FILES if (self.root / name).is_file()]
            if not found:
                raise FileNotFoundError(
                    f"{root} has no captions.csv or captions.jsonl; write one (file,caption per row) or set data.captions."
                )
            captions = str(found[0])
        if not Path(captions).is_file():
            raise FileNotFoundError(f"Captions file {captions} does not exist; set data.captions to a .csv or .jsonl file.")
        self.captions_path = Path(captions)
        self.image_size, self.channels = image_size, channels
        default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((0.5,), (0.5,))
        self.mean, self.std = tuple(mean or default_mean), tuple(std or default_std)
        self.rows = read_captions(self.captions_path)
        labels = sorted({label for *_, label in self.rows if label is not None})
        if classes is None and labels:
            self._classes = labels
        elif classes is not None and not set(labels) <= set(classes):
            raise ConfigError(
                f"{self.captions_path} has labels {sorted(set(labels) - set(classes))} that data.classes lacks; add them."
            )
        self.hparams["classes"] = self._classes  # the label names, in index order, saved with the run
        self.labelled = all(label is not None for *_, label in self.rows)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.channels, self.image_size, self.image_size)

    def load(self) -> Splits:
        path = self.captions_path
        captions: dict[str, list[str]] = {}
        labels: dict[str, str | None] = {}
        for number, file, caption, label in self.rows:
            image = self.root / file
            if not inside(image, self.root):  # `../x.png`, an absolute path, or a link out of the folder
                raise ConfigError(
                    f"{path} line {number} names {file}, which lies outside {self.root}; captions may name only "
                    "images inside data.root."
                )
            if not image.is_file():
                raise FileNotFoundError(
                    f"{path} line {number} names {file}, which is not in {self.root}; fix the name or remove the line."
                )
            key = os.path.realpath(image)  # one image, however many names reach it
            if key in labels and labels[key] != label:
                raise ConfigError(f"{path} line {number} gives {file} the label {label!r}, another line {labels[key]!r}.")
            captions.setdefault(key, []).append(caption)
            labels[key] = label
        checked = CheckedFiles()
        files = [file for file in captions if checked(file)]
        if checked.skipped:
            rank_zero_warn(f"Skipped {len(checked.skipped)} file(s) named in {path}: " + "; ".join(checked.skipped))
        if len(files) < 3:
            raise ConfigError(f"{path} pairs captions with {len(files)} readable image(s); at least 3 are needed to split.")
        index = {name: i for i, name in enumerate(self.classes or [])}
        target = torch.tensor([IGNORE_INDEX if labels[f] is None else index[labels[f]] for f in files])
        labelled = bool((target != IGNORE_INDEX).all())
        stratify = target if labelled else None
        rest, test = split_index(len(files), 1.0 - self.test_fraction, self.seed, stratify,
                                 held_out=("test", "data.test_fraction"))
        train, val = split_index(
            len(rest), 1.0 - self.val_fraction / (1.0 - self.test_fraction), self.seed,
            None if stratify is None else stratify[rest], held_out=("validation", "data.val_fraction"),
        )
        for name, setting, held in (("test", "data.test_fraction", test), ("validation", "data.val_fraction", val)):
            if len(held) < 2:  # one pair would score a loss of 0 and a recall of 1, whatever the model
                raise ConfigError(
                    f"The {name} split would hold {len(held)} of {len(files)} images, and retrieval ranks each caption "
                    f"among at least 2; raise {setting}, or give more data."
                )
        load = LoadImage(self.image_size, self.channels)

        def split(positions: torch.Tensor, train: bool) -> Captioned:
            chosen = positions.tolist()
            return Captioned([files[i] for i in chosen], [captions[files[i]] for i in chosen], target[positions],
                             self.max_len, train, self.caption_seed(train), load, self.tokenizer)

        return Splits(train=split(rest[train], True), val=split(rest[val], False), test=split(test, False),
                      labels=target[rest[train]] if labelled else None)
