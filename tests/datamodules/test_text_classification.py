"""Labelled texts: CSV and JSON Lines files give the same data, label names map to indices
kept with the run, bad records are named, and the embedded task has four balanced-enough
classes of documentation passages."""

import json

import pytest
import torch

from models.tokenizer import PAD, decode
from datamodules.text_classification import GROUPS, TextClassificationDataModule
from models.errors import ConfigError

TEXTS = [("a fine day", "weather"), ("import os", "code"), ("rain, then sun", "weather"), ("x = 1", "code")] * 10


def write(path, kind):
    if kind == "csv":
        lines = ["text,label"] + [f'"{text}",{label}' for text, label in TEXTS]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:
        path.write_text("\n".join(json.dumps({"text": t, "label": label}) for t, label in TEXTS) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_a_file_of_labelled_texts_becomes_padded_token_batches(tmp_path, kind):
    dm = TextClassificationDataModule(source=write(tmp_path / f"texts.{kind}", kind), max_len=12, val_fraction=0.1,
                                      test_fraction=0.2)
    assert dm.classes == ["code", "weather"] and dm.num_classes == 2 and dm.hparams["classes"] == ["code", "weather"]
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape[1] == 12 and batch["padding_mask"].shape == batch["input"].shape
    for tokens, mask, label in zip(batch["input"], batch["padding_mask"], batch["target"]):
        text = decode(tokens[~mask])
        assert bool((tokens[mask] == PAD).all())
        assert (text, dm.classes[int(label)]) in [(t[:12], lab) for t, lab in TEXTS]
    sizes = len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset)
    assert sizes == len(TEXTS)


@pytest.mark.parametrize(
    "content, message",
    [
        ("words,label\nhi,a\n", "needs a header with text and label columns"),
        ("text,label\n ,a\n", "record 1 has an empty text or label"),
        ('{"text": "hi"}\n', "line 1 is not a JSON object with text and label"),
    ],
)
def test_a_bad_record_is_named(tmp_path, content, message):
    path = tmp_path / ("texts.jsonl" if content.startswith("{") else "texts.csv")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        TextClassificationDataModule(source=str(path))


def test_the_embedded_task_is_four_parts_of_pythons_documentation():
    dm = TextClassificationDataModule(max_len=128)
    assert dm.classes == sorted(GROUPS) and dm.num_classes == 4
    counts = torch.bincount(torch.tensor([dm.classes.index(label) for _, label in dm.records]))
    assert counts.min() > 0.15 * counts.sum()  # no class is rare
    dm.setup("fit")
    assert len(dm.test_dataset) == pytest.approx(0.2 * len(dm.records), abs=2)
