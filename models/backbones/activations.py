"""Activation functions selectable by name from YAML, including a trainable step."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import ConfigError

Activation = Literal["step", "sigmoid", "tanh", "relu", "gelu"]


class Step(nn.Module):
    """Heaviside step (0 for x <= 0, 1 for x > 0) with a straight-through gradient.

    The true derivative is zero almost everywhere, so nothing before a step could learn.
    Backward instead uses the gradient of hardtanh: 1 for |x| < 1, 0 beyond, as in
    binarised networks (Hubara et al., 2016).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hard = (x > 0).to(x.dtype)
        soft = F.hardtanh(x)
        # soft - soft.detach() is exactly zero forward but carries soft's gradient backward.
        return hard + (soft - soft.detach())


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "step": Step,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}.")
    return ACTIVATIONS[name]()
