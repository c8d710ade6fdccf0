"""Backbones: plain `nn.Module`s that map a tensor to `out_features` features.

`register` records each backbone in `BACKBONES` with small example configurations
per input kind, so tests and tools can build every backbone on every input it accepts.
"""

from models.backbones.activations import ACTIVATIONS
from models.backbones.cnn import CNN
from models.backbones.huggingface import HuggingFace
from models.backbones.mlp import MLP
from models.backbones.registry import BACKBONES, register
from models.backbones.resnet import ResNet
from models.backbones.rnn import RNN
from models.backbones.transformer import Transformer
from models.backbones.zoo import Timm, Torchvision

__all__ = ["ACTIVATIONS", "BACKBONES", "CNN", "HuggingFace", "MLP", "RNN", "ResNet", "Timm", "Torchvision", "Transformer", "register"]
