"""The first training steps of the shipped digits recipes give pinned losses, to 4 decimals.

A silent change to a training step (data order, augmentation, initialisation, loss,
optimizer groups, schedule) moves these numbers and fails here in seconds, long before a
learning test would notice. When a change is meant to move them, re-pin them in the same
commit and say why. Re-pinned when the training order became DistributedSampler's seeded
per-epoch permutation on any number of processes and lazy layers took a seed of their own
(for resumable epochs, and DDP equal to one process); the task-base refactor before that had
reproduced the first pins exactly.
"""

import csv
from pathlib import Path

import pytest

from experiments.cli import DEFAULTS

PINNED = {
    "cnn": [2.4976, 1.9068, 1.6032, 1.3427, 1.2958],
    "mlp": [2.2973, 2.2334, 2.1377, 2.0549, 2.0346],
    "transformer": [2.3485, 2.3162, 2.2191, 2.1741, 2.1723],
    "simclr": [5.8457, 5.4266, 5.2266, 5.0928, 5.0062],
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
