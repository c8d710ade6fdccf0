"""Multilayer perceptron on flattened inputs."""

import torch
from torch import nn

from models.backbones.activations import Activation, make_activation
from models.backbones.registry import register
from models.errors import ConfigError, check_fraction, check_positive


@register(image=[{}, {"depth": 1, "activation": "step", "dropout": 0.1}], sequence={})
class MLP(nn.Module):
    """`depth` blocks of Linear -> activation -> Dropout on the flattened input."""

    def __init__(self, depth: int = 2, width: int = 256, dropout: float = 0.0, activation: Activation = "relu") -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"MLP depth must be at least 1; got {depth}.")
        check_positive("MLP", width=width)
        check_fraction("MLP", dropout=dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            # Only the first layer is lazy: its input size comes from the data.
            layers += [
                nn.LazyLinear(width) if i == 0 else nn.Linear(width, width),
                make_activation(activation),
                nn.Dropout(dropout),
            ]
        self.layers = nn.Sequential(*layers)
        self.out_features = width

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)  # (B, ...) -> (B, width): flattened input has no positions to keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)
