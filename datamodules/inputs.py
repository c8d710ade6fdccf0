"""Image files read from disk: for a user's image folders, and for `litlab predict --inputs`.

`--inputs` names new images to predict on: a folder (every image under it, walked as any data
folder is, `datamodules/files.py`), one image file, or a `.txt` list with one path per line
(blank lines and lines starting with `#` are left out). A list's paths are relative to the
list's own folder and may name only files inside it, as a captions file may name only images
inside its root. Each image is read at the size and channels the model was trained on.
"""

import os
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2

from datamodules.files import files_under, inside
from models.contract import Batch
from models.errors import ConfigError

LIST_SUFFIX = ".txt"


def square(size: int) -> v2.Compose:
    """An image's short side resized to `size`, then centre-cropped square: how every image litlab reads is sized."""
    return v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])


class LoadImage:
    """Path -> uint8 (C, H, W) at `size`: the short side resized, then centre-cropped square."""

    def __init__(self, size: int, channels: int) -> None:
        self.mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
        self.resize = square(size)

    def __call__(self, path: str) -> torch.Tensor:
        return self.resize(decode_image(path, mode=self.mode))


class CheckedFiles:
    """`is_valid_file` for ImageFolder: keeps readable images, remembers what it skipped and why."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def __call__(self, path: str) -> bool:
        if not path.lower().endswith(IMG_EXTENSIONS):
            self.skipped.append(f"{path} (not an image)")
            return False
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # PIL raises many types for a broken file; all mean "unreadable"
            self.skipped.append(f"{path} (unreadable: {type(err).__name__})")
            return False
        return True


def listed_files(path: str | os.PathLike) -> list[str]:
    """The files a `.txt` list names, one per line, each relative to the list's folder and inside it."""
    path = Path(path)
    folder, files = path.parent, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        file = folder / name
        if not inside(file, folder):
            raise ConfigError(f"{path} line {number} names {name}, which lies outside {folder}; a list may name only "
                              "files inside its own folder.")
        if not file.is_file():
            raise ConfigError(f"{path} line {number} names {name}, which is not a file in {folder}; fix the name or "
                              "remove the line.")
        files.append(str(file))
    return files


def image_inputs(path: str | os.PathLike) -> list[str]:
    """The readable images `path` names (a folder, an image file or a .txt list), in order; the
    files left out are named in one warning."""
    source = Path(path)
    if not source.exists():
        raise ConfigError(f"--inputs {path} does not exist; give an image folder, an image file, or a {LIST_SUFFIX} "
                          "list of image paths.")
    if source.is_dir():
        candidates = files_under(source)
    elif source.suffix.lower() == LIST_SUFFIX:
        candidates = listed_files(source)
    else:
        candidates = [str(source)]
    checked = CheckedFiles()
    files = [file for file in candidates if checked(file)]
    if checked.skipped:
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"Skipped {len(checked.skipped)} of the files --inputs names: " + "; ".join(checked.skipped))
    if not files:
        raise ConfigError(f"--inputs {path} names no readable image; give an image folder, an image file, or a "
                          f"{LIST_SUFFIX} list of image paths.")
    return files


class ImageFiles(Dataset):
    """Images read from `files` as unlabelled samples: {"input": uint8 (C, H, W)}."""

    def __init__(self, files: list[str], load: LoadImage) -> None:
        self.files, self.load = files, load

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Batch:
        return {"input": self.load(self.files[i])}
