"""Convolutional network: VGG-style blocks, then global average pooling."""

from typing import Literal

import torch
from torch import nn

from models.backbones.activations import Activation, make_activation
from models.backbones.registry import register
from models.errors import ConfigError, check_fraction, check_positive

Pool = Literal["max", "avg", "none"]


@register(image=[{}, {"pool": "avg", "batch_norm": False}])
class CNN(nn.Module):
    """One block per entry of `channels`: (conv, [BN], act) x 2, then 2x2 pooling."""

    def __init__(
        self,
        channels: list[int] = [32, 64],  # noqa: B006 - never mutated
        kernel_size: int = 3,
        batch_norm: bool = True,
        pool: Pool = "max",
        activation: Activation = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not channels:
            raise ConfigError("CNN channels must name at least one block, e.g. [32, 64].")
        check_positive("CNN", kernel_size=kernel_size, **{f"channels[{i}]": c for i, c in enumerate(channels)})
        check_fraction("CNN", dropout=dropout)
        # Batch norm's mean subtraction cancels a conv bias, so drop the bias there.
        conv_args = dict(kernel_size=kernel_size, padding="same", bias=not batch_norm)
        layers: list[nn.Module] = []
        in_channels: int | None = None
        for width in channels:
            for _ in range(2):
                # The first conv is lazy so any number of input channels works.
                if in_channels is None:
                    layers.append(nn.LazyConv2d(width, **conv_args))
                else:
                    layers.append(nn.Conv2d(in_channels, width, **conv_args))
                in_channels = width
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(make_activation(activation))
            # ceil_mode keeps the odd edge row and lets a 1x1 map pass through further blocks.
            if pool == "max":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            elif pool == "avg":
                layers.append(nn.AvgPool2d(2, ceil_mode=True))
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.out_features = channels[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H, W) -> (B, channels[-1], H', W')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))  # (B, channels[-1])
