"""What a classifier got wrong, at the end of `test`: the confusion matrix, written to the run
directory (`test_confusion.csv`, which `litlab report` plots) and, when a W&B logger is active,
logged to W&B with a table of the most confident mistakes."""

import csv
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from models.contract import IGNORE_INDEX, class_names
from models.run_state import gather_per_rank

CONFUSION_FILE = "test_confusion.csv"


class TestReport(L.Callback):
    """Needs a task whose `test_step` returns {"logits": (B, C)} (Classifier, FineTune, Distill);
    other tasks are left alone. `mistakes`: the rows of the W&B table, most confident first."""

    def __init__(self, mistakes: int = 32) -> None:
        self.mistakes = mistakes

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (pred, target) of every labelled sample
        self._wrong: list[tuple[float, int, int, torch.Tensor]] = []  # (confidence, target, pred, input)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "logits" not in outputs or "target" not in batch:
            return
        confidence, pred = outputs["logits"].detach().float().softmax(dim=-1).max(dim=-1)
        target = batch["target"]
        labelled = target != IGNORE_INDEX
        self._seen.append((pred[labelled].cpu(), target[labelled].cpu()))
        wrong = (labelled & (pred != target)).nonzero().flatten().tolist()
        x = batch.get("input")
        for i in wrong:
            self._wrong.append((float(confidence[i]), int(target[i]), int(pred[i]), None if x is None else x[i].cpu()))
        self._wrong = sorted(self._wrong, key=lambda row: -row[0])[: self.mistakes]

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seen = getattr(self, "_seen", [])
        if not seen and trainer.world_size == 1:
            return  # not a classifier
        empty = torch.zeros(0, dtype=torch.long)
        mine = (torch.cat([p for p, _ in seen]) if seen else empty, torch.cat([t for _, t in seen]) if seen else empty,
                getattr(self, "_wrong", []))
        # Collectives, so every rank takes part, a rank with no test sample too (log_dir broadcasts).
        everyone = gather_per_rank(trainer, mine)  # each rank tested its own share of the samples
        log_dir = trainer.log_dir
        pred = torch.cat([p for p, _, _ in everyone])
        target = torch.cat([t for _, t, _ in everyone])
        if not trainer.is_global_zero or not len(target):
            return
        wrong = sorted((row for _, _, rows in everyone for row in rows), key=lambda row: -row[0])[: self.mistakes]
        count = getattr(pl_module, "num_classes", None) or int(max(pred.max(), target.max())) + 1
        names = class_names(pl_module, trainer.datamodule, count)
        matrix = torch.bincount(target * count + pred, minlength=count * count).view(count, count)  # rows: true class
        if log_dir:
            path = Path(log_dir, CONFUSION_FILE)
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["true \\ predicted", *names])
                writer.writerows([name, *row] for name, row in zip(names, matrix.tolist()))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, pred, target, wrong, names)

    @staticmethod
    def _log_wandb(logger: WandbLogger, pred, target, wrong, names: list[str]) -> None:
        import wandb

        logger.experiment.log({
            "test/confusion_matrix": wandb.plot.confusion_matrix(
                y_true=target.tolist(), preds=pred.tolist(), class_names=names, title="Test confusion matrix"
            )
        })
        rows = []
        for confidence, true, predicted, x in wrong:
            image = None
            if x is not None and x.ndim == 3 and x.shape[0] in (1, 3):  # an image, (C, H, W): shown min-max scaled
                scaled = (x - x.min()) / (x.max() - x.min()).clamp(min=1e-8)
                image = wandb.Image(scaled.permute(1, 2, 0).squeeze(-1).numpy())
            rows.append([image, names[true], names[predicted], round(confidence, 4)])
        logger.log_table(key="test/mistakes", columns=["input", "true", "predicted", "confidence"], data=rows)
