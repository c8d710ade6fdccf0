"""torchvision and timm models as backbones, with their weights from local files as an offline
cluster has them (nothing is downloaded here)."""

import sys

import lightning as L
import pytest
import safetensors.torch
import timm
import torch
import torchvision

from datamodules import FolderDataModule
from models import FineTune
from models.backbones import Timm, Torchvision
from models.errors import ConfigError


def saved(model: torch.nn.Module, folder, stem: str) -> dict[str, str]:
    """The model's whole state dict (classifier included, as published) as .pth and .safetensors."""
    state = model.state_dict()
    torch.save(state, folder / f"{stem}.pth")
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, folder / f"{stem}.safetensors")
    return {"pth": str(folder / f"{stem}.pth"), "safetensors": str(folder / f"{stem}.safetensors"), "state": state}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    return {
        "resnet18": saved(torchvision.models.resnet18(), folder, "resnet18"),
        "resnet34": saved(torchvision.models.resnet34(), folder, "resnet34"),
        "test_resnet": saved(timm.create_model("test_resnet"), folder, "test_resnet"),
    }


def assert_loaded(backbone: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Every weight of the file but its classifier's is the backbone's, and the backbone has no other."""
    loaded = backbone.model.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith(f"{backbone.classifier}.")}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def build(kind: str, weights_file: str) -> torch.nn.Module:
    if kind == "resnet18":
        return Torchvision(name="resnet18", weights_file=weights_file)
    return Timm(name="test_resnet", weights_file=weights_file)


def fine_tune_one_step(backbone: torch.nn.Module, root, mode: str = "full", steps: int = 1) -> FineTune:
    model = FineTune(backbone=backbone, num_classes=3, checkpoint=None, mode=mode, unfreeze_at_epoch=1)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=FolderDataModule(str(root), image_size=32, num_workers=0, batch_size=8))
    assert trainer.global_step == steps
    return model


@pytest.mark.parametrize("kind", ["resnet18", "test_resnet"])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_a_local_weights_file_fills_every_backbone_weight_and_fine_tunes(published, kind, fmt, datasets_on_disk, tmp_path):
    files = published[kind]
    backbone = build(kind, files[fmt])
    assert_loaded(backbone, files["state"])
    datasets_on_disk.image_folder(tmp_path / "images", classes=3, per_class=12)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    tuned = fine_tune_one_step(backbone, tmp_path / "images")
    assert any(not torch.equal(before[k], v) for k, v in tuned.backbone.state_dict().items())  # it trained


def test_a_file_of_another_model_is_refused_with_the_keys(published):
    with pytest.raises(ConfigError, match=r"does not match ResNet under prefix '': .*unexpected keys \(layer"):
        Torchvision(name="resnet18", weights_file=published["resnet34"]["pth"])
    with pytest.raises(ConfigError, match="does not match"):
        Timm(name="test_resnet", weights_file=published["resnet18"]["safetensors"])


def test_unknown_names_and_a_missing_timm_get_clear_errors(monkeypatch):
    with pytest.raises(ConfigError, match="torchvision has no classification model 'resnet19'"):
        Torchvision(name="resnet19")
    with pytest.raises(ConfigError, match="timm has no model 'resnet19x'"):
        Timm(name="resnet19x")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'litlab\[timm\]'"):
        Timm(name="test_resnet")


def test_weights_that_expect_other_statistics_than_the_data_get_a_warning(datasets_on_disk, tmp_path):
    datasets_on_disk.image_folder(tmp_path / "images", classes=3, per_class=12)
    backbone = Timm(name="test_resnet")  # its weights expect mean and std 0.5; the folder's are ImageNet's
    with pytest.warns(UserWarning, match=r"expect inputs normalised with mean \(0\.5, 0\.5, 0\.5\).*mean \(0\.485"):
        fine_tune_one_step(backbone, tmp_path / "images")


def test_grey_images_are_read_as_colour_and_resized_where_asked():
    backbone = Torchvision(name="resnet18", resize_to=32).eval()
    grey = torch.rand(2, 1, 8, 8)
    big = torch.nn.functional.interpolate(grey.expand(-1, 3, -1, -1), size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(backbone(grey), backbone.model(big), atol=1e-5)


def test_named_weights_with_a_local_copy_load_the_copy_and_report_their_preprocessing(published, monkeypatch):
    # Offline: the weights are named (for what they expect) and read from the file, never downloaded.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    backbone = Torchvision(name="resnet18", weights="IMAGENET1K_V1", weights_file=published["resnet18"]["pth"])
    assert backbone.preprocessing == {"input_size": 224, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    assert torch.equal(backbone.model.conv1.weight, published["resnet18"]["state"]["conv1.weight"])
    timm_backbone = Timm(name="test_resnet", pretrained=True, weights_file=published["test_resnet"]["safetensors"])
    assert timm_backbone.preprocessing["mean"] == (0.5, 0.5, 0.5)
    assert_loaded(timm_backbone, published["test_resnet"]["state"])


@pytest.mark.parametrize("mode", ["linear", "gradual"])
def test_fine_tuning_modes_freeze_and_release_a_zoo_backbone(published, mode, datasets_on_disk, tmp_path):
    datasets_on_disk.image_folder(tmp_path / "images", classes=3, per_class=12)
    backbone = Torchvision(name="resnet18", weights_file=published["resnet18"]["pth"])
    # Two epochs of two steps: gradual mode trains the head alone in the first, then the backbone joins.
    tuned = fine_tune_one_step(backbone, tmp_path / "images", mode=mode, steps=4)
    moved = [k for k, v in tuned.backbone.model.state_dict().items()
             if k in published["resnet18"]["state"] and not torch.equal(v, published["resnet18"]["state"][k])]
    if mode == "linear":
        assert moved == []  # frozen, batch-norm statistics included
    else:
        assert any(k.endswith("weight") for k in moved)
