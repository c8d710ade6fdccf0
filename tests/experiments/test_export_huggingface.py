"""`litlab export --format huggingface`: tiny random BERT, GPT-2, Llama and ViT models leave litlab as
`save_pretrained` folders that plain transformers loads (nothing of litlab in the way) and runs to
litlab's own outputs, and a folder that would not is never left behind."""

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

import experiments.export as export
from experiments.export_huggingface import HEAD_FILE
from experiments.cli import DEFAULTS
from models import Classifier, LanguageModel
from models.backbones import HuggingFace
from models.backbones.huggingface import TINY
from models.errors import ConfigError

transformers = pytest.importorskip("transformers")

DIGITS = DEFAULTS.parent / "digits"
GPT2 = {"n_embd": 16, "n_layer": 2, "n_head": 2, "n_positions": 32}
LLAMA = {**TINY, "num_key_value_heads": 1, "max_position_embeddings": 32, "tie_word_embeddings": True}
BERT = {**TINY, "max_position_embeddings": 40}


def exported(model, datamodule, tmp_path: Path, name: str = "model") -> tuple[Path, dict]:
    """Export `model` (its weights saved as the checkpoint) and return the folder and its description."""
    checkpoint = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), checkpoint)
    folder = export.export_model(model, datamodule, str(checkpoint), "huggingface", tmp_path / name)
    return folder, json.loads((tmp_path / f"{name}.json").read_text())


def padded(tokens: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`tokens` (B, T) right-padded to `lengths`: the padding mask (True at padding) litlab's text data gives."""
    padding = torch.arange(tokens.shape[1]) >= torch.tensor(lengths)[:, None]
    return tokens, padding


def assert_checked(description: dict) -> None:
    atol, _ = export.TOLERANCE["huggingface"]
    assert description["format"] == "huggingface" and description["check"]["inputs"] > 0
    assert description["check"]["max_abs_difference"] <= atol


@pytest.mark.slow
def test_a_causal_llama_exports_through_the_cli_with_its_tokenizer_and_auto_model_for_causal_lm_runs_it(
    cli, tmp_path
):
    from experiments.tokenizer import train_bpe
    from pydoc_data.topics import topics

    tokenizer = tmp_path / "bpe"
    train_bpe(list(topics.values())[:50], vocab_size=300).save_pretrained(tokenizer)
    config = tmp_path / "llama.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"logger": {"init_args": {"name": "tiny-llama", "save_dir": str(tmp_path)}}},
        "model": {"class_path": "models.LanguageModel", "init_args": {"backbone": {
            "class_path": "models.backbones.HuggingFace",
            "init_args": {"architecture": "llama", "lm_head": "causal", "config_overrides": LLAMA}}}},
        "data": {"class_path": "datamodules.TextDataModule",
                 "init_args": {"tokenizer": str(tokenizer), "block_size": 16, "batch_size": 8}},
    }))
    # The weights: another draw of the same model (what the CLI builds is overwritten by the checkpoint).
    torch.manual_seed(1)
    trained = LanguageModel(backbone=HuggingFace(architecture="llama", lm_head="causal", config_overrides=LLAMA,
                                                 vocab_size=300))
    checkpoint = tmp_path / "llama.pt"
    torch.save(trained.state_dict(), checkpoint)

    run = cli("export", "--config", str(config), "--ckpt_path", str(checkpoint), "--format", "huggingface")
    folder = Path(run.trainer.log_dir) / "model-huggingface"  # the default output, in the command's run
    description = json.loads(folder.with_name("model-huggingface.json").read_text())
    assert_checked(description)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.glob("*.bin"))  # weights as safetensors only
    assert description["huggingface"]["load"] == "transformers.AutoModelForCausalLM.from_pretrained(folder)"
    assert description["huggingface"]["tokenizer"] == "transformers.AutoTokenizer.from_pretrained(folder)"

    # Read back here too, on a text of our own: the folder's tokenizer gives litlab's ids, its model litlab's logits.
    plain = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    text = "def export(model): return the same logits"
    ids = transformers.AutoTokenizer.from_pretrained(folder)(text, return_tensors="pt")["input_ids"]
    assert torch.equal(ids[0], run.datamodule.tokenizer.encode(text))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, trained.eval()(ids), rtol=0, atol=1e-5)
    assert plain.get_output_embeddings().weight is plain.get_input_embeddings().weight  # still tied


@pytest.mark.parametrize("architecture, objective", [("gpt2", "causal"), ("bert", "masked")])
def test_a_language_model_round_trips_with_its_own_head_on_padded_bytes(tmp_path, architecture, objective):
    from datamodules import TextDataModule

    data = TextDataModule(block_size=16, batch_size=8, objective=objective)
    torch.manual_seed(0)
    backbone = HuggingFace(architecture=architecture, config_overrides=GPT2 if architecture == "gpt2" else BERT,
                           vocab_size=data.vocab_size, lm_head=objective)
    model = LanguageModel(backbone=backbone, objective=objective)
    folder, description = exported(model, data, tmp_path)
    assert_checked(description)
    assert "UTF-8 bytes" in description["huggingface"]["tokenizer"]  # byte-level ids: no tokenizer files
    assert not (folder / "tokenizer.json").exists()
    auto = {"causal": transformers.AutoModelForCausalLM, "masked": transformers.AutoModelForMaskedLM}[objective]
    plain = auto.from_pretrained(folder).eval()
    tokens, padding = padded(torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(2)), [12, 7, 3])
    with torch.no_grad():
        expected = model.eval()(tokens, padding)
        got = plain(input_ids=tokens, attention_mask=(~padding).long()).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_a_bert_text_classifier_exports_as_its_encoder_and_head_with_its_class_names(tmp_path):
    from datamodules.text_classification import TextClassificationDataModule

    data = TextClassificationDataModule(max_len=40, batch_size=8)
    torch.manual_seed(0)
    model = Classifier(backbone=HuggingFace(architecture="bert", config_overrides=BERT, vocab_size=data.vocab_size,
                                            pool="first"), num_classes=data.num_classes)
    folder, description = exported(model, data, tmp_path)
    assert_checked(description)
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", HEAD_FILE}
    config = transformers.AutoConfig.from_pretrained(folder)
    names = ["built-in types", "data model", "expressions", "statements"]
    assert config.id2label == dict(enumerate(names)) and config.label2id == {n: i for i, n in enumerate(names)}
    assert description["classes"] == names and description["huggingface"]["head"]["pool"] == "last_hidden_state[:, 0]"

    # BERT's own sequence-classification head (a tanh pooler first) is not litlab's: the encoder plus the head file is.
    encoder = transformers.AutoModel.from_pretrained(folder).eval()
    head = safetensors.torch.load_file(str(folder / HEAD_FILE))
    tokens, padding = padded(torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(2)), [20, 9, 4])
    with torch.no_grad():
        features = encoder(input_ids=tokens, attention_mask=(~padding).long()).last_hidden_state
        torch.testing.assert_close(features[:, 0] @ head["weight"].T + head["bias"], model.eval()(tokens, padding),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("pool", ["first", "mean"])
def test_a_vit_image_classifier_round_trips_with_its_digit_names(tmp_path, pool):
    from datamodules import DigitsDataModule

    data = DigitsDataModule(batch_size=16)
    torch.manual_seed(0)
    backbone = HuggingFace(architecture="vit", config_overrides={**TINY, "image_size": 16, "patch_size": 4}, pool=pool)
    model = Classifier(backbone=backbone, num_classes=10)
    folder, description = exported(model, data, tmp_path)
    assert_checked(description)
    images = torch.randn(5, 1, 8, 8)  # grey, and half the config's size: as litlab feeds them
    inputs = {"pixel_values": images.expand(-1, 3, -1, -1), "interpolate_pos_encoding": True}
    with torch.no_grad():
        expected = model.eval()(images)
        if pool == "first":  # ViT's own classifier is litlab's: the first token, one Linear
            plain = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
            assert type(plain).__name__ == "ViTForImageClassification"
            assert plain.config.id2label == {i: str(i) for i in range(10)}
            got = plain(**inputs).logits
        else:
            head = safetensors.torch.load_file(str(folder / HEAD_FILE))
            features = transformers.AutoModel.from_pretrained(folder).eval()(**inputs).last_hidden_state
            got = features.mean(dim=1) @ head["weight"].T + head["bias"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_corrupted_weight_fails_the_export_and_leaves_no_folder(tmp_path, monkeypatch):
    from datamodules import TextDataModule

    real = transformers.AutoModelForCausalLM.from_pretrained

    def one_weight_off(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            model.get_input_embeddings().weight[:, 0] += 1e-3
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", one_weight_off)
    data = TextDataModule(block_size=16, batch_size=8)
    model = LanguageModel(backbone=HuggingFace(architecture="gpt2", config_overrides=GPT2, vocab_size=data.vocab_size,
                                               lm_head="causal"))
    with pytest.raises(export.ExportMismatch, match="huggingface export of LanguageModel gives outputs up to"):
        exported(model, data, tmp_path)
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.json").exists()


def test_a_backbone_not_of_transformers_is_refused_in_one_line(litlab_main, tmp_path):
    checkpoint = tmp_path / "cnn.ckpt"
    checkpoint.write_bytes(b"never read")
    code, _, err = litlab_main("export", "--config", str(DIGITS / "cnn.yaml"), "--ckpt_path", str(checkpoint),
                               "--format", "huggingface")
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if "huggingface" in line]
    assert "this is a Classifier with a CNN backbone" in line and "safetensors, onnx or exported_program" in line


def test_an_output_folder_holding_other_files_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    model = Classifier(backbone=HuggingFace(architecture="bert", config_overrides=BERT, vocab_size=64), num_classes=2)
    with pytest.raises(ConfigError, match="already holds other files"):
        export.export_model(model, None, "unused.pt", "huggingface", folder)
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
