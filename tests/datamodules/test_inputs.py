import os

import pytest
import torch
from torchvision.io import write_png

from datamodules import DataModule, DigitsDataModule
from datamodules.inputs import image_inputs
from models.errors import ConfigError


def images(folder, *names: str) -> list[str]:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        write_png(torch.full((1, 8, 8), 128, dtype=torch.uint8), str(folder / name))
    return [str(folder / name) for name in names]


def test_a_folder_a_file_and_a_list_name_their_images_in_order(tmp_path):
    a, b = images(tmp_path, "z/a.png", "b.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"Skipped 1 of the files --inputs names: .*broken.png \(unreadable"):
        assert image_inputs(tmp_path) == [b, a]  # sorted by path
    assert image_inputs(b) == [b]
    (tmp_path / "list.txt").write_text("z/a.png\n# a comment\n\nb.png\n")
    assert image_inputs(tmp_path / "list.txt") == [a, b]


@pytest.mark.parametrize("line, message", [
    ("../outside.png", "list.txt line 2 names ../outside.png, which lies outside"),
    ("missing.png", "list.txt line 2 names missing.png, which is not a file in"),
])
def test_a_list_naming_a_file_outside_its_folder_or_none_is_refused_with_its_line(tmp_path, line, message):
    images(tmp_path, "outside.png", "in/a.png")
    (tmp_path / "in" / "list.txt").write_text(f"a.png\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        image_inputs(tmp_path / "in" / "list.txt")


def test_a_link_out_of_the_inputs_folder_is_not_followed(tmp_path):
    inputs = tmp_path / "in"
    (outside,) = images(tmp_path, "outside.png")
    (own,) = images(inputs, "a.png")
    os.symlink(outside, inputs / "link.png")
    with pytest.warns(UserWarning, match="a link out of"):
        assert image_inputs(inputs) == [own]


def test_nothing_readable_or_nothing_there_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ConfigError, match=r"--inputs .* does not exist; give an image folder"):
        image_inputs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"--inputs .*empty names no readable image"):
        image_inputs(tmp_path / "empty")


def test_new_images_are_served_as_the_test_split_is_normalised(tmp_path):
    (path,) = images(tmp_path, "a.png")
    data = DigitsDataModule(view="sequence")
    data.setup("predict")
    data.read_inputs(path)
    batch = next(iter(data.predict_dataloader()))
    expected = (torch.full((8, 8), 128 / 255) - data.mean[0]) / data.std[0]  # rows as a sequence, as trained
    assert batch["input"].shape == (1, 8, 8) and torch.allclose(batch["input"][0], expected)


def test_data_that_cannot_read_new_inputs_says_so():
    class Tabular(DataModule):  # a user's own DataModule, with a test split and nothing to read new inputs
        pass

    with pytest.raises(ConfigError, match="^Tabular cannot read new inputs to predict on; leave out --inputs"):
        Tabular().read_inputs("rows.csv")
