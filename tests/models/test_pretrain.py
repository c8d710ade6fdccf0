"""SimCLR: its monitors run through the trainer, and pretraining pays off on few labels."""

import csv
import statistics
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from datamodules import Augmentation, DigitsDataModule
from experiments.cli import DEFAULTS
from models import FineTune, SimCLR
from models.backbones import CNN

DIGITS = DEFAULTS.parent / "digits"


@pytest.mark.slow
def test_knn_monitor_votes_every_n_epochs_and_at_the_last_through_a_validation_dataloader(tmp_path):
    L.seed_everything(0)
    model = SimCLR(backbone=CNN(channels=[8]), num_classes=10, knn_every=2, optimizer=partial(torch.optim.AdamW, lr=0.01))
    dm = DigitsDataModule(batch_size=128, augment=Augmentation(views=2, crop_padding=1))
    trainer = L.Trainer(
        max_epochs=3, logger=L.pytorch.loggers.CSVLogger(tmp_path), enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    # The reference set is the trainer's validation dataloader 0: labelled training images, not augmented.
    loaders = trainer.val_dataloaders
    assert len(loaders) == 2 and len(loaders[0].dataset) == len(dm.labelled_dataset)
    rows = list(csv.DictReader(open(Path(trainer.log_dir) / "metrics.csv")))
    voted = [int(r["epoch"]) for r in rows if r.get("val/knn_acc")]
    probed = [int(r["epoch"]) for r in rows if r.get("val/probe_acc")]
    assert voted == [1, 2] and probed == [0, 1, 2]  # every 2nd epoch, and the last
    assert float(rows[-1]["val/knn_acc"]) > 0.5  # ten classes: chance is 0.1
    groups = trainer.optimizers[0].param_groups
    probe = [g for g in groups if any(p is model.probe.weight for p in g["params"])][0]
    assert probe["weight_decay"] == 0.0 and max(g["weight_decay"] for g in groups) == 0.01


def test_simclr_refuses_single_view_data_by_name():
    model = SimCLR(backbone=CNN(channels=[8]), num_classes=10)
    batch = {"input": torch.zeros(4, 1, 8, 8), "target": torch.zeros(4, dtype=torch.long)}
    with pytest.raises(ValueError, match="SimCLR reads the batch field 'views'.*set data.augment.views: 2"):
        model.training_step(batch, 0)


@pytest.mark.slow
def test_simclr_pretraining_beats_training_from_scratch_on_few_labels(cli):
    # One pretraining run, as shipped; then each fine-tuning seed from it against the same
    # recipe from scratch. A broken contrastive loss, augmentation or weight hand-over makes
    # "pretrained" a second "scratch", and this fails.
    simclr = cli("fit", "--config", str(DIGITS / "simclr.yaml"))
    rows = list(csv.DictReader(open(Path(simclr.trainer.log_dir) / "metrics.csv")))
    assert float([r for r in rows if r.get("val/knn_acc")][-1]["val/knn_acc"]) > 0.9  # the monitors see a useful representation
    assert simclr.trainer.callback_metrics["test/probe_acc"] > 0.8  # and the probe, tested once on the test split
    scratch, pretrained, adapted = [], [], []
    for seed in (0, 1, 2):
        finetune = ["fit", "--config", str(DIGITS / "finetune.yaml"), f"--seed_everything={seed}"]
        pretrained.append(float(cli(*finetune).trainer.callback_metrics["test/acc"]))
        if seed < 2:  # scratch on two seeds: the gain is large
            scratch.append(float(cli(*finetune, "--model.checkpoint=null").trainer.callback_metrics["test/acc"]))
        # finetune_lora.yaml from the same SimCLR run: rank-2 adapters and the head, 4.8% of the parameters.
        run = cli("fit", "--config", str(DIGITS / "finetune_lora.yaml"), f"--seed_everything={seed}")
        adapted.append(float(run.trainer.callback_metrics["test/acc"]))
        trained = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        assert trained <= 0.05 * sum(p.numel() for p in run.model.parameters())
    print(f"scratch {scratch} pretrained {pretrained} lora {adapted}")
    # Measured: scratch 90.8 / 90.6 / 90.3, pretrained 97.2 / 95.8 / 96.1 (fine-tuning seeds 0, 1, 2),
    # a 5.8-point mean gain (2.2 under the previous training order). Scratch runs seeds 0 and 1 (5.8
    # points), held to what was real under both orders: better on every seed, by at least one point on average.
    assert all(p > s for p, s in zip(pretrained, scratch))
    assert statistics.mean(pretrained[:2]) - statistics.mean(scratch) >= 0.01
    # LoRA measured 94.7 / 94.4 / 95.3 against full fine-tuning's 97.2 / 95.8 / 96.1: 1.6 points behind
    # over the three seeds, within the 2 the claim asks; and above scratch on each seed.
    assert statistics.mean(adapted) >= statistics.mean(pretrained) - 0.02
    assert all(a > s for a, s in zip(adapted, scratch))


@pytest.mark.slow
def test_the_recipe_hands_the_pretrained_backbone_to_fine_tuning(cli):
    simclr = cli("fit", "--config", str(DIGITS / "simclr.yaml"), "--trainer.max_epochs=1")
    rows = list(csv.DictReader(open(Path(simclr.trainer.log_dir) / "metrics.csv")))
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"val/loss", "val/probe_acc", "val/knn_acc"} <= logged  # (one epoch: too few steps to log train/loss)
    assert {"test/loss", "test/probe_acc"} <= set(simclr.trainer.callback_metrics)  # the fit's closing test
    # finetune.yaml names the pretraining run's folder, whose weights FineTune loads as it is built.
    recipe = yaml.safe_load((DIGITS / "finetune.yaml").read_text())["model"]["init_args"]
    finetune = FineTune(CNN(**recipe["backbone"]["init_args"]), num_classes=10, checkpoint=recipe["checkpoint"])
    pretrained, loaded = simclr.model.backbone.state_dict(), finetune.backbone.state_dict()
    assert all(torch.equal(pretrained[k], loaded[k]) for k in pretrained)
