"""A user's own PNG folders, in both layouts, with the files a real folder has in it."""

import shutil

import pytest
import torch

from datamodules import FolderDataModule


def loaded(root, **kwargs) -> FolderDataModule:
    dm = FolderDataModule(root=str(root), num_workers=0, **{"image_size": 16, **kwargs})
    dm.setup("fit")
    return dm


def test_one_folder_is_split_by_seeded_fractions(datasets_on_disk, tmp_path):
    datasets_on_disk.image_folder(tmp_path, classes=3, per_class=20)
    dm = loaded(tmp_path, test_fraction=0.25, val_fraction=0.2)
    assert dm.classes == ["class_0", "class_1", "class_2"] and dm.num_classes == 3
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (36, 9, 15)
    batch = next(iter(dm.train_dataloader()))
    x, y = batch["input"], batch["target"]
    assert x.shape == (36, 3, 16, 16)
    assert x.dtype == torch.float32 and y.max() < 3
    again = loaded(tmp_path, test_fraction=0.25, val_fraction=0.2)
    assert dm.test_dataset.dataset.indices == again.test_dataset.dataset.indices


def test_train_val_test_folders_are_used_as_given(datasets_on_disk, tmp_path):
    for split in ("train", "val", "test"):
        datasets_on_disk.image_folder(tmp_path / split, classes=2, per_class=4)
    dm = loaded(tmp_path, image_size=8)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (8, 8, 8)
    assert next(iter(dm.test_dataloader()))["input"].shape == (8, 3, 8, 8)


def test_without_val_folder_validation_is_carved_from_train(datasets_on_disk, tmp_path):
    datasets_on_disk.image_folder(tmp_path / "train", classes=2, per_class=10)
    datasets_on_disk.image_folder(tmp_path / "test", classes=2, per_class=3)
    dm = loaded(tmp_path, val_fraction=0.2)
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (16, 4, 6)


def test_non_images_and_broken_images_are_reported_by_name_and_skipped(datasets_on_disk, tmp_path):
    datasets_on_disk.image_folder(tmp_path, classes=2, per_class=10)
    (tmp_path / "class_0" / "notes.txt").write_text("not an image")
    (tmp_path / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.warns(UserWarning) as warned:
        dm = loaded(tmp_path)
    message = " ".join(str(w.message) for w in warned)
    assert "notes.txt (not an image)" in message and "broken.png (unreadable" in message
    assert len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset) == 20
    assert len(list(iter(dm.train_dataloader()))) > 0  # nothing left in that would crash a batch


def test_grayscale_and_user_statistics(datasets_on_disk, tmp_path):
    datasets_on_disk.image_folder(tmp_path, classes=2, per_class=10)
    dm = loaded(tmp_path, channels=1, mean=[0.0], std=[1.0])
    x = next(iter(dm.test_dataloader()))["input"]
    assert x.shape[1:] == (1, 16, 16) and x.min() >= 0 and x.max() <= 1


def test_folder_mistakes_are_named(datasets_on_disk, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FolderDataModule(root=str(tmp_path / "nowhere"))
    datasets_on_disk.image_folder(tmp_path / "train", classes=2, per_class=4)
    with pytest.raises(FileNotFoundError, match="no test/"):
        loaded(tmp_path)
    datasets_on_disk.image_folder(tmp_path / "test", classes=3, per_class=4)
    with pytest.raises(FileNotFoundError, match="every split needs the same class folders"):
        loaded(tmp_path)
    shutil.rmtree(tmp_path / "train" / "class_1")
    with pytest.raises(FileNotFoundError, match="class folder"):
        FolderDataModule(root=str(tmp_path))


def test_links_never_loop_count_an_image_twice_or_reach_out_of_the_folder(datasets_on_disk, tmp_path):
    import os

    root = datasets_on_disk.image_folder(tmp_path / "images", classes=2, per_class=8)
    outside = datasets_on_disk.image_folder(tmp_path / "elsewhere", classes=2, per_class=3)
    (root / "class_1" / "loop").symlink_to("..")  # b/loop -> .. : torchvision's walk follows it 40 levels deep
    (root / "class_0" / "again.png").symlink_to(sorted((root / "class_0").glob("*.png"))[0])  # one image, two names
    (root / "class_0" / "out.png").symlink_to(sorted((outside / "class_0").glob("*.png"))[0])
    (root / "class_2").symlink_to(outside / "class_1", target_is_directory=True)  # a class folder elsewhere
    with pytest.warns(UserWarning) as warned:
        dm = loaded(root, val_fraction=0.25, test_fraction=0.25)
    assert dm.classes == ["class_0", "class_1"]
    assert len(dm.train_dataset) + len(dm.val_dataset) + len(dm.test_dataset) == 16  # each image once
    from datamodules.folder import LinkSafeImageFolder

    samples = LinkSafeImageFolder(str(root), loader=str, allow_empty=True).samples
    assert len({os.path.realpath(path) for path, _ in samples}) == len(samples) == 16
    assert all(os.path.realpath(path).startswith(str(root / f"class_{label}")) for path, label in samples)
    text = " ".join(str(w.message) for w in warned)
    for name in ("loop (a link to a folder", "again.png (a link to a file already counted)", "out.png (a link out of",
                 "class_2 (a link to a folder"):
        assert name in text, text


def test_a_split_too_small_for_one_image_of_each_class_is_one_line(datasets_on_disk, tmp_path):
    from models.errors import ConfigError

    datasets_on_disk.image_folder(tmp_path, classes=3, per_class=2)
    with pytest.raises(ConfigError, match=r"The test split would hold 1 of 6 samples, fewer than the 3 classes.*"
                                          r"raise data.test_fraction, or give more data"):
        loaded(tmp_path, test_fraction=0.2, val_fraction=0.2)
