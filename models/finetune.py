"""Fine-tuning: a Classifier whose backbone starts from any litlab or plain PyTorch checkpoint."""

from typing import Literal

import torch
from lightning.pytorch.callbacks import BackboneFinetuning
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from models.checkpoints import load_backbone, resolve_checkpoint
from models.classifier import Classifier, Loss
from models.optim import Schedule

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
        warmup_fraction: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__(
            backbone, num_classes, loss, label_smoothing, optimizer, schedule, warmup_fraction, channels_last
        )
        if backbone_lr_scale <= 0:
            raise ValueError(f"backbone_lr_scale must be positive; got {backbone_lr_scale}. Use mode: linear to freeze.")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.mode = mode
        self.backbone_lr_scale = backbone_lr_scale
        self.unfreeze_at_epoch = unfreeze_at_epoch
        if checkpoint is not None:
            path = resolve_checkpoint(checkpoint)
            prefix = load_backbone(self.backbone, path, checkpoint_prefix)
            rank_zero_info(f"Backbone loaded from {path} (keys under '{prefix}').")
        if mode == "linear":
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> "FineTune":
        # Whoever puts the model in train mode, a linear probe's backbone stays in eval mode.
        super().train(mode)
        if self.mode == "linear":
            self.backbone.eval()
        return self

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

    def lr_scale(self) -> dict[str, float] | None:
        # In gradual mode BackboneFinetuning applies the scale when it adds the backbone.
        return {"backbone": self.backbone_lr_scale} if self.mode == "full" else None
