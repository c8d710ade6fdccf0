"""Every YAML under experiments/ parses, instantiates and takes a training step, so none rots."""

import json
import re

import pytest
import yaml

from callbacks import AtomicCheckpointIO
from experiments.cli import DEFAULTS, LitlabCLI

ROOT = DEFAULTS.parent
# Sweep files are not experiments: tests/experiments/test_sweep.py checks them.
EXPERIMENTS = sorted(p for p in ROOT.rglob("*.yaml") if p != DEFAULTS and p.parent.name != "sweeps")


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_there_are_experiments():
    assert {"cnn", "mlp", "rnn", "lstm", "gru", "transformer"} <= {p.stem for p in ROOT.glob("digits/*.yaml")}


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_experiment_header_gives_the_command_that_runs_it(path):
    header = path.read_text().split("\n\n")[0]
    command = f"litlab fit --config experiments/{path.relative_to(ROOT)}"
    assert re.search(rf"^#\s+{re.escape(command)}(\s.*)?$", header, re.M), f"{path} header lacks `{command}`"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_experiment_holds_only_what_differs_from_the_defaults(path):
    defaults, experiment = yaml.safe_load(DEFAULTS.read_text()), yaml.safe_load(path.read_text())

    def repeated(a, b, key=""):
        if isinstance(a, dict) and isinstance(b, dict):
            return [k for name in a.keys() & b.keys() for k in repeated(a[name], b[name], f"{key}.{name}")]
        return [key] if a == b else []

    assert not repeated(experiment, defaults), f"{path} repeats defaults.yaml"
    assert "num_classes" not in path.read_text(), "the number of classes is linked from the data, never typed"
    model = (experiment.get("model") or {}).get("init_args") or {}
    assert "objective" not in model, "a language model's objective is linked from the data, never typed twice"


def local_inputs(path, tmp_path, datasets_on_disk) -> list[str]:
    """Flags that point an experiment's data at a small copy written in the real format, and a
    fine-tuning recipe at no pretrained file (the loading itself is tested in tests/models)."""
    config = yaml.safe_load(path.read_text())
    task = config.get("model", {}).get("class_path")
    if task == "models.FineTune":
        return ["--model.init_args.checkpoint=null", *zoo_offline(config), *local_data(config, tmp_path, datasets_on_disk)]
    if task == "models.Distill":
        teacher = write_teacher(config, tmp_path / "teacher.pt")
        return [f"--model.init_args.teacher_checkpoint={teacher}", *local_data(config, tmp_path, datasets_on_disk)]
    return local_data(config, tmp_path, datasets_on_disk)


def zoo_offline(config: dict) -> list[str]:
    """A model-zoo backbone built without its published weights (nothing is downloaded here; loading a
    local copy is tested in tests/models/backbones/test_zoo.py), on small images, two at a time."""
    backbone = config["model"]["init_args"]["backbone"]["class_path"]
    if backbone == "models.backbones.Torchvision":
        # As JSON: jsonargparse 4.53 reads a `null` flag two levels deep as the string "None".
        return ['--model.init_args.backbone={"init_args": {"weights": null}}', "--data.init_args.image_size=32"]
    if backbone == "models.backbones.Timm":
        return ["--model.init_args.backbone.init_args.pretrained=false", "--data.init_args.batch_size=2"]
    if backbone == "models.backbones.HuggingFace":
        return hub_offline(config)
    return []


# The Hub models the recipes name, by their transformers model type, and the sizes of a tiny one of each.
HUB_TYPES = {"google-bert/bert-base-uncased": "bert", "google/vit-base-patch16-224": "vit", "Qwen/Qwen2.5-0.5B": "qwen2"}
TINY_HUB = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
TINY_BY_TYPE = {"vit": {"image_size": 32, "patch_size": 8}, "qwen2": {"num_key_value_heads": 1, "max_position_embeddings": 64}}


def hub_offline(config: dict) -> list[str]:
    """A Hub model built from its architecture's config at a tiny size, with random weights (nothing is
    downloaded here; loading a save_pretrained folder is tested in tests/models/backbones)."""
    name = config["model"]["init_args"]["backbone"]["init_args"]["name"]
    kind = HUB_TYPES[name]
    overrides = {**TINY_HUB, **TINY_BY_TYPE.get(kind, {})}
    # As JSON: jsonargparse 4.53 reads a `null` flag two levels deep as the string "None".
    init = {"name": None, "architecture": kind, "config_overrides": overrides}
    if config["model"]["init_args"]["backbone"]["init_args"].get("quantize"):
        init["quantize"] = None  # 4-bit loading needs pretrained weights (tests/models/test_lora.py loads them)
    args = [f"--model.init_args.backbone={json.dumps({'init_args': init})}"]
    if kind == "vit":
        args.append("--data.init_args.image_size=32")
    return args


def write_teacher(config: dict, path) -> str:
    """A randomly initialised teacher of the experiment's own architecture, saved as backbone.* / head.*."""
    import importlib

    import torch

    from models import Classifier

    spec = config["model"]["init_args"]["teacher"]
    module, _, name = spec["class_path"].rpartition(".")
    backbone = getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))
    data = config.get("data", {})
    channels = 3 if data.get("class_path") in ("datamodules.VisionDataModule", "datamodules.FolderDataModule") else 1
    size = {"datamodules.VisionDataModule": 32, "datamodules.FolderDataModule": 64}.get(data.get("class_path"), 8)
    backbone.eval()(torch.zeros(2, channels, size, size))  # size its lazy layers
    torch.save(Classifier(backbone=backbone, num_classes=10).state_dict(), path)
    return str(path)


def local_data(config: dict, tmp_path, datasets_on_disk) -> list[str]:
    data = config.get("data", {})
    init = data.get("init_args", {})
    if data.get("class_path") == "datamodules.VisionDataModule":
        name = init["dataset"]
        if name.startswith("cifar"):
            datasets_on_disk.cifar(tmp_path, int(name.removeprefix("cifar")), n_per_batch=40 if name == "cifar10" else 1000)
        else:
            datasets_on_disk.mnist(tmp_path, {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name])
        return [f"--data.root={tmp_path}", "--data.download=false", "--data.num_workers=0"]
    if data.get("class_path") == "datamodules.FolderDataModule":
        datasets_on_disk.image_folder(tmp_path / "images", classes=3, per_class=20)
        return [f"--data.root={tmp_path / 'images'}", "--data.num_workers=0"]
    if data.get("class_path") == "datamodules.CaptionedFolderDataModule":
        datasets_on_disk.captioned_folder(tmp_path / "images", classes=3, per_class=20)
        return [f"--data.root={tmp_path / 'images'}", "--data.num_workers=0"]
    if init.get("tokenizer", "bytes") != "bytes":  # a tokenizer litlab trains first: the one the tests trained
        return [f"--data.tokenizer={datasets_on_disk.bpe_tokenizer()}"]
    return []


def needs_gpus(path) -> bool:
    """Recipes whose strategy Lightning refuses on a CPU (FSDP); tested below on their own."""
    return yaml.safe_load(path.read_text()).get("trainer", {}).get("accelerator") == "gpu"


# A GPU recipe's step at its own size is minutes on a CPU: 512 images in bf16, which a CPU without
# bf16 units emulates. One step of eight images in float32 builds and runs the same model, data,
# augmentation and loss; mixed precision itself is exercised by the FSDP recipe's step below.
SMALL_STEP = ("--data.init_args.batch_size=8", "--trainer.precision=32-true")


def one_step_cases() -> list:
    """Every CPU recipe; those beyond the embedded digits (data written in its real format, bigger
    models) run in `make test` only, so `make test-fast` stays quick."""
    return [pytest.param(p, marks=() if p.parent.name == "digits" else pytest.mark.slow, id=str(p.relative_to(ROOT)))
            for p in EXPERIMENTS if not needs_gpus(p)]


@pytest.mark.parametrize("path", one_step_cases())
def test_experiment_instantiates_and_trains_one_step(path, tmp_path, datasets_on_disk):
    args = ["fit", "--config", str(path), *SMALL_STEP, *local_inputs(path, tmp_path, datasets_on_disk)]
    cli = LitlabCLI(args=[*args, "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.state.finished
    assert cli.trainer.global_step == 1
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)  # checkpoints written whole or not at all
    if hasattr(cli.model, "objective"):  # a language model learns what its data serves
        assert cli.model.objective == cli.datamodule.objective


FSDP_YAML = ROOT / "text" / "gpt_fsdp.yaml"


def test_the_fsdp_recipe_builds_its_strategy_and_trains_a_step_of_its_model_on_the_cpu():
    # Lightning refuses FSDP without GPUs, so the strategy is built alone, as the CLI would build
    # it, and the rest of the recipe (model, data, accumulation, clipping) trains one step unsharded.
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy

    from models.backbones.transformer import Block

    parser = ArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    config = parser.parse_object({"strategy": yaml.safe_load(FSDP_YAML.read_text())["trainer"]["strategy"]})
    strategy = parser.instantiate(config).strategy
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert Block in strategy.kwargs["auto_wrap_policy"]._module_classes
    assert Block in strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes
    small = ["--model.backbone.d_model=32", "--model.backbone.depth=2", "--model.backbone.heads=2",
             "--model.backbone.max_len=32", "--data.block_size=32", "--data.num_workers=0"]
    cli = LitlabCLI(args=["fit", "--config", str(FSDP_YAML), "--trainer.accelerator=cpu", "--trainer.devices=1",
                          "--trainer.strategy=auto", "--trainer.precision=bf16-mixed", *small,
                          "--trainer.fast_dev_run=4", "--trainer.enable_progress_bar=false"])
    assert cli.trainer.accumulate_grad_batches == 4 and cli.trainer.gradient_clip_val == 1.0
    assert cli.trainer.global_step == 1  # four batches, one optimizer step


QWEN_FSDP_YAML = ROOT / "text" / "qwen_fsdp.yaml"


@pytest.mark.slow
def test_the_hub_decoder_fsdp_recipe_wraps_the_models_own_blocks_and_steps_a_tiny_one_with_its_checkpointing(
    datasets_on_disk,
):
    from jsonargparse import ArgumentParser
    from lightning.pytorch.strategies import FSDPStrategy

    parser = ArgumentParser()
    parser.add_argument("--strategy", type=FSDPStrategy)
    recipe = yaml.safe_load(QWEN_FSDP_YAML.read_text())
    strategy = parser.instantiate(parser.parse_object({"strategy": recipe["trainer"]["strategy"]})).strategy
    wrapped = {cls.__name__ for cls in strategy.kwargs["auto_wrap_policy"]._module_classes}
    args = ["fit", "--config", str(QWEN_FSDP_YAML), "--trainer.accelerator=cpu", "--trainer.devices=1",
            "--trainer.strategy=auto", "--trainer.precision=bf16-mixed", *hub_offline(recipe),
            f"--data.tokenizer={datasets_on_disk.bpe_tokenizer()}", "--data.block_size=32", "--data.num_workers=0",
            "--model.sample_prompts=null", "--trainer.fast_dev_run=4", "--trainer.enable_progress_bar=false"]
    cli = LitlabCLI(args=args)
    backbone = cli.model.backbone
    assert wrapped == backbone.block_classes == {"Qwen2DecoderLayer"}  # one FSDP unit per decoder layer
    assert backbone.model.is_gradient_checkpointing
    assert cli.trainer.global_step == 1  # four batches, one optimizer step


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_the_fsdp_recipe_trains_on_gpus(tmp_path):
    cli = LitlabCLI(args=["fit", "--config", str(FSDP_YAML), "--trainer.max_steps=20", "--trainer.limit_val_batches=5",
                          "--trainer.enable_progress_bar=false"])
    assert cli.trainer.global_step == 20
    assert float(cli.trainer.callback_metrics["test/bpb"]) < 8.0
