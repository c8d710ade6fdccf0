"""Data read with the `datasets` library: a dataset saved to disk and a Parquet file train a text
classifier, images saved to disk come out in FolderDataModule's shape and normalisation, class
names come from the label feature, and a user's mistake is one line. All written here, offline."""

import random
import sys

import pytest
import torch

from datamodules.hub import HubDataModule
from datamodules.transforms import Augmentation
from experiments.cli import DEFAULTS
from models.errors import ConfigError
from models.tokenizer import VOCAB_SIZE, decode


def hf():
    """The `datasets` library, imported when a test runs (not when the suite is collected)."""
    return pytest.importorskip("datasets")


TRANSFORMER = str(DEFAULTS.parent / "digits" / "transformer.yaml")
WORDS = {"weather": ["sunny", "rain", "cloudy", "windy", "storm", "fog", "snow", "mild"],
         "code": ["x = 1", "def f():", "return y", "import os", "if a:", "for i in r:", "print(x)", "a[0] += 2"]}
NAMES = ["weather", "code"]  # the ClassLabel's order, not sorted: index 0 is weather


def texts(n: int, seed: int) -> tuple[list[str], list[int]]:
    """`n` texts of three weather words or three lines of code, alternating, seeded."""
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    return [" ".join(rng.choice(WORDS[NAMES[label]]) for _ in range(3)) for label in labels], labels


def text_split(n: int, seed: int, labels: list[int] | None = None):
    body, own = texts(n, seed)
    datasets = hf()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)})
    return datasets.Dataset.from_dict({"text": body, "label": own if labels is None else labels}, features=features)


def fit_tokens(cli, path, *args: str):
    """A small token Transformer classifier fitted on `path` through the CLI."""
    return cli("fit", "--config", TRANSFORMER, "--data=datamodules.HubDataModule", f"--data.path={path}",
               "--data.max_len=32", "--data.batch_size=16", "--model.backbone.input=tokens",
               "--model.backbone.max_len=32", "--model.backbone.d_model=32", "--model.backbone.depth=1", *args)


@pytest.mark.slow
def test_a_hub_dataset_saved_to_disk_trains_a_text_classifier_with_its_own_splits_and_class_names(cli, tmp_path):
    saved = tmp_path / "saved"
    hf().DatasetDict(train=text_split(160, seed=0), test=text_split(40, seed=1)).save_to_disk(str(saved))
    run = fit_tokens(cli, saved, "--data.text_column=text", "--trainer.max_epochs=3")
    dm = run.datamodule
    assert dm.classes == NAMES and run.model.head.out_features == 2  # the ClassLabel's names, in its order
    assert run.model.backbone.embed.num_embeddings == VOCAB_SIZE  # linked from the data's tokenizer
    assert len(dm.test_dataset) == 40 and len(dm.train_dataset) + len(dm.val_dataset) == 160  # its own test split
    test = dm.test_dataset.fields
    body, labels = texts(40, seed=1)
    assert [decode(t[~m]) for t, m in zip(test["input"], test["padding_mask"])] == body
    assert test["target"].tolist() == labels
    assert float(run.trainer.callback_metrics["test/acc"]) >= 0.9  # chance is 0.5


@pytest.mark.slow
def test_a_parquet_file_of_texts_and_string_labels_trains_with_the_seeded_stratified_split(cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    body, labels = texts(50, seed=2)
    path = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"sentence": body, "topic": [NAMES[label] for label in labels]}), path)
    run = fit_tokens(cli, path, "--data.text_column=sentence", "--data.label_column=topic", "--trainer.max_epochs=1")
    dm = run.datamodule
    assert dm.classes == ["code", "weather"] and dm.hparams["classes"] == ["code", "weather"]  # sorted label values
    assert run.trainer.global_step > 0
    # 20% test and 10% validation of all 50, each holding both classes in equal number.
    sizes = [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)]
    assert sizes == [35, 5, 10]
    assert dm.test_dataset.fields["target"].bincount().tolist() == [5, 5]
    assert set(dm.val_dataset.fields["target"].tolist()) == {0, 1}
    seen = {decode(t[~m]) for split in (dm.train_dataset, dm.val_dataset, dm.test_dataset)
            for t, m in zip(split.fields["input"], split.fields["padding_mask"])}
    assert seen == set(body)  # every sample in one split or another


def test_class_names_come_from_the_classlabel_and_a_test_split_without_labels_is_carved_from_train(tmp_path):
    saved = tmp_path / "glue_like"
    # A benchmark's test split hides its labels (-1); the training split is then split three ways.
    splits = dict(train=text_split(60, seed=0), validation=text_split(10, seed=3),
                  test=text_split(10, seed=4, labels=[-1] * 10))
    hf().DatasetDict(splits).save_to_disk(str(saved))
    dm = HubDataModule(path=str(saved), text_column="text", max_len=32)
    assert dm.classes == NAMES and dm.num_classes == 2 and dm.vocab_size == VOCAB_SIZE
    assert dm.example_input.shape == (2, 32) and dm.example_input.dtype == torch.long
    dm.setup("fit")
    assert len(dm.val_dataset) == 10 and len(dm.test_dataset) == 12 and len(dm.train_dataset) == 48
    for tokens, mask, target in zip(*(dm.test_dataset.fields[k] for k in ("input", "padding_mask", "target"))):
        assert decode(tokens[~mask]).split()[0] in " ".join(WORDS[dm.classes[int(target)]]).split()


def images(n: int, channels: int):
    """`n` uniform images of two classes, of varied sizes, stored as PNG by the Image feature."""
    colour = {1: [30, 220], 3: [(255, 0, 128), (0, 255, 64)]}[channels]
    arrays = []
    for i in range(n):
        shape = (10, 14) if i % 3 else (12, 9)
        arrays.append(torch.tensor(colour[i % 2], dtype=torch.uint8).expand(*shape, channels).squeeze(-1).numpy())
    datasets = hf()
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["dark", "light"])})
    return datasets.Dataset.from_dict({"picture": arrays, "kind": [i % 2 for i in range(n)]}, features=features), colour


@pytest.mark.parametrize("channels", [1, 3])
def test_an_image_dataset_saved_to_disk_gives_batches_of_the_configured_shape_and_normalisation(tmp_path, channels):
    data, colour = images(40, channels)
    data.save_to_disk(str(tmp_path / "images"))  # one split: litlab splits it
    dm = HubDataModule(path=str(tmp_path / "images"), image_column="picture", label_column="kind", image_size=8,
                       channels=channels, augment=Augmentation(horizontal_flip=True, views=2), batch_size=64)
    assert dm.classes == ["dark", "light"] and dm.vocab_size is None and dm.example_input.shape == (2, channels, 8, 8)
    dm.setup("fit")
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [28, 4, 8]
    mean = torch.tensor(dm.mean).view(-1, 1, 1)
    std = torch.tensor(dm.std).view(-1, 1, 1)
    expected = [((torch.tensor(c, dtype=torch.float32) / 255).view(-1, 1, 1) - mean) / std for c in colour]
    batch = next(iter(dm.test_dataloader()))
    assert batch["input"].shape == (8, channels, 8, 8) and batch["input"].dtype == torch.float32
    for image, target in zip(batch["input"], batch["target"]):
        assert torch.allclose(image, expected[int(target)].expand_as(image), atol=1e-5)
    train = next(iter(dm.train_dataloader()))  # the augmentation recipe's two views
    assert len(train["views"]) == 2 and train["views"][0].shape == (28, channels, 8, 8)


def test_a_folder_with_a_script_beside_its_data_is_read_by_the_csv_loader_and_the_script_never_runs(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    marker = tmp_path / "ran"
    # The layout of a dataset with a loading script: a .py named after its folder.
    (folder / "texts.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    body, labels = texts(20, seed=5)
    (folder / "train.csv").write_text("text,label\n" + "".join(f"{t},{NAMES[y]}\n" for t, y in zip(body, labels)))
    dm = HubDataModule(path=str(folder), text_column="text")
    assert dm.classes == ["code", "weather"] and len(dm.splits["train"]) == 20
    assert not marker.exists()


def test_a_missing_column_is_one_line_naming_the_columns_there_are(tmp_path, litlab_main, monkeypatch):
    saved = tmp_path / "saved"
    hf().DatasetDict(train=text_split(20, seed=0)).save_to_disk(str(saved))
    with pytest.raises(ConfigError, match=r"^data.label_column 'topic' is not a column of .*saved; its columns are "
                                          r"text, label\.$"):
        HubDataModule(path=str(saved), text_column="text", label_column="topic")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    code, _, err = litlab_main("fit", "--config", TRANSFORMER, "--data=datamodules.HubDataModule",
                               f"--data.path={saved}", "--data.text_column=body")
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("litlab: error:")]
    assert line.endswith(f"data.text_column 'body' is not a column of {saved}; its columns are text, label.")


def test_an_unreachable_hub_id_is_one_line_pointing_to_save_to_disk_and_local_files(monkeypatch):
    monkeypatch.setattr(hf().config, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets: no network tries
    with pytest.raises(ConfigError) as refused:
        HubDataModule(path="someone/reviews", text_column="text")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("data.path someone/reviews is neither a file or folder here")
    assert "save_to_disk(FOLDER)" in message and "local .csv / .jsonl / .parquet files" in message


def test_without_the_datasets_library_the_fix_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'litlab\[datasets\]'"):
        HubDataModule(path=str(tmp_path), text_column="text")
