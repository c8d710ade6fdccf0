"""ResNet for small images (He et al., 2016, section 4.2): the CIFAR family, resnet20 to resnet110.

A 3x3 stride-1 stem and no max-pool, because a 32x32 image has no resolution to spare;
three stages of basic blocks at widths w, 2w, 4w, downsampling by stride 2 between them.
"""

import torch
from torch import nn

from models.backbones.activations import Activation, make_activation
from models.backbones.registry import register
from models.errors import ConfigError, check_positive


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: Activation) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act = make_activation(activation)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # Zero-init the last BN scale so each block starts as the identity (Goyal et al., 2017).
        nn.init.zeros_(self.bn2.weight)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # A 1x1 projection where the shape changes (the paper's option B).
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


@register(image=[{"depth": 8, "width": 8}, {"depth": 14, "width": 4, "activation": "gelu"}])
class ResNet(nn.Module):
    """`depth` = 6n + 2 layers (20, 32, 44, 56, 110); (B, C, H, W) -> (B, 4 * width)."""

    def __init__(self, depth: int = 20, width: int = 16, activation: Activation = "relu") -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"ResNet depth must be 6n + 2 (8, 14, 20, 32, 44, 56, 110); got {depth}.")
        check_positive("ResNet", width=width)
        blocks_per_stage = (depth - 2) // 6
        # The stem is lazy, so any number of input channels works.
        layers: list[nn.Module] = [nn.LazyConv2d(width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
        layers.append(make_activation(activation))
        in_channels = width
        for stage, channels in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, channels, stride, activation))
                in_channels = channels
        self.features = nn.Sequential(*layers)
        self.out_features = 4 * width
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not isinstance(m, nn.LazyConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H, W) -> (B, 4 * width, H / 4, W / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))  # (B, 4 * width)
