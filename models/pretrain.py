"""Self-supervised pretraining: SimCLR for images."""

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from models.lazy import materialize
from models.losses import nt_xent
from models.optim import Schedule, configure_optimization


class SimCLR(L.LightningModule):
    """Contrastive pretraining (Chen et al., 2020): two augmented views of each image must find
    each other among all views in the global batch.

    The data must give two views per training image (`augment.views: 2`); labels, where the
    data has them, never reach the contrastive loss. They feed two monitors of the
    representation: a linear probe trained on detached features in its own parameter group
    (`val/probe_acc`; its cross entropy is logged as `val/loss`, so checkpoints keep the
    epoch whose features a linear classifier reads best), and a k-nearest-neighbour vote
    against the labelled training images (`val/knn_acc`).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        projection_dim: int = 64,
        temperature: float = 0.5,
        optimizer: OptimizerCallable = torch.optim.Adam,
        schedule: Schedule = "cosine",
        warmup_fraction: float = 0.0,
        probe_lr_scale: float = 1.0,
        knn_k: int = 20,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive; got {temperature}.")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.backbone = backbone
        width = backbone.out_features
        # SimCLR's projection head: the loss acts on its output, the backbone's features are kept.
        self.projector = nn.Sequential(
            nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, projection_dim)
        )
        self.probe = nn.Linear(width, num_classes) if num_classes else None
        self.temperature = temperature
        self.optimizer = optimizer
        self.schedule = schedule
        self.warmup_fraction = warmup_fraction
        self.probe_lr_scale = probe_lr_scale
        self.knn_k = knn_k
        if num_classes:
            self.probe_acc = MulticlassAccuracy(num_classes, average="micro")
            self.knn_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        materialize(self.backbone, self.trainer.datamodule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        views, *labels = batch
        if not isinstance(views, (tuple, list)) or len(views) != 2:
            raise ValueError("SimCLR needs two views of each training image; set data.augment.views: 2.")
        b = len(views[0])
        features = self.backbone(torch.cat(views))  # both views in one pass: (2B, F), batch norm sees both
        z1, z2 = self.projector(features).split(b)  # 2 x (B, D)
        gather = None
        if self.trainer.world_size > 1:
            # Negatives from every rank, with gradients flowing back to where they came from.
            gather = lambda z: self.all_gather(z, sync_grads=True).flatten(0, 1)  # noqa: E731  (W, B, D) -> (W*B, D)
        loss = nt_xent(z1, z2, self.temperature, gather, self.global_rank)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        if self.probe is not None and labels:
            probe_loss = F.cross_entropy(self.probe(features[:b].detach()), labels[0])
            self.log("train/probe_loss", probe_loss, batch_size=b)
            loss = loss + probe_loss  # the probe's parameters get only this gradient, the backbone none of it
        return loss

    def on_validation_epoch_start(self) -> None:
        self._bank = None
        dm = self.trainer.datamodule
        if self.probe is None or self.knn_k <= 0 or not hasattr(dm, "bank_dataloader"):
            return
        features, labels = [], []
        with torch.no_grad():
            for x, y in dm.bank_dataloader():
                # The hook the trainer would run: on the device path it normalises the raw images.
                x, y = dm.on_after_batch_transfer((x.to(self.device), y.to(self.device)), 0)
                features.append(F.normalize(self.backbone(x), dim=1))
                labels.append(y)
        self._bank = torch.cat(features), torch.cat(labels)  # (N, F), (N,)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        if self.probe is None:
            return
        x, y = batch
        features = self.backbone(x)
        logits = self.probe(features)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True, batch_size=len(y))
        self.probe_acc(logits, y)
        self.log("val/probe_acc", self.probe_acc, prog_bar=True, batch_size=len(y))
        if self._bank is not None:
            self.knn_acc(self._knn_vote(F.normalize(features, dim=1)), y)
            self.log("val/knn_acc", self.knn_acc, prog_bar=True, batch_size=len(y))

    def _knn_vote(self, features: torch.Tensor) -> torch.Tensor:
        """Class scores from the k most similar labelled images, weighted by exp(similarity / T) (Wu et al., 2018)."""
        bank, bank_labels = self._bank
        similarity, index = (features @ bank.T).topk(min(self.knn_k, len(bank)), dim=1)  # (B, k)
        votes = F.one_hot(bank_labels[index], self.probe.out_features).float()  # (B, k, C)
        return (votes * (similarity / 0.07).exp().unsqueeze(-1)).sum(dim=1)  # (B, C)

    def configure_optimizers(self):
        steps = int(self.trainer.estimated_stepping_batches)
        scale = {"probe": self.probe_lr_scale}
        return configure_optimization(self, self.optimizer, self.schedule, steps, self.warmup_fraction, scale)
