"""Texts with labels, for classifying text with a (pretrained) token Transformer.

A user's data is a CSV file with `text` and `label` columns or a JSON Lines file of
{"text": ..., "label": ...}; labels are names, mapped to indices in sorted order and kept in
the run's hyperparameters (`classes`). Texts are tokens of the data's
`tokenizer`, cut to `max_len`, padded, with a `padding_mask`.

The embedded task needs no download: passages of Python's own documentation
(`pydoc_data.topics`) labelled by the part of the language reference their topic belongs
to, one of four groups (`GROUPS`): statements, expressions, built-in types, or the data
model. Each topic is cut into passages of `max_len` bytes; passages are split between
train, val and test at random (seeded, stratified), so the test asks which part of the
documentation an unseen passage comes from.

`tokenizer` is `bytes` (litlab's byte-level tokens, the default) or a Hugging Face tokenizer by
Hub id or folder: the pretrained model's own, with its special tokens ([CLS] ... [SEP]) added.
"""

import csv
import json
from functools import cached_property
from pathlib import Path

import torch

from datamodules.base import BatchScope, DataModule, Splits, Unlabelled, split_index
from datamodules.samples import TensorSamples, subset
from datamodules.text import read_utf8
from models.tokenizer import BYTES, load_tokenizer
from models.errors import ConfigError, check_positive

GROUPS = {
    "statements": ["assert", "assignment", "async", "augassign", "break", "class", "compound", "continue", "del",
                   "else", "for", "function", "global", "if", "import", "nonlocal", "pass", "raise", "return",
                   "try", "while", "with", "yield"],
    "expressions": ["atom-identifiers", "atom-literals", "attribute-references", "await", "binary", "bitwise",
                    "booleans", "calls", "comparisons", "conversions", "dict", "exprlists", "floating",
                    "formatstrings", "identifiers", "imaginary", "in", "integers", "lambda", "lists", "numbers",
                    "operator-summary", "power", "shifting", "slicings", "strings", "subscriptions", "unary"],
    "built-in types": ["bltin-code-objects", "bltin-ellipsis-object", "bltin-null-object", "bltin-type-objects",
                       "string-methods", "truth", "types", "typesfunctions", "typesmapping", "typesmethods",
                       "typesmodules", "typesseq", "typesseq-mutable"],
    "data model": ["attribute-access", "callable-types", "context-managers", "customization", "dynamic-features",
                   "exceptions", "execmodel", "id-classes", "naming", "numeric-types", "objects", "sequence-types",
                   "specialattrs", "specialnames"],
}


def read_records(path: Path) -> list[tuple[str, str]]:
    """(text, label) pairs of a CSV (`text`, `label` columns) or JSON Lines file."""
    text = read_utf8(path)
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    item = json.loads(line)
                    records.append((item["text"], str(item["label"])))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(f"{path} line {number} is not a JSON object with text and label.") from None
    else:
        rows = csv.DictReader(text.splitlines())
        if not {"text", "label"} <= set(rows.fieldnames or []):
            raise ConfigError(f"{path} needs a header with text and label columns; it has {rows.fieldnames}.")
        records = [(row["text"], row["label"]) for row in rows]
    for number, (body, label) in enumerate(records, 1):
        if not body or not body.strip() or not label:
            raise ConfigError(f"{path} record {number} has an empty text or label; fill it in or remove it.")
    if not records:
        raise ConfigError(f"{path} holds no record.")
    return records


def read_texts(path: str | Path) -> list[str]:
    """The texts to classify in `path`: a CSV with a `text` column, a JSON Lines file of
    {"text": ...}, or a .txt file of one text a line (blank lines left out); labels are ignored."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--inputs {path} is not a file; give a .csv with a text column, a .jsonl of "
                          '{"text": ...}, or a .txt of one text a line.')
    content = read_utf8(path)
    if path.suffix == ".jsonl":
        texts = []
        for number, line in enumerate(content.splitlines(), 1):
            if line.strip():
                try:
                    texts.append(str(json.loads(line)["text"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise ConfigError(f"{path} line {number} is not a JSON object with a text.") from None
    elif path.suffix == ".csv":
        rows = csv.DictReader(content.splitlines())
        if "text" not in (rows.fieldnames or []):
            raise ConfigError(f"{path} needs a header with a text column; it has {rows.fieldnames}.")
        texts = [row["text"] for row in rows]
    else:
        texts = [line for line in content.splitlines() if line.strip()]
    texts = [text for text in texts if text and text.strip()]
    if not texts:
        raise ConfigError(f"--inputs {path} holds no text to classify.")
    return texts


class TextClassificationDataModule(DataModule):
    """source: None for the embedded task, or a .csv / .jsonl file of labelled texts.
    tokenizer: `bytes`, or a Hugging Face tokenizer's Hub id or folder (a pretrained backbone's own).
    max_len: tokens a text keeps (the embedded passages are `max_len` bytes each)."""

    def __init__(
        self,
        source: str | None = None,
        tokenizer: str = BYTES,
        max_len: int = 128,
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
            test_fraction=test_fraction, val_fraction=val_fraction, label_fraction=label_fraction, unlabelled=unlabelled, batch_size=batch_size,
            batch_scope=batch_scope, num_workers=num_workers, seed=seed, folds=folds, fold=fold,
        )
        check_positive("TextClassificationDataModule", max_len=max_len)
        self.save_hyperparameters()
        self.source, self.max_len = source, max_len
        self.tokenizer = load_tokenizer(tokenizer)
        self.hparams["classes"] = self.classes  # the label names, in index order, saved with the run

    @cached_property
    def records(self) -> list[tuple[bytes, str]]:
        if self.source is not None:
            path = Path(self.source)
            if not path.is_file():
                raise ConfigError(f"No labelled text file at {path}; give a .csv or .jsonl file.")
            return [(text.encode("utf-8"), label) for text, label in read_records(path)]
        from pydoc_data.topics import topics

        passages = []
        for group, names in GROUPS.items():
            for name in names:
                body = topics[name].encode("utf-8")
                passages += [(body[i : i + self.max_len], group) for i in range(0, len(body), self.max_len)]
        return passages

    @cached_property
    def classes(self) -> list[str]:
        return sorted({label for _, label in self.records})

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(2, self.max_len, dtype=torch.long)

    def read_inputs(self, path: str) -> None:
        """Classify the texts `path` holds (see `read_texts`) instead of the test split."""
        self.predict_names = read_texts(path)

    def predict_dataloader(self):
        if self.predict_names is None:
            return super().predict_dataloader()
        tokens, padding = self.tokenizer.tokenize(self.predict_names, self.max_len)
        return self._loader(TensorSamples(input=tokens, padding_mask=padding))

    def load(self) -> Splits:
        index = {name: i for i, name in enumerate(self.classes)}
        tokens, padding = self.tokenizer.tokenize([body for body, _ in self.records], self.max_len)  # (N, T) each
        labels = torch.tensor([index[label] for _, label in self.records])
        data = TensorSamples(input=tokens, target=labels, padding_mask=padding)
        rest, test = split_index(len(labels), 1.0 - self.test_fraction, self.seed, labels,
                                 held_out=("test", "data.test_fraction"))
        train, val = split_index(len(rest), 1.0 - self.val_fraction / (1.0 - self.test_fraction), self.seed, labels[rest],
                                 held_out=("validation", "data.val_fraction"))
        return Splits(train=subset(data, rest[train]), val=subset(data, rest[val]), test=subset(data, test),
                      labels=labels[rest[train]])
