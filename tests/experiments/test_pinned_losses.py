"""The first training steps of the shipped digits recipes give pinned losses, to 4 decimals.

A silent change to a training step (data order, augmentation, initialisation, loss,
optimizer groups, schedule) moves these numbers and fails here in seconds, long before a
learning test would notice. When a change is meant to move them, re-pin them in the same
commit and say why. Re-pinned when the training order became DistributedSampler's seeded
per-epoch permutation on any number of processes (for resumable epochs and DDP equal to one
process); the task-base refactor before it had reproduced the first pins exactly.
"""

import csv
from pathlib import Path

import pytest

from experiments.cli import DEFAULTS

PINNED = {
    "cnn": [2.4234, 1.8899, 1.6161, 1.4128, 1.2919],
    "mlp": [2.3119, 2.2613, 2.1719, 2.0725, 2.0514],
    "transformer": [2.3560, 2.2901, 2.2450, 2.1891, 2.2274],
    "simclr": [5.8991, 5.4357, 5.2575, 5.1432, 5.0098],
}


@pytest.mark.parametrize("experiment", PINNED)
def test_first_five_steps_give_the_pinned_losses(cli, experiment):
    run = cli(
        "fit",
        "--config", str(DEFAULTS.parent / "digits" / f"{experiment}.yaml"),
        "--trainer.max_steps=5",
        "--trainer.log_every_n_steps=1",
        "--trainer.limit_val_batches=0",
    )
    rows = csv.DictReader((Path(run.trainer.log_dir) / "metrics.csv").open())
    losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
    assert losses == pytest.approx(PINNED[experiment], abs=1e-4)
