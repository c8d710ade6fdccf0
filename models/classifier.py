"""Classifier: any backbone plus a linear head, trained with a named loss."""

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from models.lazy import materialize
from models.optim import Schedule, configure_optimization

Loss = Literal["cross_entropy", "mse"]


class Classifier(L.LightningModule):
    """`backbone` features -> linear head -> `num_classes` logits.

    `loss="mse"` is the squared error between the softmax and the one-hot target, the
    classic loss of early networks; `cross_entropy` is the usual choice.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        loss: Loss = "cross_entropy",
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        schedule: Schedule = "constant",
        warmup_fraction: float = 0.0,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2; got {num_classes}.")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1); got {warmup_fraction}.")
        if loss == "mse" and label_smoothing:
            raise ValueError("label_smoothing applies to loss=cross_entropy only; set it to 0 for mse.")
        # The backbone is a module, saved in the state dict; its config is saved by the CLI.
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, num_classes)
        self.num_classes = num_classes
        self.loss_name = loss
        self.label_smoothing = label_smoothing
        self.optimizer = optimizer
        self.schedule = schedule
        self.warmup_fraction = warmup_fraction
        self.channels_last = channels_last
        metrics = MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "f1": MulticlassF1Score(num_classes, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def setup(self, stage: str) -> None:
        materialize(self.backbone, self.trainer.datamodule)
        if self.channels_last:
            # NHWC lets cuDNN use its fastest convolution kernels under mixed precision.
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x))

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "mse":
            target = F.one_hot(y, self.num_classes).to(logits.dtype)
            return F.mse_loss(logits.softmax(dim=-1), target)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str, metrics: MetricCollection) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        metrics(logits, y)
        # Training loss per step (the curve to watch); evaluation loss averaged over the epoch
        # and over ranks, so that every rank picks the same best checkpoint.
        train = stage == "train"
        self.log(
            f"{stage}/loss", loss, on_step=train, on_epoch=not train, sync_dist=not train, prog_bar=True, batch_size=len(y)
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=len(y))
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_metrics)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self(batch[0]).softmax(dim=-1)
        out = {"pred": probs.argmax(dim=-1), "probs": probs}
        if len(batch) > 1:
            out["target"] = batch[1]
        return out

    def lr_scale(self) -> dict[str, float] | None:
        """Learning-rate multipliers by submodule name; a subclass with a pretrained part sets them."""
        return None

    def configure_optimizers(self):
        steps = int(self.trainer.estimated_stepping_batches)
        return configure_optimization(self, self.optimizer, self.schedule, steps, self.warmup_fraction, self.lr_scale())
