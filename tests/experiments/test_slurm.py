"""The sbatch template's preemption cycle, on one machine: SLURM's warning signal, Lightning's
requeue, SLURM's SIGTERM, and the requeued job resuming to the uninterrupted result. `srun` and
`scontrol` are stand-ins (srun runs the command; scontrol records the requeue and stops the job
with SIGTERM, as SLURM does); everything else is the real template, CLI and Lightning."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.cli import DEFAULTS

ROOT = DEFAULTS.parent.parent
SBATCH = ROOT / "experiments" / "slurm" / "train.sbatch"


def fake_slurm(folder: Path) -> dict[str, str]:
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\necho $$ > "$SRUN_PID"\nexec "$@"\n')
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\nkill -TERM $PPID\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)  # the template activates ./.venv
    return {
        **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
        "SRUN_PID": str(folder / "srun.pid"), "SCONTROL_LOG": str(folder / "scontrol.log"),
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "litlab", "SLURM_NTASKS": "1", "SLURM_NNODES": "1",
        "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
    }


@pytest.mark.slow
def test_a_slurm_job_warned_before_its_time_limit_is_requeued_and_resumes_to_the_same_result(tmp_path):
    options = ["--trainer.accelerator=cpu", "--trainer.max_epochs=3", "--data.num_workers=1",
               "--model.backbone.dropout=0.2", "--trainer.enable_progress_bar=false",
               "--trainer.enable_model_summary=false"]
    command = ["bash", str(SBATCH), str(ROOT / "experiments" / "digits" / "cnn_augment.yaml"), *options]
    (tmp_path / "reference").mkdir()  # the same job, never interrupted
    reference = subprocess.run(command, cwd=tmp_path / "reference", env=fake_slurm(tmp_path / "reference"),
                               capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert reference.returncode == 0, reference.stderr[-3000:]

    job = tmp_path / "job"
    job.mkdir()
    env = fake_slurm(job)
    run_dir = job / "runs" / "digits-cnn-augment" / "version_0"
    first = subprocess.Popen(command, cwd=job, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    while not (run_dir / "checkpoints" / "last.ckpt").exists() and first.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    assert first.poll() is None, first.stderr.read()[-3000:]
    os.kill(int((job / "srun.pid").read_text()), signal.SIGUSR1)  # SLURM's warning before the time limit
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 143, stderr[-3000:]
    assert (job / "scontrol.log").read_text().split() == ["requeue", "4242"]  # Lightning requeued the job
    assert list(run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's own requeue checkpoint, in the run directory
    assert "stopped by a signal at step" in stderr.strip().splitlines()[-1]

    # The requeued job: the same script and arguments, with SLURM_RESTART_COUNT set.
    second = subprocess.run(command, cwd=job, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
                            text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert second.returncode == 0, second.stderr[-3000:]
    assert [p.name for p in run_dir.parent.iterdir()] == ["version_0"]  # the same run, continued
    expected = torch.load(tmp_path / "reference" / "runs" / "digits-cnn-augment" / "version_0" / "checkpoints"
                          / "last.ckpt", weights_only=True)["state_dict"]
    got = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_the_sbatch_template_asks_for_the_warning_signal_and_requeue():
    text = SBATCH.read_text()
    assert "#SBATCH --signal=USR1@" in text and "#SBATCH --requeue" in text
    assert "--trainer.plugins.auto_requeue=true" in text and "SLURM_RESTART_COUNT" in text
