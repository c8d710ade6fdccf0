"""Writes `litlab predict` output to a CSV file: one row per sample, in dataset order."""

import csv
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from models.contract import IGNORE_INDEX, class_names

TOP_K = 5  # the classes named in each row's top_k column


class CSVPredictionWriter(BasePredictionWriter):
    """Columns: `index` (position in the predict dataset), `input` (the file predicted on, for
    `--inputs`), `target` when the data has labels (empty for an unlabelled sample), `pred`,
    its probability `prob`, `top_k` (the most likely classes with their probabilities), and one
    `prob_<class>` column per class, classes by name in the data's label order; for a language
    model, `index`, `prompt` and `continuation`.

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
        datamodule = getattr(trainer, "datamodule", None)
        inputs = getattr(datamodule, "predict_names", None)
        rows = []
        for dl_predictions, dl_indices in zip(predictions, batch_indices or [[]] * len(predictions)):
            for b, batch in enumerate(dl_predictions):
                if "continuation" in batch:  # a language model continued one prompt (unbatched: no sampler indices)
                    rows.append({"index": b, **batch})
                    continue
                probs = batch["probs"].float().cpu()
                names = class_names(pl_module, datamodule, probs.shape[1])
                top = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
                target = batch.get("target")
                for i, index in enumerate(dl_indices[b]):
                    row = {"index": int(index)}
                    if inputs is not None:
                        row["input"] = inputs[int(index)]
                    if target is not None:
                        row["target"] = "" if int(target[i]) == IGNORE_INDEX else names[int(target[i])]
                    pred = int(batch["pred"][i])
                    row.update(pred=names[pred], prob=f"{float(probs[i, pred]):.6f}", top_k="; ".join(
                        f"{names[c]} {p:.3f}" for c, p in zip(top.indices[i].tolist(), top.values[i].tolist())))
                    row.update({f"prob_{name}": f"{p:.6f}" for name, p in zip(names, probs[i].tolist())})
                    rows.append(row)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["index", "pred"])
            writer.writeheader()
            writer.writerows(rows)
        rank_zero_info(f"Predictions written to {path}")
