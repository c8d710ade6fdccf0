"""Writes `litlab predict` output to a CSV file: one row per sample, in dataset order."""

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


class CSVPredictionWriter(BasePredictionWriter):
    """Columns: `index` (position in the predict dataset), `target` when the data has labels,
    `pred`, and one `prob_<class>` column per class; for a language model, `index`, `prompt`
    and `continuation`.

    `path` defaults to `predictions.csv` in the run's log directory. Under DDP each rank writes
    its share to `<stem>.rank<R>.csv`; the `index` column says where every row belongs.
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.path = path

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: list,
        batch_indices: list,
    ) -> None:
        path = Path(self.path or Path(trainer.log_dir or ".") / "predictions.csv")
        if trainer.world_size > 1:
            path = path.with_name(f"{path.stem}.rank{trainer.global_rank}{path.suffix}")
        # Indices always come per dataloader; predictions are flat for a single dataloader.
        if predictions and isinstance(predictions[0], dict):
            predictions = [predictions]
        rows = []
        for dl_predictions, dl_indices in zip(predictions, batch_indices or [[]] * len(predictions)):
            for b, batch in enumerate(dl_predictions):
                if "continuation" in batch:  # a language model continued one prompt (unbatched: no sampler indices)
                    rows.append({"index": b, **batch})
                    continue
                indices = dl_indices[b]
                probs = batch["probs"].float().cpu()
                target = batch.get("target")
                for i, index in enumerate(indices):
                    row = {"index": int(index)}
                    if target is not None:
                        row["target"] = int(target[i])
                    row["pred"] = int(batch["pred"][i])
                    row.update({f"prob_{c}": f"{p:.6f}" for c, p in enumerate(probs[i].tolist())})
                    rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["index", "pred"])
            writer.writeheader()
            writer.writerows(rows)
        rank_zero_info(f"Predictions written to {path}")
