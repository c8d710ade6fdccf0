"""Lightning's own callbacks, named in a config as a user would, work with litlab's tasks (digits MLP, two epochs)."""

import csv
from pathlib import Path

import pytest

from experiments.cli import DEFAULTS

MLP = str(DEFAULTS.parent / "digits" / "mlp.yaml")
ADD = "--trainer.callbacks+=lightning.pytorch.callbacks."


def fit(cli, *args):
    return cli("fit", "--config", MLP, "--trainer.max_epochs=2", *args)


def test_the_learning_rate_finder_sets_the_rate_the_optimizer_then_uses(cli):
    run = fit(cli, ADD + "LearningRateFinder", "--trainer.callbacks.num_training_steps=20")
    found = run.model.lr
    assert found is not None and found > 0
    optimizer = run.trainer.optimizers[0]
    assert [g["initial_lr"] if "initial_lr" in g else g["lr"] for g in optimizer.param_groups] == pytest.approx(
        [found * g["lr_scale"] for g in optimizer.param_groups])


def test_ema_weight_averaging_averages_the_lazily_sized_model(cli):
    run = fit(cli, ADD + "EMAWeightAveraging")
    # It copies the model as it sets up: lazy layers already sized, or the copy would not fit.
    assert run.trainer.state.finished
    assert float(run.trainer.callback_metrics["test/acc"]) > 0.5


def test_early_stopping_stops_and_says_why(cli, capsys):
    run = fit(cli, "--trainer.max_epochs=30", ADD + "EarlyStopping", "--trainer.callbacks.monitor=val/loss",
              "--trainer.callbacks.patience=1", "--trainer.callbacks.min_delta=0.05")
    assert run.trainer.current_epoch < 29
    out = capsys.readouterr().out
    assert "stopped early at epoch" in out and "val/loss did not improve" in out


def test_backbone_finetuning_trains_the_backbone_only_from_its_epoch(cli):
    run = fit(cli, ADD + "BackboneFinetuning", "--trainer.callbacks.unfreeze_backbone_at_epoch=1")
    # Frozen at the start, so the optimizer was built without it; at epoch 1 the callback added it.
    groups = run.trainer.optimizers[0].param_groups
    backbone = {id(p) for p in run.model.backbone.parameters()}
    assert [{id(p) for p in g["params"]} & backbone for g in groups[:-1]] == [set()] * (len(groups) - 1)
    assert {id(p) for p in groups[-1]["params"]} == backbone


def test_throughput_monitor_counts_samples_with_the_data_contract(cli):
    run = fit(cli, ADD + "ThroughputMonitor", "--trainer.callbacks.batch_size_fn=models.contract.batch_size")
    with (Path(run.trainer.log_dir) / "metrics.csv").open() as f:
        samples = [float(row["train/samples"]) for row in csv.DictReader(f) if row.get("train/samples")]
    assert samples and samples == sorted(samples) and samples[-1] > 0  # counted as the steps go
