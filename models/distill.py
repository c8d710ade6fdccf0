"""Knowledge distillation: a small student taught by a frozen teacher loaded from a checkpoint."""

import os

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from models.contract import Batch, field
from models.checkpoints import read_state_dict, resolve_checkpoint
from models.classifier import Classifier
from models.errors import ConfigError
from models.losses import hint_loss, soft_target_loss
from models.optim import OptimizerCallable, Schedule

# Keys of the teacher's parts, which a Distill checkpoint never holds: it is the student's alone.
TEACHER_PARTS = ("teacher.", "teacher_head.")
# Where a checkpoint keeps the hint regressor, outside the state dict that a Classifier loads.
HINT_KEY = "distill_hint_state"


class Distill(Classifier):
    """A student (`backbone` + linear head, exactly a Classifier) taught by a frozen teacher.

    The teacher is `teacher` (a backbone) plus a linear head, both loaded strictly from
    `teacher_checkpoint`: a litlab .ckpt of a Classifier, FineTune or Distill run, a run
    folder (its newest last.ckpt), or a .pt/.safetensors file with `backbone.*` and
    `head.*` keys. It stays frozen in eval mode and runs under no_grad.

    The loss is `alpha` x Hinton's soft-target loss at `temperature` on every training
    sample, labelled or not, plus (1 - alpha) x the cross entropy on the labelled ones
    (target != IGNORE_INDEX), plus `hint_weight` x the FitNets hint loss between the
    student's features (through a learned linear regressor) and the teacher's.

    Checkpoints hold the student under `backbone.` and `head.` and no teacher weight, so
    a Classifier, FineTune or another Distill loads them as they are; resuming a Distill
    fit reloads the teacher from `teacher_checkpoint`.
    """

    # Parts a Distill checkpoint does not hold in its state dict: they are restored by the task itself.
    checkpoint_skips = (*TEACHER_PARTS, "hint.")

    def __init__(
        self,
        backbone: nn.Module,
        teacher: nn.Module,
        teacher_checkpoint: str,
        num_classes: int,
        temperature: float = 4.0,
        alpha: float = 0.9,
        hint_weight: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        schedule: Schedule = "constant",
        warmup_fraction: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__(
            backbone=backbone,
            num_classes=num_classes,
            optimizer=optimizer,
            schedule=schedule,
            warmup_fraction=warmup_fraction,
            channels_last=channels_last,
            compile=compile,
        )
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive; got {temperature}.")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha weighs the soft targets against the labels and must be in [0, 1]; got {alpha}.")
        if hint_weight < 0:
            raise ConfigError(f"hint_weight must be 0 (off) or positive; got {hint_weight}.")
        self.save_hyperparameters(ignore=["backbone", "teacher", "optimizer"])
        self.temperature, self.alpha, self.hint_weight = temperature, alpha, hint_weight
        self.teacher = teacher
        self.teacher_head = nn.Linear(teacher.out_features, num_classes)
        self.load_teacher(teacher_checkpoint, num_classes)
        self.freeze("teacher")
        self.freeze("teacher_head")
        self.hint = nn.Linear(backbone.out_features, teacher.out_features) if hint_weight > 0 else None
        self.teacher_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.agreement = MeanMetric()

    def load_teacher(self, checkpoint: str | os.PathLike, num_classes: int) -> None:
        path = resolve_checkpoint(checkpoint)
        state = read_state_dict(path)  # read once for the check and both parts
        head = state.get("head.weight")
        if head is not None and head.ndim == 2 and head.shape[0] != num_classes:
            raise ConfigError(
                f"The teacher in {path} classifies {head.shape[0]} classes but the data has {num_classes}; "
                "distil on the data the teacher was trained for, or use a teacher of these classes."
            )
        self.load_part("teacher", path, "backbone.", state)
        self.load_part("teacher_head", path, "head.", state)

    @torch.no_grad()
    def teach(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's features and logits for `x`."""
        features = self.teacher(x)
        return features, self.teacher_head(features)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        x, y = field(batch, "input", "Distill"), batch["target"]
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        teacher_features, teacher_logits = self.teach(x)  # the same view the student sees
        features = self.backbone(x)
        logits = self.head(features)
        loss_kd = soft_target_loss(logits, teacher_logits, self.temperature)
        loss_ce = self.loss(logits, y)  # labelled samples only
        loss = self.alpha * loss_kd + (1 - self.alpha) * loss_ce
        parts = {"train/loss_kd": loss_kd, "train/loss_ce": loss_ce}
        if self.hint is not None:
            parts["train/loss_hint"] = hint_loss(self.hint(features), teacher_features)
            loss = loss + self.hint_weight * parts["train/loss_hint"]
        self.log_train({"train/loss": loss, **parts}, batch_size=len(y))
        self.train_metrics.update(logits.detach(), y)
        return loss

    def evaluate(self, batch: Batch, stage: str) -> dict[str, torch.Tensor]:
        out = super().evaluate(batch, stage)  # the student's logits, scored
        if stage == "test":  # and, once, how it compares with its teacher
            _, teacher_logits = self.teach(field(batch, "input", "Distill"))
            self.teacher_acc.update(teacher_logits, batch["target"])
            self.agreement.update((out["logits"].argmax(-1) == teacher_logits.argmax(-1)).float())
        return out

    def log_evaluation(self, stage: str) -> None:
        super().log_evaluation(stage)
        if stage == "test":
            self.log("test/teacher_acc", self.teacher_acc)
            self.log("test/agreement", self.agreement)

    # ---- the checkpoint is the student's ----

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PARTS)]:
            del state[key]
        hint = {k: state.pop(k) for k in [k for k in state if k.startswith("hint.")]}
        if hint:
            checkpoint[HINT_KEY] = hint

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        # Lightning loads the state dict strictly after this hook: the teacher comes back from
        # teacher_checkpoint (already loaded), the regressor from its own entry.
        state = checkpoint["state_dict"]
        state.update({k: v for k, v in self.state_dict().items() if k.startswith(TEACHER_PARTS)})
        state.update(checkpoint.get(HINT_KEY, {}))
        if self.hint is not None and not any(k.startswith("hint.") for k in state):
            raise ConfigError("This checkpoint was trained without a hint regressor; resume it with hint_weight: 0.")
