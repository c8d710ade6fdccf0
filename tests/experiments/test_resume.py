"""A fit interrupted mid-epoch and resumed from its last.ckpt ends exactly where the
uninterrupted fit ends: same weights, bit for bit, and the same metrics file, in the same run
directory, with shuffling, dropout and augmentation (per sample in worker processes, and on
the device) all drawing."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.cli import DEFAULTS
from models.checkpoints import resolve_checkpoint

DIGITS = DEFAULTS.parent / "digits"


class Interrupted(Exception):
    """Stands for a kill: the process's state is lost, only what is on disk remains."""


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.parametrize(
    "experiment, flags",
    [("cnn_augment", ["--data.num_workers=2", "--model.backbone.dropout=0.2"]), ("simclr", [])],
    ids=["per-sample-in-workers", "on-device"],
)
def test_an_interrupted_fit_resumed_from_last_ckpt_ends_bit_identical(cli, monkeypatch, experiment, flags):
    args = ["fit", "--config", str(DIGITS / f"{experiment}.yaml"), "--trainer.max_epochs=3", *flags]
    reference = Path(cli(*args).trainer.log_dir)

    task = type(cli(*args, "--trainer.max_steps=1").model)  # the task class the recipe builds
    train = task.training_step

    def killed_in_epoch_two(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 2:
            raise Interrupted
        return train(self, batch, batch_idx)

    monkeypatch.setattr(task, "training_step", killed_in_epoch_two)
    with pytest.raises(Interrupted):
        cli(*args)
    monkeypatch.setattr(task, "training_step", train)
    interrupted = max(reference.parent.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    # A new process starts from other random states; the checkpoint must bring back the right ones.
    torch.manual_seed(1234), random.seed(1234), np.random.seed(1234)
    resumed = Path(cli(*args, "--ckpt_path=last").trainer.log_dir)

    assert resumed == interrupted  # the interrupted run's own directory, continued
    expected, got = final_state(reference), final_state(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), [k for k in expected if not torch.equal(expected[k], got[k])]
    # Every metric of every step, as the uninterrupted run logged it: the rows past the checkpoint
    # that the interrupted run had written are replaced by the resumed run's.
    assert (resumed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


@pytest.mark.slow
def test_a_fit_killed_at_random_moments_resumes_bit_identical(tmp_path):
    # Real kills: SIGKILL at seeded random moments once a last.ckpt exists, then `--ckpt_path last`.
    import os
    import signal
    import subprocess
    import sys
    import time

    command = [str(Path(sys.executable).with_name("litlab")), "fit", "--config", str(DIGITS / "cnn_augment.yaml"),
               "--trainer.max_epochs=4", "--trainer.enable_progress_bar=false", "--data.num_workers=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}

    def start(*extra: str, cwd: Path) -> subprocess.Popen:
        return subprocess.Popen([*command, *extra], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    (tmp_path / "reference").mkdir()
    assert start(cwd=tmp_path / "reference").wait(timeout=300) == 0
    expected = final_state(tmp_path / "reference" / "runs" / "digits-cnn-augment" / "version_0")
    delays = random.Random(0).sample([0.1 * i for i in range(1, 15)], 3)
    identical = 0
    for trial, delay in enumerate(delays):
        cwd = tmp_path / f"trial{trial}"
        cwd.mkdir()
        run = start(cwd=cwd)
        last = cwd / "runs" / "digits-cnn-augment" / "version_0" / "checkpoints" / "last.ckpt"
        while not last.exists() and run.poll() is None:
            time.sleep(0.05)
        time.sleep(delay)
        if run.poll() is not None:
            continue  # finished before the kill: not a trial
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=60)
        resumed = start("--ckpt_path=last", cwd=cwd)
        assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
        # The newest last.ckpt: the resumed run's, or the killed run's if it was killed after its last epoch.
        got = torch.load(resolve_checkpoint(cwd / "runs" / "digits-cnn-augment"), weights_only=True)["state_dict"]
        metrics = (cwd / "runs" / "digits-cnn-augment" / "version_0" / "metrics.csv").read_text()
        reference_metrics = (tmp_path / "reference" / "runs" / "digits-cnn-augment" / "version_0" / "metrics.csv").read_text()
        identical += all(torch.equal(expected[k], got[k]) for k in expected) and metrics == reference_metrics
        print(f"kill {delay:.1f} s after the first last.ckpt: identical={identical}")
    assert identical == len(delays)


@pytest.mark.slow
def test_a_resumed_fit_continues_its_run_directory_and_its_wandb_run(litlab, wandb_run, tmp_path):
    # Subprocesses: W&B keeps process-wide settings that an earlier in-process run would leave behind.
    mlp = str(DIGITS / "mlp.yaml")
    quiet = ["--trainer.enable_progress_bar=false"]
    assert litlab("fit", "--config", mlp, "--trainer.max_epochs=1", *quiet).returncode == 0
    resumed = litlab("fit", "--config", mlp, "--trainer.max_epochs=2", "--ckpt_path=last", *quiet)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [p.name for p in (tmp_path / "runs" / "digits-mlp").iterdir()] == ["version_0"]
    first, second = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "runs" / "digits-mlp" / "version_0" / "wandb_id").read_text()
    assert first.name.endswith(run_id) and second.name.endswith(run_id)  # one W&B run, synced as one
    steps = [row["trainer/global_step"] for row in wandb_run(second)["history"] if "val/acc" in row]
    assert steps == [39]  # the step axis continues: epoch 1 ends at step 39, not 19
