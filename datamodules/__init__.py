"""DataModules: where the data lives, how it is split and transformed, and what it gives a task.

Each name is imported on first use (`datamodules.DigitsDataModule`), so that a loader worker's
fork server can import the datasets a worker holds (`datamodules.samples`) without Lightning.
"""

from importlib import import_module

NAMES = {
    "Augmentation": "datamodules.transforms",
    "Batch": "models.contract",
    "CaptionedDigitsDataModule": "datamodules.captions",
    "CaptionedFolderDataModule": "datamodules.captions",
    "CaptionsDataModule": "datamodules.captions",
    "DataModule": "datamodules.base",
    "DigitsDataModule": "datamodules.digits",
    "FolderDataModule": "datamodules.folder",
    "HubCaptionsDataModule": "datamodules.hub_captions",
    "HubDataModule": "datamodules.hub",
    "IGNORE_INDEX": "models.contract",
    "ImageDataModule": "datamodules.images",
    "Splits": "datamodules.base",
    "TensorSamples": "datamodules.samples",
    "TextClassificationDataModule": "datamodules.text_classification",
    "TextDataModule": "datamodules.text",
    "VisionDataModule": "datamodules.vision",
}

__all__ = list(NAMES)


def __getattr__(name: str):
    if name in NAMES:
        return getattr(import_module(NAMES[name]), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
