"""DataModules: where the data lives, how it is split and transformed, and its shape."""

from datamodules.digits import DigitsDataModule

__all__ = ["DigitsDataModule"]
