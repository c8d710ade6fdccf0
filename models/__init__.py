"""Models: plain-PyTorch backbones and the LightningModules (tasks) that train them."""

from models.classifier import Classifier

__all__ = ["Classifier"]
