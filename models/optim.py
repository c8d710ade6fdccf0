"""Optimizers and learning-rate schedules shared by every task.

The optimizer class and its arguments come from YAML (dependency injection through
LightningCLI's OptimizerCallable). Schedules are named, because their lengths must be
derived from the run (`trainer.estimated_stepping_batches`), not typed into a config.
"""

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, OneCycleLR, SequentialLR

from models.errors import ConfigError

Schedule = Literal["constant", "cosine", "onecycle"]
# An optimizer class with its arguments, waiting for the parameters (a YAML `class_path` and `init_args`).
OptimizerCallable = Callable[[Iterable], torch.optim.Optimizer]

# The share of a one-cycle run spent rising, when warmup_fraction is left unset (torch's default).
ONECYCLE_WARMUP = 0.3


def check_schedule(schedule: Schedule, warmup_fraction: float | None) -> None:
    if warmup_fraction is None:
        return
    if not 0.0 <= warmup_fraction < 1.0:
        raise ConfigError(f"warmup_fraction must be in [0, 1); got {warmup_fraction}.")
    if schedule == "constant" and warmup_fraction:
        raise ConfigError("warmup_fraction needs a schedule (cosine or onecycle); the constant schedule has no warmup.")
    if schedule == "onecycle" and warmup_fraction == 0:
        raise ConfigError(
            "The onecycle schedule must rise before it falls: set warmup_fraction in (0, 1), "
            f"or leave it unset for {ONECYCLE_WARMUP}."
        )


def check_optimizer(optimizer: OptimizerCallable) -> None:
    """Build the optimizer once on a stand-in parameter, so that an argument torch refuses (a
    negative learning rate, say) is reported when the config is read, before a run starts."""
    try:
        optimizer([nn.Parameter(torch.zeros(1))])
    except ValueError as err:
        raise ConfigError(f"model.optimizer: {err}; choose a valid value.") from None


def parameter_groups(
    module: nn.Module, lr_scale: dict[str, float] | None = None, no_decay: set[str] | frozenset[str] = frozenset()
) -> list[dict]:
    """Trainable parameters in groups: weight decay for matrices and kernels only (biases and
    norm scales are left alone, and so is every parameter of a submodule named in `no_decay`),
    and a learning-rate multiplier `lr_scale[name]` for the parameters of each named submodule
    (say, a pretrained backbone). Each group is named by both: decay, no_decay, decay_x0.1."""

    def under(name: str, prefix: str) -> bool:
        return name.startswith(f"{prefix}.")

    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            scale = next((s for prefix, s in (lr_scale or {}).items() if under(name, prefix)), 1.0)
            decay = p.ndim >= 2 and not any(under(name, prefix) for prefix in no_decay)
            groups.setdefault((scale, decay), []).append(p)
    # Named, so that the learning-rate monitor logs lr-AdamW/decay rather than lr-AdamW/pg1.
    return [
        {"params": params, "lr_scale": scale, "name": ("decay" if decay else "no_decay") + (f"_x{scale:g}" if scale != 1 else ""),
         **({} if decay else {"weight_decay": 0.0})}
        for (scale, decay), params in groups.items()
    ]


def configure_optimization(
    module: nn.Module,
    optimizer: OptimizerCallable,
    schedule: Schedule,
    total_steps: int,
    warmup_fraction: float | None = None,
    lr_scale: dict[str, float] | None = None,
    no_decay: set[str] | frozenset[str] = frozenset(),
    lr: float | None = None,
):
    """What `configure_optimizers` returns: the optimizer, and a per-step schedule over `total_steps`.

    `warmup_fraction` None means the schedule's own: none for cosine, ONECYCLE_WARMUP for onecycle.
    `lr`, where given, replaces the optimizer's own learning rate (each group's scale still applies).
    """
    check_schedule(schedule, warmup_fraction)
    opt = optimizer(parameter_groups(module, lr_scale, no_decay))
    for group in opt.param_groups:
        group["lr"] = (group["lr"] if lr is None else lr) * group["lr_scale"]
    if schedule == "constant":
        return opt
    if schedule == "onecycle":
        max_lr = [group["lr"] for group in opt.param_groups]
        rising = ONECYCLE_WARMUP if warmup_fraction is None else warmup_fraction
        scheduler = OneCycleLR(opt, max_lr=max_lr, total_steps=total_steps, pct_start=rising)
    else:
        warmup = int((warmup_fraction or 0.0) * total_steps)
        scheduler = CosineAnnealingLR(opt, T_max=max(total_steps - warmup, 1))
        if warmup:
            ramp = LinearLR(opt, start_factor=1.0 / warmup, total_iters=warmup)
            scheduler = SequentialLR(opt, [ramp, scheduler], milestones=[warmup])
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
