"""Classifier: any backbone plus a linear head, trained with a named loss."""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from models.contract import IGNORE_INDEX, Batch, field
from models.errors import ConfigError, check_fraction
from models.optim import OptimizerCallable, Schedule
from models.task import Task

Loss = Literal["cross_entropy", "mse"]


def class_metrics(num_classes: int) -> MetricCollection:
    """Accuracy and macro F1; samples marked unlabelled (IGNORE_INDEX) are left out."""
    return MetricCollection(
        {
            # validate_args=False: the task builds these inputs itself, and the checks cost a fifth of a step.
            "acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX, validate_args=False),
            "f1": MulticlassF1Score(num_classes, average="macro", ignore_index=IGNORE_INDEX, validate_args=False),
        }
    )


def check_num_classes(num_classes: int | None, task: str) -> None:
    if num_classes is None:
        raise ConfigError(f"{task} needs num_classes, which comes from the data; use a DataModule with labels.")
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2; got {num_classes}.")


class Classifier(Task):
    """`backbone` features -> linear head -> `num_classes` logits.

    `loss="mse"` is the squared error between the softmax and the one-hot target, the
    classic loss of early networks; `cross_entropy` is the usual choice. Unlabelled samples
    (target IGNORE_INDEX) count in neither the loss nor the metrics. `compile` compiles the
    backbone (`torch.compile`, from the trainer's set-up on; its checkpoint keys unchanged).
    """

    compiled_parts = ("backbone",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        loss: Loss = "cross_entropy",
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        schedule: Schedule = "constant",
        warmup_fraction: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer=optimizer, schedule=schedule, warmup_fraction=warmup_fraction)
        check_num_classes(num_classes, type(self).__name__)
        check_fraction(type(self).__name__, label_smoothing=label_smoothing)
        if loss == "mse" and label_smoothing:
            raise ConfigError("label_smoothing applies to loss=cross_entropy only; set it to 0 for mse.")
        # The backbone is a module, saved in the state dict; its config is saved by the CLI.
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_features, num_classes)
        self.num_classes = num_classes
        self.loss_name = loss
        self.label_smoothing = label_smoothing
        self.channels_last = channels_last
        metrics = class_metrics(num_classes)
        self.train_metrics = metrics.clone(prefix="train/")
        self.eval_metrics = nn.ModuleDict({stage: metrics.clone(prefix=f"{stage}/") for stage in ("val", "test")})
        self.eval_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.channels_last:
            # NHWC lets cuDNN use its fastest convolution kernels under mixed precision.
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        # Padded token sequences (texts) tell the backbone where the padding is; other inputs have none.
        features = self.backbone(x) if padding_mask is None else self.backbone(x, padding_mask=padding_mask)
        return self.head(features)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean over labelled samples; zero (with a gradient path) when a batch has none."""
        labelled = y != IGNORE_INDEX
        count = labelled.sum().clamp(min=1)
        if self.loss_name == "mse":
            target = F.one_hot(y.clamp(min=0), self.num_classes).to(logits.dtype)
            per_sample = (logits.softmax(dim=-1) - target).square().mean(dim=-1)  # (B,)
            return (per_sample * labelled).sum() / count
        total = F.cross_entropy(
            logits, y, ignore_index=IGNORE_INDEX, label_smoothing=self.label_smoothing, reduction="sum"
        )
        return total / count

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        y = batch["target"]
        logits = self(field(batch, "input", type(self).__name__), batch.get("padding_mask"))
        loss = self.loss(logits, y)
        self.log_train({"train/loss": loss}, batch_size=len(y))  # the curve to watch
        # Updated every step, computed and logged once an epoch: a per-batch value would cost a compute a step.
        self.train_metrics.update(logits.detach(), y)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics)

    def evaluate(self, batch: Batch, stage: str) -> dict[str, torch.Tensor]:
        logits = self(field(batch, "input", type(self).__name__), batch.get("padding_mask"))
        self.score(stage, logits, batch["target"])
        return {"logits": logits}

    def score(self, stage: str, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate the loss and metrics of a `val` or `test` batch; logged once an epoch."""
        self.eval_loss[stage].update(self.loss(logits, y), weight=(y != IGNORE_INDEX).sum())
        self.eval_metrics[stage].update(logits, y)

    def log_evaluation(self, stage: str) -> None:
        # One log call per metric an epoch; torchmetrics averages the loss over samples and ranks,
        # so every rank picks the same best checkpoint.
        self.log(f"{stage}/loss", self.eval_loss[stage], prog_bar=True)
        self.log_dict(self.eval_metrics[stage], prog_bar=True)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self(field(batch, "input", type(self).__name__), batch.get("padding_mask")).softmax(dim=-1)
        out = {"pred": probs.argmax(dim=-1), "probs": probs}
        if "target" in batch:
            out["target"] = batch["target"]
        return out
