"""CLIP's parts: the whole-set metrics against their definitions, the logit scale, the checks, and
its image tower as a pretrained backbone."""

import math
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F

import models.multimodal as multimodal
from datamodules import CaptionedDigitsDataModule
from models import CLIP, FineTune
from models.backbones import CNN, MLP, Transformer
from models.errors import ConfigError
from models.losses import clip_loss
from models.optim import parameter_groups


def towers(text_len: int = 64) -> dict:
    return dict(image_backbone=CNN(channels=[8]),
                text_backbone=Transformer(input="tokens", vocab_size=259, d_model=16, depth=1, heads=2, max_len=text_len))


def test_the_whole_set_loss_is_the_clip_loss_of_all_pairs_as_one_batch(monkeypatch):
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(10, 4), dim=1), F.normalize(torch.randn(10, 4), dim=1)
    monkeypatch.setattr(multimodal, "CHUNK", 3)  # several blocks of rows, the last one short
    assert multimodal.whole_set_clip_loss(image, text, torch.tensor(7.0)).item() == pytest.approx(
        clip_loss(image, text, 7.0).item(), rel=1e-6)


def test_recall_counts_a_query_whose_top_k_holds_a_match(monkeypatch):
    monkeypatch.setattr(multimodal, "CHUNK", 2)
    keys = torch.eye(4)  # key j points along axis j
    # Query 0 is nearest key 0 (its own): a hit at 1. Query 1 is nearest key 2, then key 1: a hit at 2 only.
    # Query 2 is nearest key 3, whose caption is word for word its own (id 2): a hit at 1. Query 3 is nearest key 0.
    queries = torch.tensor([[1.0, 0, 0, 0], [0, 0.6, 0.8, 0], [0, 0, 0, 1.0], [0.9, 0, 0, 0.1]])
    ids = torch.tensor([0, 1, 2, 2])
    assert multimodal.recall_at_k(queries, keys, ids, ids, 1).item() == pytest.approx(2 / 4)
    assert multimodal.recall_at_k(queries, keys, ids, ids, 2).item() == pytest.approx(4 / 4)


def test_an_evaluation_set_of_one_pair_is_scored():
    # torchmetrics squeezes a one-element state to a scalar; retrieval over the one pair still ranks it first.
    pairs = multimodal.PairedEmbeddings()
    pairs.update(torch.ones(1, 4), torch.ones(1, 4), torch.tensor([7]))
    clip = multimodal.CLIP(**towers())
    clip.pairs["val"] = pairs
    logged = {}
    clip.log_dict = lambda metrics, **kwargs: logged.update(metrics)
    clip.log_evaluation("val")
    assert logged["val/i2t_recall@1"].item() == logged["val/t2i_recall@5"].item() == 1.0


def test_the_logit_scale_starts_at_one_over_the_temperature_and_is_capped():
    model = CLIP(**towers())
    assert model.scale.item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    assert model.scale.item() == pytest.approx(100.0)
    model.scale.backward()
    assert model.logit_scale.grad == 0  # at the cap, training cannot push it further
    (group,) = [g for g in parameter_groups(model, no_decay=model.no_decay) if any(p is model.logit_scale for p in g["params"])]
    assert group["weight_decay"] == 0.0  # a temperature, never pulled towards zero


def test_clip_refuses_a_text_tower_that_reads_no_tokens_and_a_scale_above_its_cap():
    with pytest.raises(ConfigError, match="text_backbone must read tokens"):
        CLIP(image_backbone=CNN(channels=[8]), text_backbone=MLP(width=8))
    with pytest.raises(ConfigError, match="exceeds max_logit_scale"):
        CLIP(**towers(), temperature=0.005)


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_captions_longer_than_the_text_tower_reads_are_refused_before_training():
    with pytest.raises(ConfigError, match="raise the text backbone's max_len or lower data.max_len"):
        trainer(max_steps=1, enable_checkpointing=False).fit(CLIP(**towers(text_len=32)),
                                                               datamodule=CaptionedDigitsDataModule(max_len=64))


def test_the_image_tower_of_a_trained_clip_loads_into_finetune(tmp_path):
    L.seed_everything(0)
    clip = CLIP(**towers(), optimizer=partial(torch.optim.AdamW, lr=3e-3))
    fit = trainer(max_epochs=1, limit_val_batches=1, enable_checkpointing=False)
    fit.fit(clip, datamodule=CaptionedDigitsDataModule())
    assert math.isfinite(float(fit.callback_metrics["val/zeroshot_acc"]))
    fit.save_checkpoint(tmp_path / "clip.ckpt")
    tuned = FineTune(backbone=CNN(channels=[8]), num_classes=10, checkpoint=str(tmp_path / "clip.ckpt"))
    for name, tensor in clip.image_backbone.state_dict().items():
        assert torch.equal(tuned.backbone.state_dict()[name], tensor), name
