import csv
from pathlib import Path

from experiments.cli import DEFAULTS

MLP = str(DEFAULTS.parent / "digits" / "mlp.yaml")


def test_output_that_is_not_a_terminal_gets_one_line_per_epoch_with_its_metrics(cli, capsys):
    run = cli("fit", "--config", MLP, "--trainer.max_epochs=2")  # pytest's captured stdout is not a terminal
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2 step 20", "epoch 2/2 step 40"]
    shown = dict(pair.split(" ") for pair in lines[-1].split(": ", 1)[1].split("  "))
    assert {"train/loss", "val/loss", "val/acc"} <= shown.keys()
    logged = [row for row in csv.DictReader(open(Path(run.trainer.log_dir) / "metrics.csv")) if row["val/acc"]]
    assert shown["val/acc"] == f"{float(logged[-1]['val/acc']):.4g}"  # the second epoch's, as logged
    # The training metrics the task logs at the epoch's end are that epoch's too, not the one before's.
    rows = list(csv.DictReader(open(Path(run.trainer.log_dir) / "metrics.csv")))
    first = dict(pair.split(" ") for pair in lines[0].split(": ", 1)[1].split("  "))
    trained = [row["train/acc"] for row in rows if row["train/acc"]]
    assert first["train/acc"] == f"{float(trained[0]):.4g}" and shown["train/acc"] == f"{float(trained[1]):.4g}"
