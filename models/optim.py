"""Optimizers and learning-rate schedules shared by every task.

The optimizer class and its arguments come from YAML (dependency injection through
LightningCLI's OptimizerCallable). Schedules are named, because their lengths must be
derived from the run (`trainer.estimated_stepping_batches`), not typed into a config.
"""

from typing import Literal

from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, OneCycleLR, SequentialLR

Schedule = Literal["constant", "cosine", "onecycle"]


def parameter_groups(module: nn.Module) -> list[dict]:
    """Weight decay for matrices and kernels only: biases and norm scales are left alone."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2]},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def configure_optimization(
    module: nn.Module, optimizer: OptimizerCallable, schedule: Schedule, total_steps: int, warmup_fraction: float = 0.0
):
    """What `configure_optimizers` returns: the optimizer, and a per-step schedule over `total_steps`."""
    opt = optimizer(parameter_groups(module))
    if schedule == "constant":
        return opt
    if schedule == "onecycle":
        max_lr = [group["lr"] for group in opt.param_groups]
        scheduler = OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps, pct_start=warmup_fraction or 0.3)
    else:
        warmup = int(warmup_fraction * total_steps)
        scheduler = CosineAnnealingLR(opt, T_max=max(total_steps - warmup, 1))
        if warmup:
            ramp = LinearLR(opt, start_factor=1.0 / warmup, total_iters=warmup)
            scheduler = SequentialLR(opt, [ramp, scheduler], milestones=[warmup])
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
