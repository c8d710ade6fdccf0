"""Self-supervised pretraining: SimCLR for images."""

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from models import contract
from models.contract import IGNORE_INDEX, Batch, field
from models.errors import ConfigError, check_positive
from models.losses import nt_xent
from models.optim import OptimizerCallable, Schedule
from models.task import Task

# Validation dataloaders when the k-NN monitor is on: the reference set first, so its
# features are ready before the first validation batch is voted on.
REFERENCE, VALIDATION = 0, 1


def knn_vote(
    features: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, k: int, temperature: float, classes: int
) -> torch.Tensor:
    """Class scores (B, C) from the k most similar reference samples, each weighted by
    exp(similarity / temperature) (Wu et al., 2018). Features and bank are L2-normalised."""
    similarity, index = (features @ bank.T).topk(min(k, len(bank)), dim=1)  # (B, k)
    votes = F.one_hot(bank_labels[index], classes).to(similarity.dtype)  # (B, k, C)
    return (votes * (similarity / temperature).exp().unsqueeze(-1)).sum(dim=1)  # (B, C)


class SimCLR(Task):
    """Contrastive pretraining (Chen et al., 2020): two augmented views of each image must find
    each other among all views in the global batch.

    The data must give two views per training image (`augment.views: 2`); labels, where the
    data has them, never reach the contrastive loss. They feed two monitors of the
    representation: a linear probe trained on detached features in its own parameter group,
    without weight decay (`val/probe_acc`, and `test/probe_acc` when tested; its cross entropy
    is logged as `val/loss`, so checkpoints keep the epoch whose features a linear classifier
    reads best), and, every
    `knn_every` epochs and at the last, a k-nearest-neighbour vote against the labelled
    training images (`val/knn_acc`), which the data serves as an extra validation dataloader.
    `compile` compiles the backbone, as Classifier's does.
    """

    compiled_parts = ("backbone",)

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        projection_dim: int = 64,
        temperature: float = 0.5,
        optimizer: OptimizerCallable = torch.optim.Adam,
        schedule: Schedule = "cosine",
        warmup_fraction: float | None = None,
        probe_lr_scale: float = 1.0,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        knn_every: int = 1,
        projection_batch_norm: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer=optimizer, schedule=schedule, warmup_fraction=warmup_fraction)
        for name, value in (("temperature", temperature), ("knn_temperature", knn_temperature)):
            if value <= 0:
                raise ConfigError(f"{name} must be positive; got {value}.")
        check_positive("SimCLR", projection_dim=projection_dim, probe_lr_scale=probe_lr_scale)
        if knn_k < 0:
            raise ConfigError(f"SimCLR knn_k must be 0 (no k-NN monitor) or more; got {knn_k}.")
        if knn_every < 1:
            raise ConfigError(f"knn_every must be at least 1 (epochs between k-NN votes); got {knn_every}.")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.backbone = backbone
        width = backbone.out_features
        # SimCLR's projection head: the loss acts on its output, the backbone's features are kept.
        # Batch norm in the head (as SimCLR has it) normalises per process unless the trainer
        # synchronises it (`sync_batchnorm`, on GPUs); without it the head is batch-independent.
        norm = nn.BatchNorm1d(width) if projection_batch_norm else nn.Identity()
        self.projector = nn.Sequential(nn.Linear(width, width), norm, nn.ReLU(), nn.Linear(width, projection_dim))
        self.probe = nn.Linear(width, num_classes) if num_classes else None
        self.lr_scales["probe"] = probe_lr_scale
        self.no_decay.add("probe")  # a monitor: decay would bias what it reports about the features
        self.output_parts.add("probe")
        self.temperature = temperature
        self.knn_k, self.knn_temperature, self.knn_every = knn_k, knn_temperature, knn_every
        self.knn = num_classes is not None and knn_k > 0
        if num_classes:
            # The probe is scored on the validation and the test images, each stage in metrics of its own.
            self.probe_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})  # exact across ranks
            self.probe_acc = nn.ModuleDict({stage: MulticlassAccuracy(num_classes, average="micro") for stage in ("val", "test")})
            self.knn_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.knn and stage in ("fit", "validate"):
            contract.request_reference_set(self.trainer.datamodule, "SimCLR's k-NN monitor (knn_k > 0)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        views = field(batch, "views", "SimCLR")
        if len(views) != 2:
            raise ConfigError(
                f"SimCLR needs exactly two views of each training image; set data.augment.views: 2, not {len(views)}."
            )
        b = len(views[0])
        features = self.backbone(torch.cat(views))  # both views in one pass: (2B, F), batch norm sees both
        z1, z2 = self.projector(features).split(b)  # 2 x (B, D)
        gather = None
        if self.trainer.world_size > 1:
            # Negatives from every rank, with gradients flowing back to where they came from.
            gather = lambda z: self.all_gather(z, sync_grads=True).flatten(0, 1)  # noqa: E731  (W, B, D) -> (W*B, D)
        loss = nt_xent(z1, z2, self.temperature, gather, self.global_rank)
        logged = {"train/loss": loss}
        target = batch.get("target")
        if self.probe is not None and target is not None:
            # The mean over labelled images, zero when a batch has none; no host sync to ask which.
            logits = self.probe(features[:b].detach())
            total = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum")
            probe_loss = total / (target != IGNORE_INDEX).sum().clamp(min=1)
            logged["train/probe_loss"] = probe_loss
            loss = loss + probe_loss  # the probe's parameters get only this gradient, the backbone none of it
        self.log_train(logged, batch_size=b)
        return loss

    def on_validation_epoch_start(self) -> None:
        last = self.trainer.max_epochs is not None and self.current_epoch + 1 >= self.trainer.max_epochs
        self._vote = (
            self.knn and not self.trainer.sanity_checking and ((self.current_epoch + 1) % self.knn_every == 0 or last)
        )
        self._reference: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._bank: tuple[torch.Tensor, torch.Tensor] | None = None

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.knn and dataloader_idx == REFERENCE:
            if self._vote:
                x = field(batch, "input", "SimCLR")
                self._reference.append((F.normalize(self.backbone(x).float(), dim=1), batch["target"]))
            return
        self.evaluate(batch, "val")

    def evaluate(self, batch: Batch, stage: str) -> None:
        """The linear probe's loss and accuracy on `stage`'s images, and in validation the k-NN vote."""
        if self.probe is None:
            return
        x, y = field(batch, "input", "SimCLR"), batch["target"]
        features = self.backbone(x)
        logits = self.probe(features)
        log = dict(batch_size=len(y), add_dataloader_idx=False)
        self.probe_loss[stage].update(F.cross_entropy(logits, y), weight=len(y))
        self.log(f"{stage}/loss", self.probe_loss[stage], **log)
        self.probe_acc[stage](logits, y)
        self.log(f"{stage}/probe_acc", self.probe_acc[stage], prog_bar=True, **log)
        if stage == "val" and self._vote:
            bank, labels = self._gathered_bank()
            query = F.normalize(features.float(), dim=1)
            scores = knn_vote(query, bank, labels, self.knn_k, self.knn_temperature, self.probe.out_features)
            self.knn_acc(scores, y)
            self.log("val/knn_acc", self.knn_acc, prog_bar=True, **log)

    def _gathered_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's reference features, once per validation: each rank saw its own shard."""
        if self._bank is None:
            features = torch.cat([f for f, _ in self._reference])  # (N, F)
            labels = torch.cat([y for _, y in self._reference])  # (N,)
            if self.trainer.world_size > 1:
                features, labels = (self.all_gather(t).flatten(0, 1) for t in (features, labels))
            self._bank = features, labels
        return self._bank
