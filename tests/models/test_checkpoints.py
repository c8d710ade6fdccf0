import pickle
import re
from pathlib import Path

import lightning as L
import pytest
import safetensors.torch
import torch
from torch import nn

from datamodules import DataModule, Splits, TensorSamples
from models import Classifier
from models.backbones import CNN, MLP
from models.checkpoints import resolve_checkpoint, load_backbone, read_state_dict
from models.lazy import has_lazy


class TinyData(DataModule):
    """Random 6-feature vectors in 3 classes: the contract and nothing else."""

    num_classes = 3
    example_input = torch.zeros(2, 6)

    def load(self) -> Splits:
        generator = torch.Generator().manual_seed(0)
        x, y = torch.randn(32, 6, generator=generator), torch.randint(0, 3, (32,), generator=generator)
        data = TensorSamples(input=x, target=y)
        return Splits(train=data, val=data, test=data)


class SimCLRLike(nn.Module):
    """The layout a contrastive module saves: an encoder beside a projector."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(nn.Linear(encoder.out_features, 8), nn.ReLU(), nn.Linear(8, 4))


def trained_cnn() -> CNN:
    """A CNN whose batch-norm statistics have moved away from their defaults."""
    torch.manual_seed(0)
    cnn = CNN(channels=[4])
    for _ in range(3):
        cnn(torch.randn(4, 3, 8, 8))  # train mode: updates running_mean / running_var
    return cnn.eval()


def mlp(width: int, seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    backbone = MLP(width=width)
    backbone(torch.zeros(1, 6))  # materialise the lazy first layer
    return backbone


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_a_lightning_checkpoint_loads_into_a_fresh_lazy_backbone():
    L.seed_everything(0)
    model = Classifier(backbone=MLP(width=16), num_classes=3)
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=".",
    )
    trainer.fit(model, datamodule=TinyData(batch_size=8))
    (ckpt,) = Path("checkpoints").glob("*.ckpt")

    backbone = MLP(width=16)
    assert has_lazy(backbone)
    assert load_backbone(backbone, ckpt) == "backbone."
    assert_same_state(backbone, model.backbone)
    x = torch.randn(5, 6)
    assert torch.equal(backbone.eval()(x), model.backbone.eval()(x))


def save_plain(cnn: CNN, path: Path) -> None:
    torch.save(cnn.state_dict(), path)


def save_wrapped(cnn: CNN, path: Path) -> None:
    torch.save({"model": cnn.state_dict(), "epoch": 3}, path)


def save_safetensors(cnn: CNN, path: Path) -> None:
    safetensors.torch.save_file(cnn.state_dict(), path)


def save_simclr(cnn: CNN, path: Path) -> None:
    torch.save(SimCLRLike(cnn).state_dict(), path)


def save_nested(cnn: CNN, path: Path) -> None:
    state = {f"model.backbone.{key}": value for key, value in cnn.state_dict().items()}
    torch.save({"state_dict": {**state, "model.head.weight": torch.ones(2, 4)}, "global_step": 7}, path)


@pytest.mark.parametrize(
    "name, save, prefix",
    [
        ("plain.pt", save_plain, ""),
        ("wrapped.pth", save_wrapped, ""),
        ("weights.safetensors", save_safetensors, ""),
        ("simclr.pt", save_simclr, "encoder."),
        ("nested.bin", save_nested, "model.backbone."),
    ],
)
def test_each_format_loads_exactly_with_batch_norm_statistics(name, save, prefix):
    source = trained_cnn()
    assert source.features[1].num_batches_tracked == 3
    save(source, Path(name))

    backbone = CNN(channels=[4])
    assert load_backbone(backbone, name) == prefix
    assert_same_state(backbone, source)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(backbone.eval()(x), source(x))


def test_explicit_prefix_is_used_exactly():
    source = mlp(16)
    torch.save(source.state_dict(), "bare.pt")
    torch.save({f"backbone.{k}": v for k, v in source.state_dict().items()}, "prefixed.pt")
    assert load_backbone(MLP(width=16), "bare.pt", prefix="") == ""
    assert load_backbone(MLP(width=16), "prefixed.pt", prefix="backbone.") == "backbone."
    with pytest.raises(ValueError, match=r"prefixed.pt does not match MLP under prefix 'head.': 4 missing keys"):
        load_backbone(MLP(width=16), "prefixed.pt", prefix="head.")
    with pytest.raises(ValueError, match=r"4 missing keys \(layers.1.weight, .*4 unexpected keys \(backbone.layers"):
        load_backbone(MLP(width=16), "prefixed.pt", prefix="")


def test_of_two_fitting_backbones_the_one_with_matching_shapes_wins():
    # A distillation checkpoint: a narrow student and a wide teacher with the same key names.
    state = {f"student.{k}": v for k, v in mlp(8).state_dict().items()}
    state |= {f"teacher.{k}": v for k, v in mlp(16, seed=1).state_dict().items()}
    torch.save(state, "distill.pt")
    assert load_backbone(MLP(width=8), "distill.pt") == "student."
    assert load_backbone(MLP(width=16), "distill.pt") == "teacher."
    # An equal fit goes to a prefix in PREFIXES, here over an averaged copy that sorts first.
    twins = {f"student.{k}": v for k, v in mlp(8).state_dict().items()}
    torch.save(twins | {f"ema.{k}": v for k, v in mlp(8, seed=1).state_dict().items()}, "twins.pt")
    assert load_backbone(MLP(width=8), "twins.pt") == "student."


def test_another_architectures_weights_name_the_missing_and_unexpected_keys():
    torch.save(trained_cnn().state_dict(), "cnn.pt")
    backbone = MLP(width=16)
    with pytest.raises(ValueError) as error:
        load_backbone(backbone, "cnn.pt")
    message = str(error.value)
    assert "cnn.pt does not match MLP under prefix ''" in message
    assert "4 missing keys (layers.1.weight, layers.1.bias, layers.4.weight, layers.4.bias)" in message
    assert "12 unexpected keys (features.0.weight, features.1.weight" in message
    assert "same backbone architecture and settings" in message and "prefix=" in message
    assert has_lazy(backbone)  # nothing was loaded


def test_another_width_names_the_parameter_and_both_shapes():
    torch.save(mlp(16).state_dict(), "narrow.pt")
    backbone = MLP(width=32)
    with pytest.raises(ValueError, match=re.escape("has layers.4.weight of shape (16, 16) but MLP expects (32, 32)")):
        load_backbone(backbone, "narrow.pt")
    assert has_lazy(backbone)  # the lazy layer was not sized by a failed load


@pytest.mark.parametrize("name", ["half.pt", "half.safetensors", "half.ckpt"])
def test_a_truncated_file_is_not_a_readable_checkpoint(name):
    full = Path("full" + Path(name).suffix)
    if full.suffix == ".safetensors":
        safetensors.torch.save_file(mlp(16).state_dict(), full)
    else:
        torch.save(mlp(16).state_dict(), full)
    data = full.read_bytes()
    Path(name).write_bytes(data[: len(data) // 2])
    unreadable = rf"^{re.escape(name)} is not a readable checkpoint \(.+\); it may be truncated"
    with pytest.raises(ValueError, match=unreadable):
        load_backbone(MLP(width=16), name)


def test_a_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match=r"Checkpoint runs/nowhere/last.ckpt does not exist; check the path"):
        load_backbone(MLP(), "runs/nowhere/last.ckpt")


def test_a_folder_without_last_ckpt_is_not_a_checkpoint():
    Path("sharded.ckpt").mkdir()
    with pytest.raises(ValueError, match=r"folder sharded.ckpt holds no last.ckpt; .*consolidate_checkpoint"):
        read_state_dict("sharded.ckpt")


def test_a_folder_stands_for_its_newest_last_ckpt():
    import os

    old, new = Path("run/version_0/checkpoints/last.ckpt"), Path("run/version_1/checkpoints/last.ckpt")
    for i, path in enumerate((old, new)):
        path.parent.mkdir(parents=True)
        torch.save({"state_dict": {"backbone.w": torch.full((2,), float(i))}}, path)
        os.utime(path, (i, i))  # mtimes 0 and 1: version_1 is the newer
    assert resolve_checkpoint("run") == new
    assert torch.equal(read_state_dict("run")["backbone.w"], torch.ones(2))


def test_a_file_without_tensors_names_the_keys_it_has():
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, "meta.pt")
    with pytest.raises(ValueError, match=r"meta.pt holds no state dict of tensors \(it has keys 'epoch', 'config'\)"):
        read_state_dict("meta.pt")


FIRED: list[str] = []


class Payload:
    """Acts when unpickled: pickle rebuilds it by calling the constructor, then __setstate__."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        Path(marker).write_text("constructed")

    def __setstate__(self, state: dict) -> None:
        FIRED.append("setstate")

    def __reduce__(self) -> tuple:
        return Payload, (self.marker,), {"armed": True}


def test_pickled_objects_are_refused_without_running_them():
    payload = Payload.__new__(Payload)  # built without the constructor, which would act now
    payload.marker = "constructed.txt"
    torch.save({"state_dict": mlp(16).state_dict(), "extra": payload}, "payload.pt")
    FIRED.clear()

    with pytest.raises(ValueError, match=r"payload.pt holds pickled Python objects \(.*Payload\), which litlab will"):
        load_backbone(MLP(width=16), "payload.pt")
    assert not Path("constructed.txt").exists() and FIRED == []

    pickle.loads(pickle.dumps(payload))  # plain pickle would have run both
    assert Path("constructed.txt").exists() and FIRED == ["setstate"]


def test_a_whole_pickled_module_is_refused():
    torch.save(mlp(16), "module.pt")
    with pytest.raises(ValueError, match=r"holds pickled Python objects .*torch.save\(model.state_dict\(\), ...\)"):
        load_backbone(MLP(width=16), "module.pt")
