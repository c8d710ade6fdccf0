"""DataModules: where the data lives, how it is split and transformed, and what it gives a task."""

from datamodules.base import DataModule, Splits, TensorSamples
from datamodules.captions import CaptionedDigitsDataModule, CaptionedFolderDataModule, CaptionsDataModule
from models.contract import IGNORE_INDEX, Batch
from datamodules.digits import DigitsDataModule
from datamodules.folder import FolderDataModule
from datamodules.images import ImageDataModule
from datamodules.text import TextDataModule
from datamodules.text_classification import TextClassificationDataModule
from datamodules.transforms import Augmentation
from datamodules.vision import VisionDataModule

__all__ = [
    "IGNORE_INDEX",
    "Augmentation",
    "Batch",
    "CaptionedDigitsDataModule",
    "CaptionedFolderDataModule",
    "CaptionsDataModule",
    "DataModule",
    "DigitsDataModule",
    "FolderDataModule",
    "ImageDataModule",
    "Splits",
    "TensorSamples",
    "TextClassificationDataModule",
    "TextDataModule",
    "VisionDataModule",
]
