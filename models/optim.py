"""Optimizers and learning-rate schedules shared by every task.

The optimizer class and its arguments come from YAML (dependency injection through
LightningCLI's OptimizerCallable). Schedules are named, because their lengths must be
derived from the run (`trainer.estimated_stepping_batches`), not typed into a config.
"""

from collections.abc import Callable, Collection, Iterable
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


def under(name: str, prefix: str) -> bool:
    return name.startswith(f"{prefix}.")


def hidden_matrices(module: nn.Module, outputs: Collection[str] = ()) -> set[int]:
    """The ids of `module`'s hidden matrices, what Muon trains: the weights of its linear layers and
    convolutions, except those of the submodules named in `outputs` (a task's head) and any weight an
    embedding shares (a language model's tied head). Embeddings, norms, biases and other parameters
    are not hidden matrices."""
    embedded = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    hidden = set()
    for name, part in module.named_modules():
        if isinstance(part, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not any(
            name == prefix or under(name, prefix) for prefix in outputs
        ):
            hidden.add(id(part.weight))
    return hidden - embedded


def parameter_groups(
    module: nn.Module,
    lr_scale: dict[str, float] | None = None,
    no_decay: set[str] | frozenset[str] = frozenset(),
    muon_outputs: Collection[str] | None = None,
) -> list[dict]:
    """Trainable parameters in groups: weight decay for matrices and kernels only (biases and
    norm scales are left alone, and so is every parameter of a submodule named in `no_decay`),
    and a learning-rate multiplier `lr_scale[name]` for the parameters of each named submodule
    (say, a pretrained backbone). Each group is named by both: decay, no_decay, decay_x0.1.

    With `muon_outputs` (for the `Muon` optimizer: the submodules whose matrices are outputs, see
    `hidden_matrices`) the groups are split once more, each group saying whether Muon (`muon`: True)
    or AdamW trains it, and named muon_decay, adamw_decay, adamw_no_decay and so on."""
    hidden = None if muon_outputs is None else hidden_matrices(module, muon_outputs)
    groups: dict[tuple[float, bool, bool | None], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            scale = next((s for prefix, s in (lr_scale or {}).items() if under(name, prefix)), 1.0)
            decay = p.ndim >= 2 and not any(under(name, prefix) for prefix in no_decay)
            muon = None if hidden is None else id(p) in hidden
            groups.setdefault((scale, decay, muon), []).append(p)

    def named(decay: bool, scale: float, muon: bool | None) -> str:
        kind = "" if muon is None else ("muon_" if muon else "adamw_")
        return kind + ("decay" if decay else "no_decay") + (f"_x{scale:g}" if scale != 1 else "")

    # Named, so that the learning-rate monitor logs lr-AdamW/decay rather than lr-AdamW/pg1.
    return [
        {"params": params, "lr_scale": scale, "name": named(decay, scale, muon),
         **({} if decay else {"weight_decay": 0.0}), **({} if muon is None else {"muon": muon})}
        for (scale, decay, muon), params in groups.items()
    ]


class Muon(torch.optim.Optimizer):
    """Muon (`torch.optim.Muon`: momentum, then the update orthogonalised by Newton-Schulz) for the
    hidden matrices and convolution kernels, and `torch.optim.AdamW` for everything else (embeddings,
    heads, norms, biases), as modded-nanogpt's and airbench's fastest recipes train.

    Tasks hand it groups that say which is which (`parameter_groups` with `muon_outputs`); given bare
    parameters, Muon takes those of two or more dimensions. A kernel of shape (out, in, k, k) is
    orthogonalised as the (out, in*k*k) matrix it is a view of. `lr`, `momentum`, `nesterov`, `ns_steps`
    and `adjust_lr_fn` are Muon's (torch's defaults but the learning rate); `adamw_lr`, `betas` and `eps`
    are AdamW's; `weight_decay` (decoupled) is both's. All state lives here, under each parameter, so
    a checkpoint saves and resumes it as any optimizer's; the one-cycle schedule cycles AdamW's beta1.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr_fn: Literal["original", "match_rms_adamw"] | None = None,
        adamw_lr: float = 0.003,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": [p for p in groups if p.ndim >= 2], "muon": True},
                      {"params": [p for p in groups if p.ndim < 2], "muon": False}]
            groups = [g for g in groups if g["params"]]
        for group in groups:
            group["params"] = list(group["params"]) if not isinstance(group["params"], torch.Tensor) else [group["params"]]
            group.setdefault("muon", all(p.ndim >= 2 for p in group["params"]))
            if not group["muon"]:
                group.setdefault("lr", adamw_lr)  # the tasks' learning-rate scales apply on top
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
                        betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(groups, defaults)
        # torch checks each argument where it is its optimizer's; made once here, the engines below
        # are handed the groups' parameters and state at each step.
        muon = [g for g in self.param_groups if g["muon"]]
        for group in muon:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon trains matrices and kernels; got a parameter of shape {tuple(p.shape)}; "
                                     "give it to a group with muon: False")
        self._muon = torch.optim.Muon([torch.zeros(1, 1)], lr=lr, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn, weight_decay=weight_decay)
        self._adamw = torch.optim.AdamW([torch.zeros(1)], lr=adamw_lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        muon_groups, adamw_groups, copies = [], [], []
        self._muon.state.clear()
        for group in self.param_groups:
            if not group["muon"]:
                adamw_groups.append({**self._adamw.defaults, **{k: group[k] for k in ("lr", "betas", "eps", "weight_decay")},
                                     "params": group["params"]})
                continue
            views = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                # A view sharing p's storage, so Muon's in-place update is p's; a kernel in another
                # memory format (channels_last) is updated in a contiguous copy, then copied back.
                work = p.detach() if p.is_contiguous() else p.detach().contiguous()
                if not p.is_contiguous():
                    copies.append((p, work))
                view = work.view(p.shape[0], -1)
                view.grad = p.grad.reshape(view.shape)
                self._muon.state[view] = {"momentum_buffer": state["momentum_buffer"].view(view.shape)}
                views.append(view)
            muon_groups.append({**self._muon.defaults, **{k: group[k] for k in ("lr", "momentum", "nesterov", "ns_steps",
                                                                                  "adjust_lr_fn", "weight_decay")},
                                "params": views})
        if muon_groups:
            self._muon.param_groups = muon_groups
            self._muon.step()
            self._muon.state.clear()
            for p, work in copies:
                p.copy_(work)
        if adamw_groups:
            self._adamw.param_groups = adamw_groups
            self._adamw.state = self.state  # keyed by the parameters themselves, so shared as it is
            self._adamw.step()
        return loss


def configure_optimization(
    module: nn.Module,
    optimizer: OptimizerCallable,
    schedule: Schedule,
    total_steps: int,
    warmup_fraction: float | None = None,
    lr_scale: dict[str, float] | None = None,
    no_decay: set[str] | frozenset[str] = frozenset(),
    lr: float | None = None,
    muon_outputs: Collection[str] = (),
    sharded: bool = False,
):
    """What `configure_optimizers` returns: the optimizer, and a per-step schedule over `total_steps`.

    `warmup_fraction` None means the schedule's own: none for cosine, ONECYCLE_WARMUP for onecycle.
    `lr`, where given, replaces the optimizer's own learning rate (each group's scale still applies).
    `muon_outputs`: the submodules a `Muon` optimizer leaves to AdamW (`hidden_matrices`).
    `sharded`: the parameters are shards (FSDP), which Muon refuses.
    """
    check_schedule(schedule, warmup_fraction)
    muon = isinstance(optimizer([nn.Parameter(torch.zeros(1))]), Muon)
    if muon and sharded:
        raise ConfigError("models.optim.Muon orthogonalises whole matrices, and this strategy shards them across "
                          "processes; train with strategy: ddp, or use torch.optim.AdamW under FSDP.")
    opt = optimizer(parameter_groups(module, lr_scale, no_decay, muon_outputs if muon else None))
    for group in opt.param_groups:
        # `lr` takes the optimizer's place; a group whose own rate differs from it (Muon's AdamW
        # groups) keeps its ratio to it.
        ratio = group["lr"] / opt.defaults["lr"] if opt.defaults["lr"] else 1.0
        base = group["lr"] if lr is None else lr * ratio
        group["lr"] = base * group["lr_scale"]
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
