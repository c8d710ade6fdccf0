"""Fine-tuning: a Classifier whose backbone starts from any litlab or plain PyTorch checkpoint."""

from typing import Literal

import torch
from lightning.pytorch.callbacks import BackboneFinetuning
from torch import nn

from models.classifier import Classifier, Loss
from models.errors import ConfigError
from models.optim import OptimizerCallable, Schedule

Mode = Literal["linear", "full", "gradual"]


class FineTune(Classifier):
    """Classifier with its backbone loaded from `checkpoint` (.ckpt, .pt/.pth or .safetensors).

    Modes: `linear` trains the head only, with the backbone frozen and kept in eval mode
    (batch-norm statistics included) for the whole run; `full` trains everything, the
    backbone at `backbone_lr_scale` times the learning rate; `gradual` is Lightning's
    BackboneFinetuning: the head alone until `unfreeze_at_epoch`, then the backbone joins at
    `backbone_lr_scale` times the current rate. `checkpoint` may name a folder, such as a
    pretraining run's directory: its newest last.ckpt is used. `checkpoint_prefix` picks the
    backbone's keys in an unusual file (default: found automatically). The weights are read when the
    model is built, so `checkpoint` may be set to null to test or predict from a finished
    fine-tuning checkpoint alone.
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
        loss: Loss = "cross_entropy",
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        schedule: Schedule = "constant",
        warmup_fraction: float | None = None,
        channels_last: bool = False,
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
        )
        if backbone_lr_scale <= 0:
            raise ConfigError(
                f"backbone_lr_scale must be positive; got {backbone_lr_scale}. Use mode: linear to freeze."
            )
        if unfreeze_at_epoch < 0:
            raise ConfigError(f"unfreeze_at_epoch must be 0 or more; got {unfreeze_at_epoch}.")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.mode = mode
        self.backbone_lr_scale = backbone_lr_scale
        self.unfreeze_at_epoch = unfreeze_at_epoch
        if checkpoint is not None:
            self.load_part("backbone", checkpoint, checkpoint_prefix)
        if mode == "linear":
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
