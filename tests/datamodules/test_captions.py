"""Image-caption pairs: the captioned digits and a user's captioned folder, in both file formats."""

import re

import pytest
import torch

from datamodules import CaptionedDigitsDataModule, CaptionedFolderDataModule, DigitsDataModule
from datamodules.captions import TRAIN_TEMPLATES, WORDS, ZEROSHOT_TEMPLATES
from models.contract import IGNORE_INDEX
from models.tokenizer import decode
from experiments.cli import DEFAULTS
from models.errors import ConfigError

FOLDER_CLIP = str(DEFAULTS.parent / "multimodal" / "folder_clip.yaml")


def texts(batch) -> list[str]:
    return [decode(row) for row in batch["text"]]


def captions_of(dataset, epoch: int) -> list[str]:
    dataset.epoch = epoch
    return [decode(dataset[i]["text"]) for i in range(len(dataset))]


@pytest.fixture
def digits() -> CaptionedDigitsDataModule:
    dm = CaptionedDigitsDataModule()
    dm.setup("fit")
    return dm


def test_captioned_digits_share_the_digits_split_and_caption_each_image_with_its_class(digits):
    plain = DigitsDataModule()
    plain.setup("fit")
    assert torch.equal(digits.test_dataset.dataset.labels, plain.test_dataset.fields["target"])
    batch = next(iter(digits.val_dataloader()))
    assert batch["input"].shape[1:] == (1, 8, 8) and batch["text"].shape[1] == digits.max_len
    for text, label in zip(texts(batch), batch["target"].tolist()):
        assert str(label) in text.split() or WORDS[label] in re.split(r"[ ,]", text), text


def test_a_training_image_draws_a_caption_per_epoch_repeatably_and_evaluation_keeps_one(digits):
    train = digits.train_dataset
    first, second = captions_of(train, 0), captions_of(train, 1)
    assert first != second and first == captions_of(train, 0)
    assert len({text for text in first}) > 100  # templates, classes and ink words mixed
    assert captions_of(digits.val_dataset, 0) == captions_of(digits.val_dataset, 5)


def test_ink_words_follow_the_ink_of_the_image(digits):
    train = digits.train_dataset
    ink = {"thin": [], "thick": []}
    for i in range(len(train)):
        sample = train[i]
        text = decode(sample["text"])
        for word in ink:
            if f"{word} " in text:
                ink[word].append(train.dataset.images[i].mean())
    assert ink["thin"] and ink["thick"]
    assert max(ink["thin"]) < min(ink["thick"])


def test_zero_shot_prompts_use_phrasings_no_training_caption_has(digits):
    prompts = digits.zeroshot_prompts()
    assert len(prompts) == 10 and all(len(p) == len(ZEROSHOT_TEMPLATES) for p in prompts)
    assert "a photo of the number seven." in prompts[7]
    # Every phrasing, with its class and ink words taken out, against every training phrasing.
    def skeleton(text: str) -> str:
        words = [w for w in re.split(r"([ ,.])", text) if w not in {*WORDS, *map(str, range(10)), "thin", "thick"}]
        return re.sub(r" +", " ", "".join(words)).strip()

    training = {skeleton(t.format(ink="", numeral="7", word="seven")) for t in TRAIN_TEMPLATES}
    assert not training & {skeleton(p) for per_class in prompts for p in per_class}
    tokens, padding = digits.zeroshot_tokens()
    assert tokens.shape == padding.shape == (10, len(ZEROSHOT_TEMPLATES), digits.max_len)
    assert decode(tokens[7, 0][~padding[7, 0]]) == prompts[7][0]


def test_prompt_templates_from_the_config_or_a_file(tmp_path):
    dm = CaptionedDigitsDataModule(prompts=["digit {numeral}", "{}"])
    assert dm.zeroshot_prompts()[3] == ["digit 3", "three"]
    (tmp_path / "prompts.txt").write_text("a {} on paper\n\nthe number {numeral}\n")
    assert CaptionedDigitsDataModule(prompts_file=str(tmp_path / "prompts.txt")).zeroshot_prompts()[1] == [
        "a one on paper", "the number 1"]
    with pytest.raises(ConfigError, match="names a field"):
        CaptionedDigitsDataModule(prompts=["a {colour} {}"]).zeroshot_prompts()


@pytest.mark.parametrize("jsonl", [False, True], ids=["csv", "jsonl"])
def test_a_captioned_folder_gives_images_captions_and_labels(datasets_on_disk, tmp_path, jsonl):
    datasets_on_disk.captioned_folder(tmp_path, classes=3, per_class=10, jsonl=jsonl)
    dm = CaptionedFolderDataModule(str(tmp_path), image_size=16, num_workers=0, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    assert dm.classes == ["class_0", "class_1", "class_2"] and dm.labelled
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (18, 6, 6)
    batch = next(iter(dm.val_dataloader()))
    assert batch["input"].shape == (6, 3, 16, 16) and batch["input"].dtype == torch.float32
    for text, label in zip(texts(batch), batch["target"].tolist()):
        assert f"class_{label}" in text  # each image's caption, with its label
    # Each training image has two captions, and over epochs it is shown both.
    seen = {text for epoch in range(6) for text in captions_of(dm.train_dataset, epoch)}
    assert len(seen) == 2 * 3


def test_identical_captions_share_a_caption_id(datasets_on_disk, tmp_path):
    datasets_on_disk.captioned_folder(tmp_path, classes=2, per_class=10)
    dm = CaptionedFolderDataModule(str(tmp_path), image_size=8, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    same_text = torch.tensor([[a == b for b in texts(batch)] for a in texts(batch)])
    assert torch.equal(batch["caption_id"][:, None] == batch["caption_id"][None, :], same_text)


def test_a_caption_naming_a_missing_image_gives_one_clear_error(datasets_on_disk, tmp_path, litlab_main):
    datasets_on_disk.captioned_folder(tmp_path / "images", classes=2, per_class=4)
    with (tmp_path / "images" / "captions.csv").open("a") as f:
        f.write("class_0/gone.png,a square that is not there,class_0\n")
    code, _, err = litlab_main("fit", "--config", FOLDER_CLIP,
                               f"--data.root={tmp_path / 'images'}", "--data.num_workers=0")
    assert code == 2
    assert re.search(r"captions\.csv line 18 names class_0/gone\.png, which is not in .*images; fix the name", err)
    assert "Traceback" not in err


def test_an_empty_caption_and_a_file_without_the_columns_are_refused(datasets_on_disk, tmp_path):
    datasets_on_disk.captioned_folder(tmp_path, classes=2, per_class=2)
    with (tmp_path / "captions.csv").open("a") as f:
        f.write("class_0/0.png,  ,class_0\n")
    with pytest.raises(ConfigError, match=r"line 10 has an empty caption for 'class_0/0.png'"):
        CaptionedFolderDataModule(str(tmp_path))
    (tmp_path / "captions.csv").write_text("image,text\na.png,hello\n")
    with pytest.raises(ConfigError, match="needs a header with file and caption columns"):
        CaptionedFolderDataModule(str(tmp_path))


def test_unreadable_images_are_listed_and_skipped(datasets_on_disk, tmp_path):
    datasets_on_disk.captioned_folder(tmp_path, classes=2, per_class=6)
    (tmp_path / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with (tmp_path / "captions.csv").open("a") as f:
        f.write("class_1/broken.png,a broken square,class_1\n")
    dm = CaptionedFolderDataModule(str(tmp_path), image_size=8, num_workers=0, val_fraction=0.2)
    with pytest.warns(UserWarning, match=r"broken\.png \(unreadable"):
        dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset) == 12


def test_without_labels_zero_shot_needs_class_names(datasets_on_disk, tmp_path):
    datasets_on_disk.captioned_folder(tmp_path, classes=2, per_class=4)
    lines = (tmp_path / "captions.csv").read_text().splitlines()
    (tmp_path / "captions.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    dm = CaptionedFolderDataModule(str(tmp_path), image_size=8, num_workers=0, val_fraction=0.25)
    dm.setup("fit")
    assert dm.num_classes is None and not dm.labelled
    assert (dm.train_dataset.dataset.labels == IGNORE_INDEX).all()
    with pytest.raises(ConfigError, match="give them as data.classes"):
        dm.zeroshot_prompts()
    named = CaptionedFolderDataModule(str(tmp_path), classes=["class_0", "class_1"])
    assert named.zeroshot_prompts()[1][0] == "a photo of a class_1."


@pytest.mark.parametrize("name", ["../outside.png", "{outside}", "class_0/out.png"],
                         ids=["parent", "absolute", "link-out"])
def test_a_caption_naming_an_image_outside_the_folder_is_refused_with_its_line(datasets_on_disk, tmp_path, name):
    root = datasets_on_disk.captioned_folder(tmp_path / "images", classes=2, per_class=4)
    datasets_on_disk.image_folder(tmp_path / "elsewhere", classes=1, per_class=1)
    (outside,) = (tmp_path / "elsewhere").rglob("*.png")
    (tmp_path / "outside.png").write_bytes(outside.read_bytes())
    (root / "class_0" / "out.png").symlink_to(outside)
    with (root / "captions.csv").open("a") as f:
        f.write(f"{name.format(outside=outside)},a square from elsewhere,class_0\n")
    dm = CaptionedFolderDataModule(str(root), image_size=8, num_workers=0)
    with pytest.raises(ConfigError, match=r"captions\.csv line 18 names .*, which lies outside .*images; captions may "
                                          r"name only images inside data.root"):
        dm.setup("fit")


def test_one_image_under_two_names_is_one_image(datasets_on_disk, tmp_path):
    root = datasets_on_disk.captioned_folder(tmp_path, classes=2, per_class=10)
    first = sorted((root / "class_0").glob("*.png"))[0]
    (root / "class_0" / "alias.png").symlink_to(first.name)
    with (root / "captions.csv").open("a") as f:
        f.write("class_0/alias.png,the same square again,class_0\n")
    dm = CaptionedFolderDataModule(str(root), image_size=8, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset) == 20


def test_a_held_out_split_of_one_image_is_refused_by_its_setting(datasets_on_disk, tmp_path):
    # Unlabelled (no class count to check against): 12 images, a val_fraction of 0.1 leaves the validation split one.
    datasets_on_disk.captioned_folder(tmp_path, classes=3, per_class=4)
    lines = (tmp_path / "captions.csv").read_text().splitlines()
    (tmp_path / "captions.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    with pytest.raises(ConfigError, match=r"^The validation split would hold 1 of 12 images, and retrieval ranks each "
                                          r"caption among at least 2; raise data.val_fraction, or give more data.$"):
        CaptionedFolderDataModule(str(tmp_path), image_size=16, val_fraction=0.1, test_fraction=0.2).setup("fit")
    dm = CaptionedFolderDataModule(str(tmp_path), image_size=16, val_fraction=0.2, test_fraction=0.2)
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (8, 2, 2)
