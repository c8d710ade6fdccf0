"""Models: plain-PyTorch backbones and the LightningModules (tasks) that train them."""

from models.classifier import Classifier
from models.finetune import FineTune
from models.pretrain import SimCLR

__all__ = ["Classifier", "FineTune", "SimCLR"]
