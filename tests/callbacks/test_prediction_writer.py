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


def test_rows_name_the_input_and_the_classes_in_the_datas_order(tmp_path):
    batches, indices = predictions()
    batches[1]["target"] = torch.tensor([-100])  # an unlabelled sample
    data = SimpleNamespace(classes=["zebra", "ant"], predict_names=[f"img{i}.png" for i in range(10)])
    trainer = SimpleNamespace(world_size=1, global_rank=0, log_dir=str(tmp_path), datamodule=data)
    CSVPredictionWriter().write_on_epoch_end(trainer, None, batches, indices)
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert list(rows[0]) == ["index", "input", "target", "pred", "prob", "top_k", "prob_zebra", "prob_ant"]
    assert [(r["input"], r["target"], r["pred"], r["prob"]) for r in rows] == [
        ("img4.png", "zebra", "zebra", "0.900000"), ("img7.png", "zebra", "ant", "0.800000"),
        ("img9.png", "", "zebra", "0.600000")]
    assert rows[1]["top_k"] == "ant 0.800; zebra 0.200"

