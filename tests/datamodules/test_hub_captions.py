"""Image-caption pairs read with the `datasets` library: CLIP batches from the data's own splits,
class names from the label feature, several captions an image drawn by epoch, a fit through the
CLI, and a user's mistake in one line. All written here, offline."""

import pytest
import torch

from experiments.cli import DEFAULTS
from models.contract import IGNORE_INDEX
from models.errors import ConfigError


def hf():
    """The `datasets` library, imported when a test runs (not when the suite is collected)."""
    return pytest.importorskip("datasets")


FOLDER_CLIP = str(DEFAULTS.parent / "multimodal" / "folder_clip.yaml")
KINDS = ["red", "green"]  # the ClassLabel's order, not sorted


def shade(s: int) -> tuple[int, int, int]:
    return (s * 5) % 256, 255 - (s * 5) % 256, 7


def captioned(n: int, start: int, many: bool = False):
    """Rows start..start+n-1: row s a uniform image of colour `shade(s)`, of varied sizes, captioned
    with its number and class (three captions where `many`), its class `KINDS[s % 2]`."""
    datasets = hf()
    rows = range(start, start + n)
    pictures = [torch.tensor(shade(s), dtype=torch.uint8).expand(*((10, 14) if s % 3 else (12, 9)), 3).numpy()
                for s in rows]
    captions = [[f"square {s}", f"the {KINDS[s % 2]} square {s}", f"{s} is {KINDS[s % 2]}"] if many
                else f"a {KINDS[s % 2]} square number {s}" for s in rows]
    caption = datasets.List(datasets.Value("string")) if many else datasets.Value("string")
    features = datasets.Features({"image": datasets.Image(), "text": caption,
                                  "kind": datasets.ClassLabel(names=KINDS)})
    return datasets.Dataset.from_dict({"image": pictures, "text": captions, "kind": [s % 2 for s in rows]},
                                      features=features)


def number(dm, tokens: torch.Tensor, padding: torch.Tensor) -> int:
    """The row number a caption names."""
    return int(next(word for word in dm.tokenizer.decode(tokens[~padding]).split() if word.isdigit()))


def test_image_caption_pairs_saved_to_disk_give_clip_batches_from_their_own_splits_with_classlabel_classes(tmp_path):
    import pickle

    from datamodules import HubCaptionsDataModule

    saved = tmp_path / "pairs"
    hf().DatasetDict(train=captioned(24, start=0), test=captioned(6, start=100)).save_to_disk(str(saved))
    dm = HubCaptionsDataModule(path=str(saved), caption_column="text", label_column="kind", image_size=8,
                               max_len=32, val_fraction=0.25, num_workers=0)
    assert dm.classes == KINDS and dm.hparams["classes"] == KINDS and dm.num_classes == 2 and dm.labelled
    assert dm.zeroshot_prompts()[1][0] == "a photo of a green." and dm.input_shape == (3, 8, 8)
    dm.setup("fit")
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [18, 6, 6]
    mean, std = torch.tensor(dm.mean).view(-1, 1, 1), torch.tensor(dm.std).view(-1, 1, 1)
    seen = {}
    for split in ("train", "val", "test"):
        batch = next(iter(getattr(dm, f"{split}_dataloader")()))
        assert set(batch) == {"input", "text", "text_padding_mask", "caption_id", "target"}
        size = len(getattr(dm, f"{split}_dataset"))
        assert batch["input"].shape == (size, 3, 8, 8) and batch["input"].dtype == torch.float32
        assert batch["text"].shape == batch["text_padding_mask"].shape == (size, 32)
        assert batch["caption_id"].shape == batch["target"].shape == (size,)
        seen[split] = [number(dm, t, m) for t, m in zip(batch["text"], batch["text_padding_mask"])]
        # Each image with its own caption and class: the caption's number is the row the image's colour shows.
        for image, s, target in zip(batch["input"], seen[split], batch["target"].tolist()):
            expected = (torch.tensor(shade(s), dtype=torch.float32).view(-1, 1, 1) / 255 - mean) / std
            assert torch.allclose(image, expected.expand_as(image), atol=1e-5) and target == s % 2
    test = dm.test_dataset.dataset
    assert [dm.tokenizer.decode(t[~m]) for t, m in zip(test.tokens, test.padding)] == [
        f"a {KINDS[s % 2]} square number {s}" for s in range(100, 106)]  # the data's own test split, in order
    assert sorted(seen["train"] + seen["val"]) == list(range(24))  # validation carved from its train split
    assert sorted(dm.val_dataset.dataset.labels.tolist()) == [0, 0, 0, 1, 1, 1]  # stratified
    # Loader workers receive the samples pickled: the image loader travels with them.
    again = pickle.loads(pickle.dumps(dm.val_dataset))
    assert torch.equal(again[3]["input"], dm.val_dataset[3]["input"])


def test_a_list_of_captions_gives_each_training_image_one_of_them_seeded_by_epoch(tmp_path):
    from datamodules import HubCaptionsDataModule

    captioned(30, start=0, many=True).save_to_disk(str(tmp_path / "pairs"))  # one split: litlab carves the others
    dm = HubCaptionsDataModule(path=str(tmp_path / "pairs"), caption_column="text", image_size=8, num_workers=0,
                               val_fraction=0.2, test_fraction=0.2)
    assert dm.classes is None and not dm.labelled  # no label_column: no classes unless data.classes names them
    with pytest.raises(ConfigError, match="give them as data.classes"):
        dm.zeroshot_prompts()
    dm.setup("fit")
    assert [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)] == [18, 6, 6]
    assert (dm.train_dataset.dataset.labels == IGNORE_INDEX).all()

    def captions(dataset, epoch: int) -> list[str]:
        dataset.epoch = epoch
        samples = [dataset[i] for i in range(len(dataset))]
        return [dm.tokenizer.decode(s["text"][~s["text_padding_mask"]]) for s in samples]

    train = dm.train_dataset
    epochs = [captions(train, epoch) for epoch in range(10)]
    assert epochs[0] != epochs[1] and epochs[0] == captions(train, 0)  # a new draw each epoch, the same on a rerun
    for row, drawn in zip(train.dataset.images, zip(*epochs)):  # each image draws among its own captions only
        assert 2 <= len(set(drawn)) and set(drawn) <= {f"square {row}", f"the {KINDS[row % 2]} square {row}",
                                                       f"{row} is {KINDS[row % 2]}"}
    assert captions(dm.val_dataset, 0) == captions(dm.val_dataset, 3)  # evaluation keeps one


@pytest.mark.slow
def test_clip_fits_on_hub_captions_through_the_cli(cli, tmp_path):
    saved = tmp_path / "pairs"
    hf().DatasetDict(train=captioned(16, start=0), test=captioned(4, start=50)).save_to_disk(str(saved))
    run = cli("fit", "--config", FOLDER_CLIP, "--data=datamodules.HubCaptionsDataModule", f"--data.path={saved}",
              "--data.caption_column=text", "--data.label_column=kind", "--data.image_size=8", "--data.max_len=32",
              "--data.val_fraction=0.25", "--data.batch_size=8", "--data.num_workers=0",
              "--model.image_backbone.channels=[8]", "--model.text_backbone.d_model=16",
              "--model.text_backbone.depth=1", "--model.text_backbone.heads=2", "--model.text_backbone.max_len=32",
              "--model.embed_dim=16", "--trainer.max_epochs=1")
    assert run.trainer.global_step == 2 and run.datamodule.classes == KINDS  # 12 training images, batches of 8
    assert len(run.datamodule.test_dataset) == 4  # its own test split
    assert run.trainer.checkpoint_callback.best_model_score is not None  # chosen by val/loss: validation ran
    metrics = set(run.trainer.callback_metrics)
    assert {"test/loss", "test/i2t_recall@1", "test/t2i_recall@1", "test/zeroshot_acc"} <= metrics


def test_a_missing_caption_column_is_one_line_naming_the_columns_there_are(tmp_path, litlab_main, monkeypatch):
    saved = tmp_path / "pairs"
    hf().DatasetDict(train=captioned(8, start=0)).save_to_disk(str(saved))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    code, _, err = litlab_main("fit", "--config", FOLDER_CLIP, "--data=datamodules.HubCaptionsDataModule",
                               f"--data.path={saved}", "--data.num_workers=0")  # caption_column: caption
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("litlab: error:")]
    assert line.endswith(f"data.caption_column 'caption' is not a column of {saved}; its columns are image, text, "
                         "kind.")


def test_captions_that_are_not_texts_empty_or_too_few_to_rank_are_each_one_sentence(tmp_path):
    from datamodules import HubCaptionsDataModule

    data = captioned(10, start=0)
    data.save_to_disk(str(tmp_path / "pairs"))
    with pytest.raises(ConfigError, match=r"^data.caption_column 'kind' of .*pairs holds ClassLabel\(.*\), not texts "
                                          r"or lists of texts; name a column of captions\.$"):
        HubCaptionsDataModule(path=str(tmp_path / "pairs"), caption_column="kind")
    blank = data.map(lambda row, i: {"text": "  " if i == 6 else row["text"]}, with_indices=True)
    blank.save_to_disk(str(tmp_path / "blank"))
    with pytest.raises(ConfigError, match=r"^Image 7 of the train split of .*blank has an empty caption in 'text'; "):
        HubCaptionsDataModule(path=str(tmp_path / "blank"), caption_column="text")
    # 10 images: a val_fraction of 0.1 would leave validation one image, and one pair always ranks first.
    dm = HubCaptionsDataModule(path=str(tmp_path / "pairs"), caption_column="text", val_fraction=0.1,
                               test_fraction=0.2, num_workers=0)
    with pytest.raises(ConfigError, match=r"^The validation split would hold 1 of 10 images, and retrieval ranks each "
                                          r"caption among at least 2; raise data.val_fraction, or give more data\.$"):
        dm.setup("fit")
    hf().DatasetDict(train=data, validation=captioned(1, start=20)).save_to_disk(str(tmp_path / "own"))
    dm = HubCaptionsDataModule(path=str(tmp_path / "own"), caption_column="text", num_workers=0)
    with pytest.raises(ConfigError, match=r"^The validation split of .*own holds 1 image\(s\), and retrieval ranks"):
        dm.setup("fit")
