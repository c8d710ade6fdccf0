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


def parameter_groups(module: nn.Module, lr_scale: dict[str, float] | None = None) -> list[dict]:
    """Trainable parameters in groups: weight decay for matrices and kernels only (biases and
    norm scales are left alone), and a learning-rate multiplier `lr_scale[name]` for the
    parameters of each named submodule (say, a pretrained backbone)."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            scale = next((s for prefix, s in (lr_scale or {}).items() if name.startswith(f"{prefix}.")), 1.0)
            groups.setdefault((scale, p.ndim >= 2), []).append(p)
    return [
        {"params": params, "lr_scale": scale, **({} if decay else {"weight_decay": 0.0})}
        for (scale, decay), params in groups.items()
    ]


def configure_optimization(
    module: nn.Module,
    optimizer: OptimizerCallable,
    schedule: Schedule,
    total_steps: int,
    warmup_fraction: float = 0.0,
    lr_scale: dict[str, float] | None = None,
):
    """What `configure_optimizers` returns: the optimizer, and a per-step schedule over `total_steps`."""
    opt = optimizer(parameter_groups(module, lr_scale))
    for group in opt.param_groups:
        group["lr"] *= group["lr_scale"]
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
