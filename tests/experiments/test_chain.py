"""The project's whole story on digits, through the CLI: pretrain without labels, fine-tune on 5%,
distil into a small student on every image, then test the student as a plain Classifier.
Each stage must load the checkpoint the previous stage wrote (few epochs: this is about the hand-over)."""

import logging
from pathlib import Path

import pytest
import torch

from experiments.cli import DEFAULTS

DIGITS = DEFAULTS.parent / "digits"
SHORT = "--trainer.max_epochs=2"


def weights(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


@pytest.mark.slow
def test_pretrain_finetune_distil_test(cli, caplog):
    caplog.set_level(logging.INFO)
    cli("fit", "--config", str(DIGITS / "simclr.yaml"), SHORT)
    pretrained = Path("runs/digits-simclr/version_0/checkpoints/last.ckpt")
    assert f"CNN loaded from {pretrained}" not in caplog.text

    finetune = cli("fit", "--config", str(DIGITS / "finetune.yaml"), SHORT)
    assert f"CNN loaded from {pretrained} (keys under 'backbone.')" in caplog.text
    finetuned = Path("runs/digits-finetune/version_0/checkpoints/last.ckpt")
    assert finetune.trainer.global_step > 0

    distil = cli("fit", "--config", str(DIGITS / "distill_unlabelled.yaml"), SHORT)
    assert f"CNN loaded from {finetuned} (keys under 'backbone.')" in caplog.text
    teacher = distil.model.teacher.state_dict()
    assert all(torch.equal(teacher[k], v) for k, v in weights(finetuned, "backbone.").items())
    assert len(distil.datamodule.train_dataset) == len(distil.datamodule.labelled_dataset) + len(distil.datamodule.unlabelled_dataset)

    # The student stands alone: its own Classifier config tests its checkpoint and gets the same accuracy.
    student = distil.trainer.checkpoint_callback.best_model_path
    tested = cli(
        "test", "--config", str(DIGITS / "mlp.yaml"), "--model.backbone.depth=1", "--model.backbone.width=64",
        "--model.backbone.dropout=0",
        f"--ckpt_path={student}",
    )
    assert float(tested.trainer.callback_metrics["test/acc"]) == float(distil.trainer.callback_metrics["test/acc"])
    assert "test/teacher_acc" in distil.trainer.callback_metrics and "test/agreement" in distil.trainer.callback_metrics
