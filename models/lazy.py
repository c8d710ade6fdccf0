"""Materialising lazy first layers, so backbones never need the input size in YAML."""

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin


def has_lazy(module: nn.Module) -> bool:
    return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in module.modules())


@torch.no_grad()
def materialize(module: nn.Module, datamodule: object) -> None:
    """Run one dry forward pass of the shape `datamodule` declares, to size lazy layers.

    The pass runs in eval mode so batch-norm running statistics are not touched.
    """
    if not has_lazy(module):
        return
    shape = getattr(datamodule, "input_shape", None)
    if shape is None:
        raise ValueError(
            f"{type(module).__name__} has layers sized by the data, but the datamodule "
            f"{type(datamodule).__name__} declares no input_shape; give the datamodule an input_shape property."
        )
    dtype = getattr(datamodule, "input_dtype", torch.float32)
    device = next((b.device for b in module.buffers()), torch.device("cpu"))
    was_training = module.training
    module.eval()
    module(torch.zeros(2, *shape, dtype=dtype, device=device))
    module.train(was_training)
