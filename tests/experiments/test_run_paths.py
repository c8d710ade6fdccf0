"""Where runs go and how a checkpoint is named on the command line: run folders, `last`, and
run directories that two runs started together never share."""

import subprocess
from pathlib import Path

import pytest

from experiments.cli import DEFAULTS

MLP = str(DEFAULTS.parent / "digits" / "mlp.yaml")


def test_a_run_folder_and_last_stand_for_the_newest_last_checkpoint(cli):
    cli("fit", "--config", MLP, "--trainer.max_epochs=1")
    cli("fit", "--config", MLP, "--trainer.max_epochs=2", "--seed_everything=1")
    newest = Path("runs/digits-mlp/version_1/checkpoints/last.ckpt")

    def tested(ckpt_path: str) -> float:
        return float(cli("test", "--config", MLP, f"--ckpt_path={ckpt_path}").trainer.callback_metrics["test/acc"])

    explicit = tested(str(newest))
    assert tested("last") == explicit
    assert tested("runs/digits-mlp/version_1") == explicit
    assert tested("runs/digits-mlp/version_0") != explicit  # a folder means its own newest last.ckpt


@pytest.mark.slow
def test_two_fits_started_together_get_their_own_run_directories(tmp_path):
    import os
    import sys

    command = [str(Path(sys.executable).with_name("litlab")), "fit", "--config", MLP, "--trainer.max_epochs=1",
               "--trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), run.stdout.read(), run.stderr.read()) for run in runs]
    assert [code for code, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    folders = sorted(p.name for p in (tmp_path / "runs" / "digits-mlp").iterdir())
    assert folders == ["version_0", "version_1"]
    for folder in folders:
        assert (tmp_path / "runs" / "digits-mlp" / folder / "config.yaml").is_file()
        assert (tmp_path / "runs" / "digits-mlp" / folder / "checkpoints" / "last.ckpt").exists()
