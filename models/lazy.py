"""Materialising lazy first layers, so backbones never need the input size in YAML."""

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin


def has_lazy(module: nn.Module) -> bool:
    return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in module.modules())


@torch.no_grad()
def materialize(module: nn.Module, example: torch.Tensor, run: Callable[[torch.Tensor], object] | None = None) -> None:
    """One dry forward pass of `example` (the data contract's `example_input`) to size lazy layers.

    `run` is the pass (default: `module(example)`); a task with several inputs passes its own.
    It runs in eval mode, so batch-norm running statistics are not touched.
    """
    if not has_lazy(module):
        return
    device = next((b.device for b in module.buffers()), torch.device("cpu"))
    was_training = module.training
    module.eval()
    (run or module)(example.to(device))
    module.train(was_training)
