"""FineTune starts from any litlab or plain PyTorch checkpoint, in each of its modes."""

from functools import partial

import lightning as L
import pytest
import safetensors.torch
import torch

from datamodules import DigitsDataModule
from models import Classifier, FineTune, SimCLR
from models.backbones import CNN, MLP


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, **kwargs
    )


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory) -> tuple[CNN, dict]:
    """A CNN trained for one epoch inside a Classifier, saved as a Lightning .ckpt, .pt and .safetensors."""
    folder = tmp_path_factory.mktemp("weights")
    L.seed_everything(0)
    model = Classifier(backbone=CNN(channels=[8]), num_classes=10, optimizer=partial(torch.optim.Adam, lr=0.01))
    fit = trainer(max_epochs=1)
    fit.fit(model, datamodule=DigitsDataModule())
    fit.save_checkpoint(folder / "classifier.ckpt")
    torch.save(model.backbone.state_dict(), folder / "backbone.pt")
    safetensors.torch.save_file(model.backbone.state_dict(), folder / "backbone.safetensors")
    return model.backbone.eval(), {kind: str(folder / name) for kind, name in
                                   (("ckpt", "classifier.ckpt"), ("pt", "backbone.pt"), ("safetensors", "backbone.safetensors"))}


@pytest.mark.parametrize("kind", ["ckpt", "pt", "safetensors"])
def test_finetune_starts_from_every_format(trained_cnn, kind):
    source, files = trained_cnn
    model = FineTune(backbone=CNN(channels=[8]), num_classes=10, checkpoint=files[kind]).eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model.backbone(x), source(x))


def test_finetune_starts_from_a_simclr_checkpoint(tmp_path):
    L.seed_everything(0)
    from datamodules import Augmentation

    simclr = SimCLR(backbone=CNN(channels=[8]), num_classes=10)
    fit = trainer(max_steps=3, limit_val_batches=1)
    fit.fit(simclr, datamodule=DigitsDataModule(augment=Augmentation(views=2, crop_padding=1)))
    fit.save_checkpoint(tmp_path / "simclr.ckpt")
    model = FineTune(backbone=CNN(channels=[8]), num_classes=10, checkpoint=str(tmp_path / "simclr.ckpt")).eval()
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model.backbone(x), simclr.backbone.eval()(x))


def test_linear_mode_leaves_the_backbone_and_its_batch_norm_untouched(trained_cnn):
    source, files = trained_cnn
    model = FineTune(backbone=CNN(channels=[8]), num_classes=10, checkpoint=files["pt"], mode="linear")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head = model.head.weight.clone()
    trainer(max_epochs=1).fit(model, datamodule=DigitsDataModule())
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, running stats, batch counts
    assert not torch.equal(head, model.head.weight)  # while the head did learn
    assert not model.backbone.training


def test_full_mode_trains_the_backbone_at_its_own_rate(trained_cnn):
    _, files = trained_cnn
    model = FineTune(backbone=CNN(channels=[8]), num_classes=10, checkpoint=files["pt"], backbone_lr_scale=0.1,
                     optimizer=partial(torch.optim.SGD, lr=0.5))
    fit = trainer(max_steps=1)
    fit.fit(model, datamodule=DigitsDataModule())
    rates = {id(p): g["lr"] for g in fit.optimizers[0].param_groups for p in g["params"]}
    assert rates[id(model.backbone.features[0].weight)] == pytest.approx(0.05)
    assert rates[id(model.head.weight)] == pytest.approx(0.5)


def test_gradual_mode_unfreezes_the_backbone_at_the_given_epoch(trained_cnn):
    _, files = trained_cnn
    model = FineTune(backbone=CNN(channels=[8]), num_classes=10, checkpoint=files["pt"], mode="gradual",
                     unfreeze_at_epoch=1)
    weight = model.backbone.features[0].weight
    fit = trainer(max_epochs=1)
    fit.fit(model, datamodule=DigitsDataModule())
    assert not weight.requires_grad  # frozen through epoch 0
    fit = trainer(max_epochs=2)
    fit.fit(model, datamodule=DigitsDataModule())
    assert weight.requires_grad and len(fit.optimizers[0].param_groups) > 2  # joined the optimizer at epoch 1


def test_a_checkpoint_of_another_architecture_is_refused_by_name(trained_cnn):
    _, files = trained_cnn
    with pytest.raises(ValueError, match="missing|unexpected|shape"):
        FineTune(backbone=MLP(width=16), num_classes=10, checkpoint=files["pt"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FineTune(backbone=CNN(channels=[8]), num_classes=10, checkpoint="nowhere.ckpt")


def test_linear_mode_freezes_a_backbone_whose_first_layer_is_sized_by_the_data():
    # With no checkpoint the lazy first layer has no shape until setup; it must still end frozen.
    L.seed_everything(0)
    model = FineTune(backbone=CNN(channels=[8]), num_classes=10, checkpoint=None, mode="linear")
    trainer(max_steps=2).fit(model, datamodule=DigitsDataModule())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters()) and not model.backbone.training
