"""Fine-tuning: a Classifier whose backbone starts from any litlab or plain PyTorch checkpoint."""

from typing import Literal

import torch
from lightning.pytorch.callbacks import BackboneFinetuning
from torch import nn

from models.classifier import Classifier, Loss
from models.errors import ConfigError
from models.lora import LoRA, check_trainable
from models.optim import OptimizerCallable, Schedule

Mode = Literal["linear", "full", "gradual", "lora"]


class FineTune(LoRA, Classifier):
    """Classifier with its backbone loaded from `checkpoint` (.ckpt, .pt/.pth or .safetensors).

    Modes: `linear` trains the head only, with the backbone frozen and kept in eval mode
    (batch-norm statistics included) for the whole run; `full` trains everything, the
    backbone at `backbone_lr_scale` times the learning rate; `gradual` is Lightning's
    BackboneFinetuning: the head alone until `unfreeze_at_epoch`, then the backbone joins at
    `backbone_lr_scale` times the current rate; `lora` trains the head and low-rank adapters
    beside a frozen backbone (models/lora.py), the adapters at `backbone_lr_scale` times the rate.

    LoRA: `lora_rank`, and `lora_alpha` (the adapters' output is scaled by alpha / rank);
    `lora_dropout` on the adapters' input; `lora_targets`, the layers adapted: module names or
    their last parts, a regular expression matching whole names, or all-linear (default: the
    attention and MLP projections of a Transformer, every linear layer of another backbone, its
    convolutions where it has none). Its checkpoints hold the adapters and the head, and the
    reference to the base (`checkpoint`'s file and sha256, or the backbone as built).

    `checkpoint` may name a folder, such as a pretraining run's directory: its newest last.ckpt
    is used; or a LoRA checkpoint: its base, with its adapters merged in. `checkpoint_prefix`
    picks the backbone's keys in an unusual file (default: found automatically). The weights are
    read when the model is built, so `checkpoint` may be set to null to test or predict from a
    finished fine-tuning checkpoint alone (in mode lora, the base it names is needed again).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        checkpoint: str | None,
        checkpoint_prefix: str | None = None,
        mode: Mode = "full",
        backbone_lr_scale: float = 1.0,
        unfreeze_at_epoch: int = 5,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_targets: str | list[str] | None = None,
        loss: Loss = "cross_entropy",
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        schedule: Schedule = "constant",
        warmup_fraction: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        # By keyword: a new Classifier argument can never shift these.
        super().__init__(
            backbone=backbone,
            num_classes=num_classes,
            loss=loss,
            label_smoothing=label_smoothing,
            optimizer=optimizer,
            schedule=schedule,
            warmup_fraction=warmup_fraction,
            channels_last=channels_last,
            compile=compile,
        )
        if backbone_lr_scale <= 0:
            raise ConfigError(
                f"backbone_lr_scale must be positive; got {backbone_lr_scale}. Use mode: linear to freeze."
            )
        if unfreeze_at_epoch < 0:
            raise ConfigError(f"unfreeze_at_epoch must be 0 or more; got {unfreeze_at_epoch}.")
        check_trainable(backbone, mode)
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.mode = mode
        self.backbone_lr_scale = backbone_lr_scale
        self.unfreeze_at_epoch = unfreeze_at_epoch
        base = self.load_pretrained(checkpoint, checkpoint_prefix) if checkpoint is not None else None
        if mode == "lora":
            self.add_lora(lora_rank, lora_alpha, lora_dropout, lora_targets, base)
            self.lr_scales["backbone"] = backbone_lr_scale  # the backbone's trainable part: its adapters
        elif mode == "linear":
            self.freeze("backbone")
        elif mode == "full":
            # In gradual mode BackboneFinetuning applies the scale when it adds the backbone.
            self.lr_scales["backbone"] = backbone_lr_scale

    def configure_callbacks(self) -> list:
        if self.mode != "gradual":
            return []
        return [
            BackboneFinetuning(
                unfreeze_backbone_at_epoch=self.unfreeze_at_epoch,
                backbone_initial_ratio_lr=self.backbone_lr_scale,
                should_align=True,
                train_bn=True,
            )
        ]
