"""LoRA (`mode: lora` of FineTune and LanguageModel): only the adapters and the head learn, on litlab's
Transformer, timm, torchvision and Hugging Face backbones; a checkpoint holds the adapters, the head and a
checked reference to their base; merged weights give the adapted model's outputs, and export writes them."""

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import safetensors.torch
import torch

import experiments.export as export
from datamodules import DigitsDataModule
from experiments.cli import DEFAULTS
from models import FineTune, LanguageModel, lora
from models.backbones import CNN, HuggingFace, Timm, Torchvision, Transformer
from models.backbones.huggingface import TINY
from models.errors import ConfigError

pytest.importorskip("peft")

# Merged weights against the adapted layers in float32: W x + s B A x against (W + s B A) x, summed
# in another order; the largest gap seen was 4e-6 of the output (docs/pretraining-and-fine-tuning.md).
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}
RECIPE = DEFAULTS.parent / "digits" / "finetune_lora.yaml"
QLORA_RECIPE = DEFAULTS.parent / "text" / "qwen_qlora.yaml"
DIGITS = partial(DigitsDataModule, view="sequence")


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(**{"logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                        "enable_checkpointing": False, "limit_val_batches": 1, **kwargs})


def transformer(**kwargs) -> Transformer:
    """litlab's Transformer reading the digits' rows as a sequence (its first layer sized by the data)."""
    return Transformer(**{"input": "sequence", "d_model": 64, "depth": 2, "heads": 4, **kwargs})


def save_base(path: Path, seed: int, **kwargs) -> str:
    """A Transformer's weights, as a plain state dict: a pretrained backbone for the test's purpose."""
    torch.manual_seed(seed)
    backbone = transformer(**kwargs)
    backbone(torch.zeros(1, 8, 8))  # sizes the first layer
    torch.save(backbone.state_dict(), path)
    return str(path)


def adapted(seed: int, checkpoint: str | None, **kwargs) -> FineTune:
    torch.manual_seed(seed)
    return FineTune(backbone=transformer(), num_classes=10, checkpoint=checkpoint, mode="lora",
                    optimizer=partial(torch.optim.AdamW, lr=0.01), **{"lora_rank": 4, **kwargs})


def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def digits_batch(n: int = 16) -> torch.Tensor:
    data = DIGITS()
    data.setup("test")
    return next(iter(data.test_dataloader()))["input"][:n]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """A base file; six LoRA steps and six full fine-tuning steps on it, each saved as a Lightning .ckpt."""
    folder = tmp_path_factory.mktemp("lora")
    base = save_base(folder / "base.pt", seed=0)
    out = {"base": base}
    for mode in ("lora", "full"):
        L.seed_everything(0)
        model = (adapted(1, base) if mode == "lora" else
                 FineTune(backbone=transformer(), num_classes=10, checkpoint=base, optimizer=partial(torch.optim.AdamW, lr=0.01)))
        fit = trainer(max_steps=6)
        fit.fit(model, datamodule=DIGITS())
        fit.save_checkpoint(folder / f"{mode}.ckpt")
        out[mode] = {"model": model.eval(), "ckpt": str(folder / f"{mode}.ckpt"),
                     "optimized": {name for name, p in model.named_parameters()
                                   if any(p is q for g in fit.optimizers[0].param_groups for q in g["params"])}}
    return out


# ---- only the adapters and the head learn ----


# litlab's Transformer (its attention and MLP projections) from a file or with its first layer sized by
# the data, and litlab's CNN (its convolutions but the first, which the data sizes; batch norm between).
STARTS = {
    "transformer-file": (transformer, DIGITS, sorted(f"blocks.{i}.{n}" for i in (0, 1)
                                                     for n in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"))),
    "transformer-lazy": (transformer, DIGITS, None),
    "cnn-file": (lambda: CNN(channels=[8, 16]), DigitsDataModule, ["features.11", "features.3", "features.8"]),
}


@pytest.mark.parametrize("start", sorted(STARTS))
def test_only_the_adapters_and_the_head_train_and_the_base_ends_as_it_began(tmp_path, monkeypatch, start):
    build, data, layers = STARTS[start]
    said = []
    monkeypatch.setattr(lora, "rank_zero_info", said.append)
    base = None
    if start.endswith("file"):
        torch.manual_seed(0)
        pretrained = build()
        pretrained.train()(data().example_input[:4])  # sized, and its batch-norm statistics moved off their start
        base = str(tmp_path / "base.pt")
        torch.save(pretrained.state_dict(), base)
    L.seed_everything(0)
    model = FineTune(backbone=build(), num_classes=10, checkpoint=base, mode="lora", lora_rank=4,
                     optimizer=partial(torch.optim.AdamW, lr=0.01))
    before = {k: v.clone() for k, v in lora.base_state(model.backbone).items() if not torch.nn.parameter.is_lazy(v)}
    fit = trainer(max_steps=5, limit_val_batches=2, val_check_interval=2)
    fit.fit(model, datamodule=data(batch_size=16))

    optimized = {id(p) for group in fit.optimizers[0].param_groups for p in group["params"]}
    adapters = {name for name in trainable(model) if name.startswith("backbone.")}
    assert adapters and all(is_adapter(name) for name in adapters)
    assert trainable(model) == adapters | {"head.weight", "head.bias"}
    assert optimized == {id(p) for name, p in model.named_parameters() if name in trainable(model)}  # nothing else
    if layers is not None:
        assert sorted(model.lora["modules"]) == layers
    after = lora.base_state(model.backbone)
    first = next(m for m in model.backbone.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    assert not first.weight.requires_grad  # the first layer, sized by the data: frozen too
    if base is not None:
        assert before.keys() == after.keys() == torch.load(base, weights_only=True).keys()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert all(model.get_parameter(n).abs().sum() > 0 for n in adapters if ".lora_B." in n)  # B starts at 0: it learned
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert any(f"LoRA: {count:,} of {total:,} parameters train" in line for line in said), said


def backbone_cases():
    return [
        pytest.param(lambda: transformer(input="tokens", vocab_size=32), "tokens", {"qkv", "proj", "fc"}, id="litlab"),
        pytest.param(lambda: Timm(name="vit_tiny_patch16_224", pretrained=False, img_size=32), "image",
                     {"qkv", "proj", "fc1", "fc2"}, id="timm-vit_tiny"),
        pytest.param(lambda: Torchvision(name="resnet18"), "image", {"conv1", "conv2", "0"}, id="torchvision-resnet18"),
        pytest.param(lambda: HuggingFace(architecture="bert", config_overrides={**TINY, "vocab_size": 32}), "tokens",
                     {"query", "key", "value", "dense"}, id="huggingface-bert"),
    ]


@pytest.mark.parametrize("build, kind, layers", backbone_cases())
def test_each_backbone_family_gets_its_adapters_and_merges_to_the_adapted_outputs(build, kind, layers):
    torch.manual_seed(0)
    model = FineTune(backbone=build(), num_classes=3, checkpoint=None, mode="lora", lora_rank=4)
    plain = FineTune(backbone=build(), num_classes=3, checkpoint=None)  # the same backbone without adapters
    x = torch.randint(0, 32, (4, 9)) if kind == "tokens" else torch.randn(4, 3, 32, 32)
    base = {k: v.clone() for k, v in lora.base_state(model.backbone).items()}
    assert base.keys() == plain.backbone.state_dict().keys()
    assert {name.rsplit(".", 1)[-1] for name in model.lora["modules"]} == layers
    assert {n for n in trainable(model) if n.startswith("backbone.")} == {
        n for n, _ in model.backbone.named_parameters(prefix="backbone") if is_adapter(n)}

    # Two steps on the adapters and the head alone, as the task's optimizer holds them.
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):
        model.train()
        torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(base[k], v) for k, v in lora.base_state(model.backbone).items())

    model.eval()
    with torch.no_grad():
        adapted_out = model(x)
        plain.load_state_dict({**{f"backbone.{k}": v for k, v in base.items()}, **{f"head.{k}": v for k, v in model.head.state_dict().items()}})
        assert not torch.allclose(plain.eval()(x), adapted_out, atol=1e-4)  # the adapters changed the outputs
        model.merge_adapters()
        merged = model(x)
    assert not any("lora_" in k or "base_layer" in k for k in model.state_dict())
    assert model.state_dict().keys() == plain.state_dict().keys()  # a plain model's weights again
    torch.testing.assert_close(merged, adapted_out, **TOLERANCE)


def test_a_language_model_adapts_a_pretrained_decoder_and_its_head_stays_the_bases(tmp_path):
    torch.manual_seed(0)
    gpt = LanguageModel(backbone=Transformer(input="tokens", vocab_size=40, causal=True, d_model=32, heads=2))
    torch.save(gpt.state_dict(), tmp_path / "gpt.pt")
    model = LanguageModel(backbone=Transformer(input="tokens", vocab_size=40, causal=True, d_model=32, heads=2),
                          checkpoint=str(tmp_path / "gpt.pt"), mode="lora", lora_rank=2)
    assert torch.equal(lora.base_state(model.backbone)["embed.weight"], gpt.backbone.embed.weight)
    assert model.head.weight is model.backbone.embed.weight and not model.head.weight.requires_grad
    assert trainable(model) and all(is_adapter(n) for n in trainable(model))  # adapters alone: the head is tied
    assert {"head.weight", "backbone.embed.weight"} <= set(model.checkpoint_skips)

    # A Hugging Face decoder with its own head: all-linear adapts every projection and leaves lm_head alone.
    torch.manual_seed(0)
    llama = HuggingFace(architecture="llama", config_overrides={**TINY, "vocab_size": 40, "num_key_value_heads": 1},
                        lm_head="causal")
    model = LanguageModel(backbone=llama, mode="lora", lora_rank=2)
    names = {name.rsplit(".", 1)[-1] for name in model.lora["modules"]}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(is_adapter(n) for n in trainable(model))
    tokens = torch.randint(0, 40, (2, 12))
    batch = {"input": tokens, "target": tokens.roll(-1, 1)}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.loss(batch)[0].backward()
    optimizer.step()
    with torch.no_grad():
        adapted_out = model.eval()(tokens)
        model.merge_adapters()
        torch.testing.assert_close(model(tokens), adapted_out, **TOLERANCE)


def test_bad_settings_and_a_missing_peft_are_one_line_each(monkeypatch):
    for kwargs, message in [({"lora_targets": ["no_such_layer"]}, "names no layer"), ({"lora_rank": 0}, "lora_rank"),
                            ({"lora_dropout": 1.0}, "lora_dropout")]:
        with pytest.raises(ConfigError, match=message) as error:
            adapted(0, None, **kwargs)
        assert "\n" not in str(error.value)
    monkeypatch.setitem(sys.modules, "peft", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'litlab\[peft\]'"):
        adapted(0, None)


QWEN = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "num_key_value_heads": 2, "max_position_embeddings": 128}


def qwen_folder(path: Path, vocab_size: int) -> str:
    """A tiny random Qwen2 decoder in a save_pretrained folder, as a Hub model is: the base QLoRA quantizes."""
    torch.manual_seed(0)
    HuggingFace(architecture="qwen2", config_overrides={**QWEN, "vocab_size": vocab_size},
                lm_head="causal").model.save_pretrained(path)
    return str(path)


def test_a_4bit_base_is_refused_in_one_line_where_it_cannot_load_or_cannot_train(tmp_path, monkeypatch):
    folder = qwen_folder(tmp_path / "qwen", 40)
    find_spec, version = importlib.util.find_spec, importlib.metadata.version
    cases = [({"architecture": "qwen2", "config_overrides": {**TINY, "vocab_size": 40}}, "quantizes pretrained weights", {}),
             ({"name": folder, "quantize": "8bit"}, "must be 4bit", {}),
             ({"name": folder}, "needs the bitsandbytes package",
              {"find_spec": lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a)})]
    if not torch.cuda.is_available():
        cases.append(({"name": folder}, "0.50 or newer",
                      {"version": lambda name: "0.45.5" if name == "bitsandbytes" else version(name)}))
    for kwargs, message, patches in cases:
        with monkeypatch.context() as patch:
            for name, replacement in patches.items():
                patch.setattr(importlib.util if name == "find_spec" else importlib.metadata, name, replacement)
            with pytest.raises(ConfigError, match=message) as error:
                HuggingFace(**{"quantize": "4bit", "lm_head": "causal", **kwargs})
        assert "\n" not in str(error.value)
    # A quantized base takes no updates: full and gradual fine-tuning are refused before anything trains.
    base = HuggingFace(name=folder, lm_head="causal")
    monkeypatch.setattr(base, "quantize", "4bit")
    for mode in ("full", "gradual"):
        with pytest.raises(ConfigError, match="use mode: lora"):
            lora.check_trainable(base, mode)
    lora.check_trainable(base, "lora")
    lora.check_trainable(base, "linear")


@pytest.mark.slow
def test_bitsandbytes_is_imported_without_asking_the_hub_for_a_kernel_or_printing_that_it_has_none(monkeypatch):
    # On a CPU with avx512-bf16 its import fetches a kernel from the Hub (for the inference path litlab turns
    # off) and warns where it cannot; elsewhere it does neither, and this passes either way.
    pytest.importorskip("bitsandbytes")
    code = ("import huggingface_hub.constants as hub, sys\n"
            "from models.backbones.huggingface import import_bitsandbytes\n"
            "import_bitsandbytes()  # as lora._peft() and HuggingFace(quantize='4bit') do first\n"
            "assert 'bitsandbytes' in sys.modules and hub.HF_HUB_OFFLINE is False\n")
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=Path(lora.__file__).parents[1])  # the repository
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernels-community" not in done.stderr, done.stderr[-2000:]
    called = []  # and LoRA imports it so, before peft can
    monkeypatch.setattr("models.backbones.huggingface.import_bitsandbytes", lambda: called.append(True))
    lora._peft()
    assert called


QLORA_DEVICES = [pytest.param("cpu", id="cpu"),
                 pytest.param("cuda", id="gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(
                     not torch.cuda.is_available(), reason="needs CUDA")])]


@pytest.mark.parametrize("device", QLORA_DEVICES)
def test_qlora_trains_adapters_beside_a_4bit_decoder_that_stays_as_loaded_and_merges_into_float32(tmp_path, device):
    pytest.importorskip("bitsandbytes")
    backbone = HuggingFace(name=qwen_folder(tmp_path / "qwen", 64), lm_head="causal", quantize="4bit",
                           gradient_checkpointing=True)
    model = LanguageModel(backbone=backbone, mode="lora", lora_rank=4, optimizer=partial(torch.optim.AdamW, lr=1e-2))
    packed = {k: v.clone() for k, v in lora.base_state(model.backbone).items()}
    assert any(v.dtype == torch.uint8 for v in packed.values())  # the base is 4-bit, packed two weights a byte
    assert lora.count(model.backbone.model.model.layers[0].mlp.up_proj.base_layer.weight) == 128 * 64
    tokens = torch.randint(0, 64, (40, 33), generator=torch.Generator().manual_seed(0))
    data = [{"input": t[:-1], "target": t[1:]} for t in tokens]
    losses, ended = [], {}

    class Watch(L.Callback):  # read on the device, before the fit's teardown moves the model anywhere
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

        def on_train_end(self, trainer, pl_module):
            ended.update({k: v.cpu() for k, v in lora.base_state(pl_module.backbone).items()})

    # Validation runs between the training steps: a 4-bit layer in eval mode must train again after it.
    fit = trainer(max_steps=24, accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                  precision="bf16-mixed" if device == "cuda" else "32-true", callbacks=[Watch()],
                  val_check_interval=4, limit_val_batches=1, num_sanity_val_steps=0)
    fit.fit(model, torch.utils.data.DataLoader(data[:32], batch_size=8),
            torch.utils.data.DataLoader(data[32:], batch_size=8))
    assert all(math.isfinite(x) for x in losses) and sum(losses[-4:]) < sum(losses[:4]) - 0.2  # the adapters learn
    assert ended.keys() == packed.keys() and all(torch.equal(ended[k], packed[k].cpu()) for k in packed)

    # The merge: float32 nn.Linear layers holding the dequantized NF4 weights plus the adapters, no
    # quantization left in the model or its config, the adapted model's outputs (a GPU's adapted
    # model computes in bf16: within its rounding).
    model = model.to(device).eval()
    x = tokens[32:, :-1].to(device)
    with torch.no_grad():
        adapted = model(x).float()
        model.merge_adapters()
        merged = model(x)
    layers = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 15 and all(type(m) is torch.nn.Linear and m.weight.dtype == torch.float32 for m in layers)
    assert model.backbone.quantize is None and not hasattr(model.backbone.model.config, "quantization_config")
    torch.testing.assert_close(merged, adapted, **(TOLERANCE if device == "cpu" else {"atol": 0.05, "rtol": 0.05}))


# ---- checkpoints: the adapters, the head and the reference to their base ----


def test_a_lora_checkpoint_holds_the_adapters_and_head_and_its_bases_sha256_and_is_a_fraction_of_a_full_one(runs):
    saved = torch.load(runs["lora"]["ckpt"], weights_only=True)
    full = torch.load(runs["full"]["ckpt"], weights_only=True)
    assert set(saved["state_dict"]) == {f"backbone.{n}" for n in trainable(runs["lora"]["model"].backbone)} | {"head.weight", "head.bias"}
    assert runs["lora"]["optimized"] == trainable(runs["lora"]["model"])  # the optimizer held the same, nothing else
    assert len(saved["optimizer_states"][0]["state"]) == len(saved["state_dict"])
    base = saved["lora"]["base"]
    assert base["file"] == str(Path(runs["base"]).resolve())
    assert base["sha256"] == hashlib.sha256(Path(runs["base"]).read_bytes()).hexdigest()
    on_disk = torch.load(runs["base"], weights_only=True)
    assert base["shapes"] == {k: list(v.shape) for k, v in on_disk.items()}
    assert saved["lora"]["rank"] == 4 and len(saved["lora"]["modules"]) == 8
    lora_size, full_size = Path(runs["lora"]["ckpt"]).stat().st_size, Path(runs["full"]["ckpt"]).stat().st_size
    print(f"checkpoint: LoRA {lora_size:,} bytes, full fine-tune {full_size:,} bytes ({lora_size / full_size:.3f})")
    assert lora_size < 0.2 * full_size  # measured 0.10: the base and its optimizer state stay out
    assert len(full["state_dict"]) > len(saved["state_dict"])


def test_a_lora_checkpoint_loads_on_its_base_and_resumes(runs):
    x = digits_batch()
    with torch.no_grad():
        expected = runs["lora"]["model"](x)
    model = adapted(5, runs["base"])  # other adapters drawn: the checkpoint's replace them
    trainer().validate(model, datamodule=DIGITS(), ckpt_path=runs["lora"]["ckpt"], verbose=False)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)
    resumed = adapted(5, runs["base"])
    fit = trainer(max_steps=8)
    fit.fit(resumed, datamodule=DIGITS(), ckpt_path=runs["lora"]["ckpt"])
    assert fit.global_step == 8


def test_a_lora_checkpoint_on_another_base_is_refused_in_one_line(runs, tmp_path):
    other = adapted(0, save_base(tmp_path / "other.pt", seed=1))  # the same shapes, other weights
    with pytest.raises(ConfigError, match="adapts the base file .*base.pt .*but this model's base is the file .*other.pt") as error:
        trainer().validate(other, datamodule=DIGITS(), ckpt_path=runs["lora"]["ckpt"], verbose=False)
    assert "\n" not in str(error.value)
    torch.manual_seed(0)
    wider = FineTune(backbone=transformer(mlp_ratio=2.0), num_classes=10, checkpoint=None, mode="lora", lora_rank=4)
    with pytest.raises(ConfigError, match=r"whose blocks.0.mlp.fc.bias is \[256\], but this model's base has \[128\]") as error:
        trainer().validate(wider, datamodule=DIGITS(), ckpt_path=runs["lora"]["ckpt"], verbose=False)
    assert "\n" not in str(error.value)


def test_another_fine_tune_starts_from_a_lora_checkpoint_merged_onto_its_base(runs, tmp_path):
    x = digits_batch()
    with torch.no_grad():
        expected = runs["lora"]["model"].backbone(x)
    tuned = FineTune(backbone=transformer(), num_classes=10, checkpoint=runs["lora"]["ckpt"], mode="full")
    assert not any("lora_" in k for k in tuned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(tuned.eval().backbone(x), expected, **TOLERANCE)
    again = FineTune(backbone=transformer(), num_classes=10, checkpoint=runs["lora"]["ckpt"], mode="lora")
    assert again.lora_base()["sha256"] == hashlib.sha256(Path(runs["lora"]["ckpt"]).read_bytes()).hexdigest()

    saved = torch.load(runs["lora"]["ckpt"], weights_only=True)
    saved["lora"]["base"]["sha256"] = "0" * 64  # as if the base file had changed since
    torch.save(saved, tmp_path / "stale.ckpt")
    with pytest.raises(ConfigError, match="adapts the base file .*but this model's base is the file") as error:
        FineTune(backbone=transformer(), num_classes=10, checkpoint=str(tmp_path / "stale.ckpt"))
    assert "\n" not in str(error.value)


# ---- export writes the merged model ----


# ONNX's and torch.export's exporters take seconds: in make test, not make test-fast.
@pytest.mark.parametrize("fmt", ["safetensors", pytest.param("onnx", marks=pytest.mark.slow),
                                 pytest.param("exported_program", marks=pytest.mark.slow)])
def test_export_of_a_lora_checkpoint_writes_plain_merged_weights_that_give_the_adapted_outputs(runs, tmp_path, fmt):
    x = digits_batch()
    with torch.no_grad():
        expected = runs["lora"]["model"](x)
    model = adapted(5, runs["base"])
    output = export.export_model(model, DIGITS(), runs["lora"]["ckpt"], fmt, tmp_path / f"model{export.SUFFIXES[fmt]}")
    description = json.loads(output.with_name(output.name + ".json").read_text())
    assert description["check"]["max_abs_difference"] <= export.TOLERANCE[fmt][0] + 1e-3
    assert model.lora is None  # merged
    if fmt == "safetensors":
        state = safetensors.torch.load_file(str(output))
        plain = FineTune(backbone=transformer(), num_classes=10, checkpoint=None)
        plain.size_lazy_layers(DIGITS())
        plain.load_state_dict(state, strict=True)  # a plain FineTune's weights: no adapter, no peft name
        with torch.no_grad():
            got = plain.eval()(x)
    elif fmt == "exported_program":
        program = torch.export.load(str(output))
        assert not any("lora_" in name for name in program.state_dict)
        got = program.module()(x)
    else:
        import onnx
        import onnxruntime

        assert not any("lora_" in init.name for init in onnx.load(str(output)).graph.initializer)
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_export_of_a_lora_language_model_writes_a_merged_folder_plain_transformers_runs(tmp_path):
    transformers = pytest.importorskip("transformers")
    from datamodules import TextDataModule

    data = TextDataModule(block_size=16, batch_size=8)
    L.seed_everything(0)
    build = lambda: HuggingFace(architecture="llama", vocab_size=data.vocab_size, lm_head="causal",  # noqa: E731
                                config_overrides={**TINY, "num_key_value_heads": 1, "max_position_embeddings": 32})
    model = LanguageModel(backbone=build(), mode="lora", lora_rank=4, optimizer=partial(torch.optim.AdamW, lr=0.05))
    fit = trainer(max_steps=3, limit_train_batches=3)
    fit.fit(model, datamodule=data)
    fit.save_checkpoint(tmp_path / "lora.ckpt")
    tokens = torch.randint(0, data.vocab_size, (2, 16))
    with torch.no_grad():
        expected = model.eval()(tokens)
    torch.manual_seed(0)  # the same random base: its sha256 is checked
    fresh = LanguageModel(backbone=build(), mode="lora", lora_rank=4)
    folder = export.export_model(fresh, data, str(tmp_path / "lora.ckpt"), "huggingface", tmp_path / "model")
    plain = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    assert not any("lora" in k for k in plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=tokens).logits, expected, **TOLERANCE)


# ---- through the CLI: fit, test, predict, export; a wrong base; an exact resume ----


def cnn_base(path: Path) -> str:
    torch.manual_seed(0)
    backbone = CNN(channels=[32, 64])
    backbone(torch.zeros(1, 1, 8, 8))
    torch.save(backbone.state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_the_recipe_fits_tests_predicts_and_exports_on_its_base_and_refuses_another(cli, litlab_main, tmp_path):
    base = cnn_base(tmp_path / "simclr.pt")
    args = ["--config", str(RECIPE), f"--model.checkpoint={base}"]
    run = cli("fit", *args, "--trainer.max_epochs=2")
    last = Path(run.trainer.log_dir) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert all(is_adapter(k) or k.startswith("head.") for k in saved["state_dict"])
    assert "test/acc" in run.trainer.callback_metrics  # the closing test loaded the best checkpoint on its base

    assert "test/acc" in cli("test", *args, "--ckpt_path", str(last)).trainer.callback_metrics
    cli("predict", *args, "--ckpt_path", str(last))
    assert list(Path(run.trainer.log_dir).rglob("predictions.csv"))
    output = tmp_path / "model.safetensors"
    cli("export", *args, "--ckpt_path", str(last), "--format", "safetensors", "--output", str(output))
    assert not any("lora_" in k for k in safetensors.torch.load_file(str(output)))

    other = tmp_path / "other.pt"
    torch.save({k: v + 0.01 for k, v in torch.load(base, weights_only=True).items()}, other)
    code, _, err = litlab_main("test", "--config", str(RECIPE), f"--model.checkpoint={other}", "--ckpt_path", str(last))
    assert code == 2 and "adapts the base file" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
def test_a_lora_fit_killed_mid_epoch_resumes_bit_identical(cli, interrupted_fit, tmp_path):
    base = cnn_base(tmp_path / "simclr.pt")
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(DEFAULTS.read_text().replace("every_n_train_steps: 100", "every_n_train_steps: 3"))
    args = ["fit", "--config", str(defaults), "--config", str(RECIPE), f"--model.checkpoint={base}",
            "--trainer.max_epochs=3", "--model.lora_dropout=0.1"]
    reference = Path(cli(*args).trainer.log_dir)
    interrupted = interrupted_fit(FineTune, args, lambda task, batch_idx: task.current_epoch == 1 and batch_idx == 2,
                                  reference.parent)
    torch.manual_seed(1234)  # a new process starts from other random states
    resumed = Path(cli(*args, "--ckpt_path=last").trainer.log_dir)
    assert resumed == interrupted
    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    got = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert (resumed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


@pytest.mark.slow
def test_the_qlora_recipe_runs_on_a_cpu_resumes_bit_identical_after_a_kill_and_exports_a_float32_model(
    cli, interrupted_fit, tmp_path
):
    # The GPU recipe as shipped (4-bit base, rank-16 adapters with dropout, gradient checkpointing, 4 batches
    # a step), on a tiny decoder saved here as its Hub model, bytes for its tokenizer, on the CPU in float32.
    pytest.importorskip("bitsandbytes")
    transformers = pytest.importorskip("transformers")
    from datamodules import TextDataModule

    folder = qwen_folder(tmp_path / "qwen", TextDataModule(block_size=64).vocab_size)
    args = ["--config", str(QLORA_RECIPE), f"--model.backbone.init_args.name={folder}", "--data.tokenizer=bytes",
            "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--data.block_size=64", "--data.batch_size=8",
            "--data.num_workers=0", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]
    fit = ["fit", *args, "--trainer.max_steps=6", "--trainer.callbacks.every_n_train_steps=3"]
    run = cli(*fit)
    reference = Path(run.trainer.log_dir)
    assert "test/loss" in run.trainer.callback_metrics  # the closing test loaded the best checkpoint onto its 4-bit base
    saved = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["state_dict"] and all(is_adapter(k) for k in saved["state_dict"])
    assert saved["lora"]["base"]["backbone"] == f"HuggingFace {folder}" and saved["lora"]["rank"] == 16

    # Killed in step 5: step 3's checkpoint is written after batch 11.
    interrupted = interrupted_fit(LanguageModel, fit, lambda task, batch_idx: batch_idx == 17, reference.parent)
    torch.manual_seed(1234)  # a new process starts from other random states
    resumed = Path(cli(*fit, "--ckpt_path=last").trainer.log_dir)
    assert resumed == interrupted
    expected = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    got = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert (resumed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()

    # litlab test reads the adapters onto the 4-bit base; export merges them into a float32 model that
    # plain transformers runs, without bitsandbytes, giving the adapted model's logits.
    last = str(resumed / "checkpoints" / "last.ckpt")
    adapted = cli("test", *args, "--ckpt_path", last).model.eval()
    output = tmp_path / "merged"
    cli("export", *args, "--ckpt_path", last, "--format", "huggingface", "--output", str(output))
    config = json.loads((output / "config.json").read_text())
    assert "quantization_config" not in config
    plain = transformers.AutoModelForCausalLM.from_pretrained(output).eval()
    assert all(v.dtype == torch.float32 and "lora" not in k for k, v in plain.state_dict().items())
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=tokens).logits, adapted(tokens), **TOLERANCE)


@pytest.mark.slow
def test_two_ddp_processes_train_the_adapters_as_one_process_does(cli, litlab, tmp_path):
    # As tests/experiments/test_ddp.py compares them: the same global batch split over two processes,
    # an even number of training samples, no batch norm (CPUs cannot synchronise it), float64.
    torch.manual_seed(0)
    backbone = CNN(channels=[32, 64], batch_norm=False)
    backbone(torch.zeros(1, 1, 8, 8))
    torch.save(backbone.state_dict(), tmp_path / "base.pt")
    args = ["fit", "--config", str(RECIPE), f"--model.checkpoint={tmp_path / 'base.pt'}", "--trainer.max_epochs=1",
            "--model.backbone.batch_norm=false", "--data.label_fraction=1.0", "--data.batch_size=64",
            "--data.batch_scope=global", "--data.val_fraction=0.126", "--trainer.precision=64-true"]
    single = cli(*args)
    assert len(single.datamodule.train_dataset) % 2 == 0
    one = Path(single.trainer.log_dir)
    two = litlab(*args, "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2",
                 "--trainer.enable_progress_bar=false", timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    (run,) = [p for p in one.parent.glob("version_*") if p != one]
    expected = torch.load(one / "checkpoints" / "last.ckpt", weights_only=True)
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert got["lora"]["base"] == expected["lora"]["base"]
    assert all(is_adapter(k) or k.startswith("head.") for k in got["state_dict"])
    torch.testing.assert_close(got["state_dict"], expected["state_dict"], rtol=1e-9, atol=1e-12)
