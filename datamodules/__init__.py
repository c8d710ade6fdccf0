"""DataModules: where the data lives, how it is split and transformed, and its shape."""

from datamodules.digits import DigitsDataModule
from datamodules.folder import FolderDataModule
from datamodules.transforms import Augmentation
from datamodules.vision import VisionDataModule

__all__ = ["Augmentation", "DigitsDataModule", "FolderDataModule", "VisionDataModule"]
