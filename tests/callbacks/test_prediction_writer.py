import csv
from types import SimpleNamespace

import torch

from callbacks import CSVPredictionWriter


def predictions() -> tuple[list, list]:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    batches = [
        {"pred": probs[:2].argmax(-1), "probs": probs[:2], "target": torch.tensor([0, 0])},
        {"pred": probs[2:].argmax(-1), "probs": probs[2:], "target": torch.tensor([1])},
    ]
    return batches, [[[4, 7], [9]]]  # Lightning gives indices per dataloader, predictions flat for one


def test_rows_follow_the_dataset_indices(tmp_path):
    trainer = SimpleNamespace(world_size=1, global_rank=0, log_dir=str(tmp_path))
    CSVPredictionWriter().write_on_epoch_end(trainer, None, *predictions())
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert [(r["index"], r["target"], r["pred"]) for r in rows] == [("4", "0", "0"), ("7", "0", "1"), ("9", "1", "0")]
    assert float(rows[1]["prob_1"]) == 0.8


def test_each_rank_writes_its_own_share(tmp_path):
    trainer = SimpleNamespace(world_size=2, global_rank=1, log_dir=str(tmp_path))
    CSVPredictionWriter(path=str(tmp_path / "out.csv")).write_on_epoch_end(trainer, None, *predictions())
    assert (tmp_path / "out.rank1.csv").exists() and not (tmp_path / "out.csv").exists()
